"""The tool registry: `tool.kind` -> the class that runs it. One line per kind."""

from __future__ import annotations

from noetl_pg.tools.base import Tool
from noetl_pg.tools.noop import NoopTool
from noetl_pg.tools.python import PythonTool

TOOL_CLASSES: dict[str, type[Tool]] = {
    PythonTool.kind: PythonTool,
    NoopTool.kind: NoopTool,
}


def create_tools() -> dict[str, Tool]:
    """One instance of each tool for a worker (tools keep no per-command state)."""
    return {kind: tool_class() for kind, tool_class in TOOL_CLASSES.items()}
