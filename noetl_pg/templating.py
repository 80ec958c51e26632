"""Sandboxed Jinja2 rendering with native-value passthrough.

A string that is a single expression (`"{{ items }}"`) renders to the expression's native
value (list, dict, number, bool). Any other template renders to a string, and a string
that reads as `true`/`false`, a number or a JSON object/array is coerced back, as the DSL
says. Undefined variables raise `TemplateError` naming the variable (`default()` still
works). Compiled templates are cached: a loop renders the same config thousands of times.

Pure: rendering reads the context it is given and nothing else. It never loads a stored
result; the executor loads the refs a command's templates read before it renders
(noetl_pg.namespace), so a template sees their values as plain data. A ref dict it is
given renders as data: `{{ fetch_ref }}` (a RefDict) is the dict in a single-expression
template and its `noetl://` URI inside text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from noetl_pg.errors import NoetlError, TemplateError

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}|\{%).)*)\}\}\s*$", re.DOTALL)
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
_BARE_NAME = re.compile(r"^\s*\{\{\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*\}\}\s*$")
# Names that Jinja reads as literals, never as variables.
_JINJA_LITERALS = frozenset({"true", "false", "none", "True", "False", "None"})



class _Environment(ImmutableSandboxedEnvironment):
    """`{{ x.name }}` on a mapping is the mapping's key `name` when it has one, before any
    Python attribute: a result with `items` or `keys` is data, not dict methods."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)


_ENV = _Environment(undefined=StrictUndefined, autoescape=False)
_ENV.filters["tojson"] = lambda value: json.dumps(value, default=str)
_ENV.filters["to_json"] = _ENV.filters["tojson"]


class ResultView(dict[str, Any]):
    """A step result as templates see it: `.data` may be omitted when there is no `data`."""

    def __getattr__(self, name: str) -> Any:
        if name == "data" and "data" not in self:
            return self
        raise AttributeError(name)


class ErrorView(dict[str, Any]):
    """`output.error` as templates see it: NoETL's error object (kind, retryable, code,
    status_code, message) that reads as its message inside text (`"failed: {{ error }}"`)."""

    def __str__(self) -> str:
        return str(self.get("message") or "")


# HTTP statuses a retry can cure, as NoETL classifies them (429 and every 5xx).
def _retryable_status(status: Any) -> bool:
    return isinstance(status, int) and (status == 429 or status >= 500)


def error_view(message: Any, output: Mapping[str, Any] | None = None,
               kind: str | None = None) -> ErrorView:
    """The error object of a failed tool from its message and the tool's error output
    (`http.status` for http). `kind`: `timeout`, `http` or `tool_error` unless given."""
    if isinstance(message, Mapping):
        return ErrorView(message)
    http = (output or {}).get("http")
    status = http.get("status") if isinstance(http, Mapping) else None
    if kind is None:
        kind = "timeout" if "timed out" in str(message) else "http" if status else "tool_error"
    return ErrorView({
        "kind": kind,
        "retryable": kind == "timeout" or _retryable_status(status),
        "code": f"HTTP_{status}" if status else kind.upper(),
        "status_code": status,
        "message": str(message or ""),
    })


class RefDict(dict[str, Any]):
    """A ref dict as templates see it: inside text it renders as its `noetl://` URI."""

    def __str__(self) -> str:
        return str(self["result_ref"])


def result_view(value: Any) -> Any:
    """A step result as templates see it: a dict as a ResultView, anything else as is."""
    return ResultView(value) if isinstance(value, dict) else value


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@lru_cache(maxsize=4096)
def _compiled_expression(expression: str) -> Any:
    return _ENV.compile_expression(expression, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compiled_template(source: str) -> Any:
    return _ENV.from_string(source)


@lru_cache(maxsize=4096)
def _bare_name(source: str) -> str | None:
    """The variable of a template that is exactly `{{ name }}`, else None."""
    match = _BARE_NAME.match(source)
    if match is None or match.group("name") in _JINJA_LITERALS:
        return None
    return match.group("name")


def render_string(source: str, context: Mapping[str, Any]) -> Any:
    """Render one template string; see the module docstring for the value it yields."""
    if not is_template(source):
        return source
    name = _bare_name(source)
    if name is not None and name in context:
        # "{{ name }}" is the variable itself: skip building a Jinja context per call
        # (a loop renders "{{ item }}" once per iteration).
        return context[name]
    try:
        match = _SINGLE_EXPRESSION.match(source)
        if match:
            value = _compiled_expression(match.group("expr").strip())(**context)
            if isinstance(value, StrictUndefined):
                str(value)  # raises UndefinedError with the variable's name
            return value
        return _coerce(_compiled_template(source).render(**context))
    except UndefinedError as exc:
        raise TemplateError(f"undefined variable: {exc.message} in {source!r}") from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message} in {source!r}") from exc
    except NoetlError:
        raise
    except Exception as exc:  # a filter or expression raised: report it, don't crash
        raise TemplateError(f"template failed: {exc} in {source!r}") from exc


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every template inside a JSON-like structure (dict keys are left as they are)."""
    if isinstance(value, str):
        return render_string(value, context)
    if isinstance(value, dict):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context) for item in value]
    return value


def truthy(source: Any, context: Mapping[str, Any]) -> bool:
    """Evaluate a `when` condition: a template, or a literal boolean."""
    value = render_value(source, context)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "none", "null", "no")
    return bool(value)


def _coerce(text: str) -> Any:
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _NUMBER.match(stripped):
        return float(stripped) if any(c in stripped for c in ".eE") else int(stripped)
    if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def build_context(claim_context: Mapping[str, Any]) -> dict[str, Any]:
    """The template namespace of a command from noetl.command_context's JSON.

    Workload keys are bare and under `workload`; ctx writes under `ctx` and bare (they win
    over workload); step results by step name, each a ResultView (a result held by the
    store is its ref dict here: noetl_pg.namespace loads the ones a command reads).
    """
    workload = dict(claim_context.get("workload") or {})
    ctx = dict(claim_context.get("ctx") or {})
    namespace: dict[str, Any] = {**workload, **ctx}
    namespace["workload"] = workload
    namespace["ctx"] = {**workload, **ctx}
    namespace["execution_id"] = claim_context.get("execution_id")
    for step_name, result in (claim_context.get("results") or {}).items():
        namespace[step_name] = result_view(result)
    return namespace
