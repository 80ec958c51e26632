"""Render the SQL template of a postgres or duckdb step so values never change its structure.

Jinja renders the template with every `{{ ... }}` output replaced by a marker; the rendered
text (the author's SQL, `{% ... %}` blocks already applied) is then scanned like a SQL
lexer does, and each marker is replaced by its value escaped for the position it sits in:

- inside a `'...'` literal: `'` doubled (the postgres tool runs templated scripts with
  `standard_conforming_strings` on, so a backslash is an ordinary character there);
- inside an `E'...'` literal: `'` doubled and `\\` doubled;
- inside a `"..."` identifier: `"` doubled;
- inside a `--` comment: line breaks become spaces; inside `/* */`: `/*` and `*/` broken;
- inside a dollar-quoted body (`$$ ... $$`): refused (the body is SQL of its own, e.g. a
  DO block building dynamic SQL, and cannot be escaped for);
- in a bare position (anywhere else): only numbers, booleans, null, identifier-shaped
  strings (`orders`, `public.orders`), numeric strings and lists of numbers (rendered
  `[1, 2, 3]`, as Jinja prints them: `= any(array{{ ids }})`) pass. Negative numbers are
  parenthesised so `1 -{{ n }}` can never become a `--` comment.

Anything else in a bare position is refused with `SqlTemplateError` naming the step and the
expression. An author who means a value to be a literal or an identifier says so with a
filter: `{{ name | sql_literal }}` renders `'...'` (quotes doubled, null for None),
`{{ col | sql_identifier }}` renders `"..."` (a list renders a qualified name
`"schema"."table"`). Null bytes are refused everywhere (PostgreSQL cannot hold them in
text). `params:` (bound by the driver) stays the recommended way to pass values.

When the driver binds `params` (a postgres step with `params`), psycopg reads every `%` of a
statement that has a placeholder, inside literals and comments too: there a value's `%` is
written `%%` (the author's own text follows psycopg's rule already), so `'{{ v }}'` with
`v = "50%"` or `"%(x)s"` stays that text; statements without a placeholder run unbound and
keep values as they are. A bare value right after a `%` that could form a placeholder
(`%{{ name }}` with `name = "s"`) is refused.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import (
    StrictUndefined,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    pass_eval_context,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment

from noetl_pg.authguard import check_rendered_auth
from noetl_pg.errors import NoetlError, TemplateError
from noetl_pg.templating import _ENV as _VALUE_ENV
from noetl_pg.templating import is_template, render_value
from noetl_pg.tools import PERCENT_PARAM_KINDS, SQL_TEXT_KINDS
from noetl_pg.tools.postgres import PLACEHOLDER_CHARS

# Private-use characters: a marker is OPEN + index + CLOSE. A template holding either
# character is refused, so a marker can only come from a `{{ ... }}` output.
_OPEN = "\ue000"
_CLOSE = "\ue001"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_NUMBER_LIST = re.compile(r"\s*-?\d+(\.\d+)?(\s*,\s*-?\d+(\.\d+)?)*\s*")
# A session that turns this off makes backslashes escapes in '...' literals again.
_SCS_OFF = re.compile(r"standard_conforming_strings", re.IGNORECASE)
_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

# The SQL text fields of a SQL_TEXT_KINDS task: rendered here, not by templating.
SQL_TEXT_FIELDS = ("command", "query")

_outputs = threading.local()


class SqlTemplateError(TemplateError):
    """A template value that would change the statement's structure, or cannot be escaped."""


@dataclass(frozen=True)
class _Marked:
    """A value the author marked with a filter: rendered as a literal or an identifier."""

    value: Any
    as_identifier: bool


def _sql_literal(value: Any) -> _Marked:
    return _Marked(value, as_identifier=False)


def _sql_identifier(value: Any) -> _Marked:
    return _Marked(value, as_identifier=True)


