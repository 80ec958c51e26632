"""What templates read, found by parsing them: which names, along which constant paths.

Two readers: `dsl.build_plans` (which earlier step results a claim must carry, the plan's
`reads`) and the executor (which stored results to load before a command renders,
noetl_pg.namespace). Both parse with `PARSE_ENV`, which accepts every filter and test.

A `Use` is one place a template reads a name: the constant keys and indices after it
(`big.results[3].rows` is `("results", 3, "rows")`, cut at the first key that is not a
constant or is a dict method) and how the value at the end is used: `count` (`| length`,
`| count`, a truth test), `whole` (printed or passed as it is, `| tojson`) or `read` (anything else:
iterated, filtered, compared, indexed by a variable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import jinja2
import jinja2.meta
import jinja2.nodes


class _EveryName(dict[str, Any]):
    """A filter/test table that claims every name: the analysis needs only which variables
    a template reads, and compiling it for that must not fail on filters registered by
    other environments (`sql_literal` in noetl_pg.sqlrender); unknown ones fail at render."""

    def __contains__(self, name: object) -> bool:
        return True

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name, _any_filter)


def _any_filter(value: Any, *args: Any, **kwargs: Any) -> Any:
    return value


PARSE_ENV = jinja2.Environment()
PARSE_ENV.filters = _EveryName(PARSE_ENV.filters)
PARSE_ENV.tests = _EveryName(PARSE_ENV.tests)
# Keys whose string values are conditions, which may be written without braces.
_CONDITION_KEYS = frozenset({"when"})
# An attribute that is a dict method (`start.get('x')`) reads the whole mapping.
MAPPING_METHODS = frozenset(dir(dict))
_COUNT_FILTERS = frozenset({"length", "count"})
_WHOLE_FILTERS = frozenset({"tojson", "to_json"})


class Use(NamedTuple):
    path: tuple[str | int, ...]
    mode: str  # "count", "whole" or "read"


# Name -> its uses in a set of templates; None: a template did not parse (anything may
# be read).
Uses = Mapping[str, frozenset[Use]] | None


def template_strings(values: list[Any]) -> list[str]:
    """Every rendered string in `values`; a bare condition becomes `{{ condition }}`."""
    found: list[str] = []

    def walk(value: Any, key: str | None) -> None:
        if isinstance(value, str):
            if "{{" in value or "{%" in value:
                found.append(value)
            elif key in _CONDITION_KEYS and value.strip():
                found.append("{{ " + value + " }}")
        elif isinstance(value, dict):
            for child_key, child in value.items():
                walk(child, str(child_key))
        elif isinstance(value, list):
            for child in value:
                walk(child, key)

    walk(values, None)
    return found


def uses_of(values: list[Any]) -> Uses:
    """The uses of every name read by the templates inside `values` (see the module)."""
    merged: dict[str, set[Use]] = {}
    for source in template_strings(values):
        found = template_uses(source)
        if found is None:
            return None
        for name, uses in found.items():
            merged.setdefault(name, set()).update(uses)
    return {name: frozenset(uses) for name, uses in merged.items()}


def merge_uses(*parts: Uses) -> Uses:
    """The uses of several sets of templates together."""
    merged: dict[str, frozenset[Use]] = {}
    for part in parts:
        if part is None:
            return None
        for name, uses in part.items():
            merged[name] = merged.get(name, frozenset()) | uses
    return merged


@lru_cache(maxsize=4096)
def template_uses(source: str) -> Mapping[str, frozenset[Use]] | None:
    """{name: its uses} for the free variables of `source`; None if it cannot parse."""
    try:
        tree = PARSE_ENV.parse(source)
    except jinja2.TemplateSyntaxError:
        return None
    free = jinja2.meta.find_undeclared_variables(tree)
    found: dict[str, set[Use]] = {}

    def visit(node: jinja2.nodes.Node, parent: jinja2.nodes.Node | None) -> None:
        path: list[str | int] = []
        cut = False
        base = node
        while isinstance(base, jinja2.nodes.Getattr | jinja2.nodes.Getitem):
            key = _constant_key(base)
            if key is None:
                path, cut = [], True
            else:
                path = [key, *path]
            if isinstance(base, jinja2.nodes.Getitem):
                visit(base.arg, base)
            base = base.node
        if isinstance(base, jinja2.nodes.Name) and base.ctx == "load" and base.name in free:
            kept = _until_method(path)
            mode = "read" if cut or len(kept) < len(path) else _mode(node, parent)
            found.setdefault(base.name, set()).add(Use(tuple(kept), mode))
            return
        for child in base.iter_child_nodes():
            visit(child, base)

    visit(tree, None)
    return {name: frozenset(uses) for name, uses in found.items()}


def _mode(node: jinja2.nodes.Node, parent: jinja2.nodes.Node | None) -> str:
    if ((isinstance(parent, jinja2.nodes.If | jinja2.nodes.CondExpr) and parent.test is node)
            or isinstance(parent, jinja2.nodes.Not)):
        return "count"  # a truth test reads only whether it is empty
    if isinstance(parent, jinja2.nodes.Filter) and parent.node is node:
        if parent.name in _COUNT_FILTERS:
            return "count"
        if parent.name in _WHOLE_FILTERS:
            return "whole"
    if isinstance(parent, jinja2.nodes.Output):
        return "whole"
    return "read"


def _constant_key(node: jinja2.nodes.Getattr | jinja2.nodes.Getitem) -> str | int | None:
    if isinstance(node, jinja2.nodes.Getattr):
        return node.attr
    value = node.arg.value if isinstance(node.arg, jinja2.nodes.Const) else None
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def _until_method(path: list[str | int]) -> list[str | int]:
    """The path up to the first dict method name (its keys are then read whole)."""
    for position, key in enumerate(path):
        if key in MAPPING_METHODS:
            return path[:position]
    return path


@dataclass(frozen=True)
class CommandUses:
    """What the commands of one step read (dsl.Playbook.command_uses). `step`, `loop` and
    `shared` hold the playbook's keychain (and workbook when the step calls it): any
    command may render them; the arcs are loaded for only when they are evaluated."""

    step: Uses           # a step command or loop iteration: tool, input, set
    loop: Uses           # the loop command: loop.in, cursor, spec
    shared: Uses         # a route command before its arcs: the keychain alone
    arcs: Uses           # the arcs evaluated when the step ends (read when evaluated)
    partial_arcs: Uses   # the `on: call.partial` arcs, per chunk (read when evaluated)
