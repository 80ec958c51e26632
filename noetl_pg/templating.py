"""Sandboxed Jinja2 rendering with native-value passthrough.

A string that is a single expression (`"{{ items }}"`) renders to the expression's native
value (list, dict, number, bool). Any other template renders to a string, and a string
that reads as `true`/`false`, a number or a JSON object/array is coerced back, as the DSL
says. Undefined variables raise `TemplateError` naming the variable (`default()` still
works). Compiled templates are cached: a loop renders the same config thousands of times.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from noetl_pg.errors import TemplateError

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}|\{%).)*)\}\}\s*$", re.DOTALL)
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_ENV.filters["tojson"] = lambda value: json.dumps(value, default=str)
_ENV.filters["to_json"] = _ENV.filters["tojson"]


class ResultView(dict):
    """A step result as templates see it: `.data` may be omitted when there is no `data`."""

    def __getattr__(self, name: str) -> Any:
        if name == "data" and "data" not in self:
            return self
        raise AttributeError(name)


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@lru_cache(maxsize=4096)
def _compiled_expression(expression: str) -> Any:
    return _ENV.compile_expression(expression, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compiled_template(source: str) -> Any:
    return _ENV.from_string(source)


def render_string(source: str, context: Mapping[str, Any]) -> Any:
    """Render one template string; see the module docstring for the value it yields."""
    if not is_template(source):
        return source
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
    except TemplateError:
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
    over workload); step results by step name, each a ResultView.
    """
    workload = dict(claim_context.get("workload") or {})
    ctx = dict(claim_context.get("ctx") or {})
    namespace: dict[str, Any] = {**workload, **ctx}
    namespace["workload"] = workload
    namespace["ctx"] = {**workload, **ctx}
    namespace["execution_id"] = claim_context.get("execution_id")
    for step_name, result in (claim_context.get("results") or {}).items():
        namespace[step_name] = ResultView(result) if isinstance(result, dict) else result
    return namespace