@pass_eval_context
def _finalize(_eval_context: Any, value: Any) -> str:
    """Jinja's output hook: remember the value, print a marker in its place. (Taking the
    eval context keeps Jinja from finalizing constant outputs once at compile time.)"""
    if isinstance(value, Undefined):
        str(value)  # raises UndefinedError naming the variable
    collected: list[Any] = _outputs.values
    collected.append(value)
    return f"{_OPEN}{len(collected) - 1}{_CLOSE}"


_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, finalize=_finalize
)
_ENV.filters.update(_VALUE_ENV.filters)
_ENV.filters["sql_literal"] = _sql_literal
_ENV.filters["sql_identifier"] = _sql_identifier


@lru_cache(maxsize=1024)
def _compiled(source: str) -> Any:
    return _ENV.from_string(source)


def render_tool_config(
    raw: Mapping[str, Any], scope: Mapping[str, Any], *, step: str = "",
    playbook_workload: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A task's tool config rendered for running: the SQL text of a task of a SQL kind
    (SQL_TEXT_KINDS: postgres, duckdb) by `render_sql`, everything else (and every other
    kind) by templating.render_value. A templated `auth` must name a credential unless it
    is what `playbook_workload` (the registered workload, without the payload) renders
    (noetl_pg.authguard)."""
    sql = ({key: raw[key] for key in SQL_TEXT_FIELDS if isinstance(raw.get(key), str)}
           if raw.get("kind") in SQL_TEXT_KINDS else {})
    config: dict[str, Any] = render_value(
        {key: value for key, value in raw.items() if key not in sql}, scope)
    binds_params = raw.get("kind") in PERCENT_PARAM_KINDS and config.get("params") is not None
    for key, source in sql.items():
        config[key] = render_sql(source, scope, step=step, percent_params=binds_params)
    if "auth" in raw:
        check_rendered_auth(raw["auth"], config.get("auth"), playbook_workload)
    return config


def render_sql(source: str, context: Mapping[str, Any], *, step: str = "",
               percent_params: bool = False) -> str:
    """The SQL of `source` with its template values escaped for their positions.

    `percent_params`: the driver binds params with `%` placeholders (psycopg), so in a
    statement that has one a value's `%` is doubled (see the module docstring).

    Raises SqlTemplateError (a TemplateError) naming the step and the expression when a value
    cannot be placed safely, TemplateError for undefined variables and syntax errors.
    """
    if not is_template(source):
        return source
    if _OPEN in source or _CLOSE in source:
        raise SqlTemplateError(f"{_where(step)}SQL holds a reserved character (U+E000/U+E001)")
    expressions = [match.strip() for match in _EXPRESSION.findall(source)]
    values: list[Any] = []
    _outputs.values = values
    try:
        text = _compiled(source).render(**context)
    except UndefinedError as exc:
        raise TemplateError(f"undefined variable: {exc.message} in SQL") from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error in SQL: {exc.message}") from exc
    except NoetlError:
        raise
    except Exception as exc:  # a filter or expression raised: report it, don't crash
        raise TemplateError(f"SQL template failed: {exc}") from exc
    finally:
        _outputs.values = []
    if values and _SCS_OFF.search(text):
        raise SqlTemplateError(
            f"{_where(step)}a templated script may not change standard_conforming_strings"
        )
    return _Substituter(text, values, expressions, step, percent_params).run()


def _where(step: str) -> str:
    return f"step '{step}': " if step else ""


class _Substituter:
    """Scans rendered SQL once, replacing each marker by its escaped value."""

    def __init__(self, text: str, values: list[Any], expressions: list[str], step: str,
                 percent_params: bool = False):
        self.text = text
        self.values = values
        self.expressions = expressions
        self.step = step
        self.percent_params = percent_params
        self.out: list[str] = []
        self.i = 0
        # For `percent_params`: the statement (split on top-level `;`) each value chunk of
        # `out` belongs to, and the statements with a placeholder of the author's.
        self.statement = 0
        self.value_chunks: list[tuple[int, int]] = []
        self.with_placeholder: set[int] = set()

    def run(self) -> str:
        text, n = self.text, len(self.text)
        while self.i < n:
            char = text[self.i]
            if char == _OPEN:
                self._value("bare")
            elif text.startswith("--", self.i):
                self._until_newline()
            elif text.startswith("/*", self.i):
                self._block_comment()
            elif char == "'":
                escaped = self._escape_prefix()
                self._emit(char)
                self._quoted("'", "escape" if escaped else "literal")
            elif char == '"':
                self._emit(char)
                self._quoted('"', "identifier")
            elif char == "$" and not self._after_word():
                tag = self._dollar_tag()
                if tag is None:
                    self._emit(char)
                else:
                    self._dollar_body(tag)
            elif char == ";":
                self.statement += 1
                self._emit(char)
            elif char == "%" and self.percent_params:
                self._percent()
            else:
                self._emit(char)
        for chunk, statement in self.value_chunks:
            if statement in self.with_placeholder:
                self.out[chunk] = self.out[chunk].replace("%", "%%")
        return "".join(self.out)

    def _percent(self) -> None:
        """A bare `%`: `%%` is the author's literal percent; `%s`, `%(` a placeholder."""
        following = self.text[self.i + 1 : self.i + 2]
        if following == "%":
            self.out.append("%%")
            self.i += 2
            return
        if following in PLACEHOLDER_CHARS or following == "(":
            self.with_placeholder.add(self.statement)
        self._emit("%")

    # --- scanning -----------------------------------------------------------------------

    def _emit(self, chunk: str) -> None:
        self.out.append(chunk)
        self.i += 1

    def _previous(self) -> str:
        for chunk in reversed(self.out):
            if chunk:
                return chunk[-1]
        return ""

    def _after_word(self) -> bool:
        previous = self._previous()
        return bool(previous) and (previous.isalnum() or previous in "_$")

    def _escape_prefix(self) -> bool:
        """True when the quote opens an E'...' literal (E right before, not ending a word)."""
        tail = "".join(self.out[-3:])[-2:]
        if not tail or tail[-1] not in "eE":
            return False
        return len(tail) < 2 or not (tail[0].isalnum() or tail[0] in "_$")

    def _quoted(self, quote: str, position: str) -> None:
        text, n = self.text, len(self.text)
        while self.i < n:
            char = text[self.i]
            if char == _OPEN:
                self._value(position)
            elif position == "escape" and char == "\\":
                self.out.append(text[self.i : self.i + 2])
                self.i += 2
            elif char == quote:
                if text.startswith(quote * 2, self.i):
                    self.out.append(quote * 2)
                    self.i += 2
                else:
                    self._emit(char)
                    return
            else:
                self._emit(char)

    def _until_newline(self) -> None:
        text, n = self.text, len(self.text)
        while self.i < n and text[self.i] != "\n":
            if text[self.i] == _OPEN:
                self._value("line_comment")
            else:
                self._emit(text[self.i])

    def _block_comment(self) -> None:
        text, n = self.text, len(self.text)
        self.out.append("/*")
        self.i += 2
        depth = 1
        while self.i < n and depth:
            if text[self.i] == _OPEN:
                self._value("block_comment")
            elif text.startswith("/*", self.i):
                depth += 1
                self.out.append("/*")
                self.i += 2
            elif text.startswith("*/", self.i):
                depth -= 1
                self.out.append("*/")
                self.i += 2
            else:
                self._emit(text[self.i])

    def _dollar_tag(self) -> str | None:
        text, end = self.text, self.i + 1
        while end < len(text) and (text[end].isalnum() or text[end] == "_"):
            end += 1
        if end < len(text) and text[end] == "$":
            tag = text[self.i : end + 1]
            if len(tag) == 2 or not tag[1].isdigit():
                return tag
        return None

    def _dollar_body(self, tag: str) -> None:
        close = self.text.find(tag, self.i + len(tag))
        end = len(self.text) if close < 0 else close + len(tag)
        body = self.text[self.i : end]
        if _OPEN in body:
            index = int(body[body.index(_OPEN) + 1 : body.index(_CLOSE, body.index(_OPEN))])
            raise self._error(index, f"is inside the dollar-quoted body {tag}...{tag}, "
                                     "where it cannot be escaped; pass it in params")
        self.out.append(body)
        self.i = end

    # --- values -------------------------------------------------------------------------

    def _value(self, position: str) -> None:
        close = self.text.index(_CLOSE, self.i)
        index = int(self.text[self.i + 1 : close])
        self.i = close + 1
        value = self.values[index]
        if _contains_null(value):
            raise self._error(index, "holds a null byte, which SQL text cannot carry")
        if isinstance(value, _Marked):
            if position != "bare":
                raise self._error(index, "uses sql_literal/sql_identifier inside a quoted "
                                         "literal or comment; use it in a bare position")
            self._append_value(_quote_identifier(value.value) if value.as_identifier
                               else _quote_literal(value.value))
            return
        if position == "bare":
            text = self._bare(index, value)
            if self.percent_params and self._previous() == "%" and (
                text[:1] in PLACEHOLDER_CHARS or text[:1] == "("
            ):
                raise self._error(index, "is right after a '%' and would form a placeholder "
                                         "of params; put a space between them")
            self.out.append(text)
            return
        text = _as_text(value)
        if position == "literal":
            text = text.replace("'", "''")
        elif position == "escape":
            text = text.replace("\\", "\\\\").replace("'", "''")
        elif position == "identifier":
            text = text.replace('"', '""')
        elif position == "line_comment":
            text = text.replace("\r", " ").replace("\n", " ")
        else:
            text = text.replace("/*", "/ *").replace("*/", "* /")
        self._append_value(text)

    def _append_value(self, text: str) -> None:
        if self.percent_params and "%" in text:
            self.value_chunks.append((len(self.out), self.statement))
        self.out.append(text)

    def _bare(self, index: int, value: Any) -> str:
        if self._previous() == "$" or self.text.startswith("$", self.i):
            raise self._error(index, "is next to a '$' (it could form a dollar quote)")
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return _number(value) or self._refuse(index, value)
        if isinstance(value, list | tuple) and all(
            isinstance(item, int | float) and not isinstance(item, bool) and _number(item)
            for item in value
        ):
            return "[" + ", ".join(_number(item) or "" for item in value) + "]"
        if isinstance(value, str):
            if _IDENTIFIER.fullmatch(value):
                return value
            if _NUMBER.fullmatch(value):
                return f"({value})" if value.startswith("-") else value
            if _NUMBER_LIST.fullmatch(value):
                return value.replace("-", " -")
        return self._refuse(index, value)

    def _refuse(self, index: int, value: Any) -> str:
        raise self._error(
            index,
            f"renders {type(value).__name__} {_preview(value)} in a bare SQL position, where "
            "only numbers, booleans and identifiers may go; quote it ('{{ ... }}'), mark it "
            "with | sql_literal or | sql_identifier, or pass it in params",
        )

    def _error(self, index: int, problem: str) -> SqlTemplateError:
        # Outputs map to expressions one to one unless a {% for %} repeats some.
        if len(self.expressions) == len(self.values):
            label = "{{ " + self.expressions[index] + " }}"
        else:
            label = f"(output {index + 1})"
        return SqlTemplateError(f"{_where(self.step)}SQL template value {label} {problem}")


def _number(value: float) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    text = repr(value)
    return f"({text})" if text.startswith("-") else text


def _as_text(value: Any) -> str:
    # As Jinja prints it; a RefDict prints its noetl:// URI (localize_refs reads it later).
    return str(value)


def _contains_null(value: Any) -> bool:
    if isinstance(value, _Marked):
        return _contains_null(value.value)
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_null(k) or _contains_null(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_null(item) for item in value)
    return False


def _quote_literal(value: Any) -> str:
    if value is None:
        return "null"
    return "'" + _as_text(value).replace("'", "''") + "'"


def _quote_identifier(value: Any) -> str:
    parts = list(value) if isinstance(value, list | tuple) else [value]
    if not parts or any(part is None or str(part) == "" for part in parts):
        raise SqlTemplateError(f"sql_identifier needs a non-empty name, got {value!r}")
    return ".".join('"' + str(part).replace('"', '""') + '"' for part in parts)


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
