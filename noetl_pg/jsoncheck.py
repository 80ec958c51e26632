"""Values PostgreSQL cannot store as JSON: found before they reach it, named by their path.

`jsonb` (and `text`) refuse the null character U+0000, and UTF-8 cannot encode a lone
surrogate (U+D800..U+DFFF, which Python strings may hold after `surrogateescape` decoding
or from JSON like "\\ud800"). Sent as they are, both fail the whole statement with a
driver error that names no field. `storage_problem` finds the first such string (or key)
and says where it is, e.g. `rows[3].name`, so a payload is refused and a step fails with
a one-line error instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _problem(text: str) -> str | None:
    if "\x00" in text:
        return "a null character (U+0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (U+D800..U+DFFF)"
    return None


def _label(key: Any) -> str:
    # Keys are shown escaped: the error message itself must be storable.
    return str(key).encode("unicode_escape").decode("ascii")


# Values that hold no string, answered without a walk: the executor checks every outcome's
# result, ctx writes, payload and output, mostly None or a number.
_STRINGLESS_TYPES = frozenset({type(None), bool, int, float})


def storage_problem(value: Any, path: str = "") -> str | None:
    """'<path> holds <problem>' for the first unstorable string in `value`, else None."""
    if type(value) in _STRINGLESS_TYPES:
        return None
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            problem = _problem(item)
            if problem:
                return f"'{where or '(value)'}' holds {problem}, which PostgreSQL cannot store"
        elif isinstance(item, Mapping):
            for key, child in reversed(list(item.items())):
                label = f"{where}.{_label(key)}" if where else _label(key)
                if isinstance(key, str) and _problem(key):
                    return (f"the key '{label}' holds {_problem(key)}, which PostgreSQL "
                            "cannot store")
                stack.append((label, child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}[{index}]", child)
                         for index, child in reversed(list(enumerate(item))))
    return None
