"""Python snippet execution, and the subprocess that runs snippets for isolated steps.

Stdlib only, and runnable as a script by file path (`python python_child.py`) so a fresh
executor process starts without importing the engine (noetl_pg.tools imports httpx,
duckdb and psycopg; this file imports none of them).

Protocol of the subprocess: one JSON request per line on stdin, `{code, input, libs}`;
one JSON reply per line on the original stdout, `{ok: true, value}` or `{ok: false,
error, syntax_error}`. The snippet's own `print` output goes to stderr (file descriptor 1
is pointed there), so it can never corrupt a reply. EOF on stdin ends the process, so an
executor never outlives its worker.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

_FUNCTION_NAME = "__noetl_snippet__"


class SnippetSyntaxError(Exception):
    """The snippet does not parse; the message names the line."""


@lru_cache(maxsize=1024)
def compile_snippet(code: str) -> tuple[Any, bool]:
    """Compile code; top-level `return` is allowed by wrapping the body in a function."""
    try:
        tree = ast.parse(code, mode="exec")
    except SyntaxError as exc:
        raise SnippetSyntaxError(
            f"python code has a syntax error at line {exc.lineno}: {exc.msg}"
        ) from None
    has_top_level_return = any(isinstance(node, ast.Return) for node in tree.body)
    if has_top_level_return:
        wrapper = ast.parse(f"def {_FUNCTION_NAME}():\n    pass\n").body[0]
        assert isinstance(wrapper, ast.FunctionDef)
        wrapper.body = tree.body
        tree.body = [wrapper]
        ast.fix_missing_locations(tree)
    return compile(tree, "<python step>", "exec"), has_top_level_return


def run_snippet(code: str, inputs: Mapping[str, Any], libs: Mapping[str, str]) -> Any:
    """Execute `code` with `inputs` and return its value: `result`, a top-level `return`,
    or `main(**input)`; None when the code provides none of them."""
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


def _reply(request: Mapping[str, Any]) -> dict[str, Any]:
    try:
        value = run_snippet(request["code"], request.get("input") or {}, request.get("libs") or {})
    except SnippetSyntaxError as exc:
        return {"ok": False, "error": str(exc), "syntax_error": True}
    except Exception as exc:  # the snippet's own failure is the step's error
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "syntax_error": False}
    return {"ok": True, "value": value}


def serve() -> None:
    """Answer requests until stdin closes (see the module docstring)."""
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin.buffer:
        reply = _reply(json.loads(line))
        try:
            data = json.dumps(reply, default=str)
        except ValueError as exc:  # e.g. a circular structure
            data = json.dumps({"ok": False, "error": f"result is not JSON: {exc}",
                               "syntax_error": False})
        replies.write(data.encode() + b"\n")


if __name__ == "__main__":
    serve()
