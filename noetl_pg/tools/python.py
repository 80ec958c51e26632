"""`python`: run a snippet of Python code in the worker process.

The code may set `result`, `return` at top level, or define `def main(**input)`. `input`
(alias `args`) is injected: each key as a global, and as the dicts `input_data` and `args`.
`libs: {alias: module}` imports modules under aliases. A returned dict with
`status: error` is a tool error, as is any exception. Compiled code is cached by source
text, so a loop of 10,000 iterations compiles once.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

from noetl_pg.errors import ToolError
from noetl_pg.tools.base import ToolContext

_FUNCTION_NAME = "__noetl_snippet__"


@lru_cache(maxsize=1024)
def compile_snippet(code: str) -> Any:
    """Compile code; top-level `return` is allowed by wrapping the body in a function."""
    try:
        tree = ast.parse(code, mode="exec")
    except SyntaxError as exc:
        raise ToolError(f"python code has a syntax error at line {exc.lineno}: {exc.msg}") from exc
    has_top_level_return = any(isinstance(node, ast.Return) for node in tree.body)
    if has_top_level_return:
        wrapper = ast.parse(f"def {_FUNCTION_NAME}():\n    pass\n").body[0]
        assert isinstance(wrapper, ast.FunctionDef)
        wrapper.body = tree.body
        tree.body = [wrapper]
        ast.fix_missing_locations(tree)
    return compile(tree, "<python step>", "exec"), has_top_level_return


def run_snippet(code: str, inputs: Mapping[str, Any], libs: Mapping[str, str]) -> Any:
    """Execute `code` with `inputs` and return its value (see the module docstring)."""
    compiled, wrapped = compile_snippet(code)
    namespace: dict[str, Any] = {"__name__": "__noetl__", **inputs}
    namespace["input_data"] = dict(inputs)
    namespace["args"] = dict(inputs)
    namespace["input"] = dict(inputs)
    for alias, module in libs.items():
        namespace[alias] = importlib.import_module(module)
    exec(compiled, namespace)
    if wrapped:
        return namespace[_FUNCTION_NAME]()
    if "result" in namespace:
        return namespace["result"]
    main = namespace.get("main")
    if callable(main):
        return main(**inputs)
    return None


def check_result(value: Any) -> Any:
    if isinstance(value, dict) and value.get("status") == "error":
        message = value.get("message") or value.get("error") or "python step returned an error"
        raise ToolError(str(message), output={"data": value})
    return value


class PythonTool:
    kind: ClassVar[str] = "python"

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        code = config.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ToolError("python tool needs `code`")
        inputs = dict(config.get("input") or config.get("args") or {})
        libs = dict(config.get("libs") or {})
        try:
            value = run_snippet(code, inputs, libs)
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc
        return check_result(value)
