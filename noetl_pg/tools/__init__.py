"""The tool registry: `tool.kind` -> the class that runs it. One line per kind."""

from __future__ import annotations

import importlib.util
from typing import Any

from noetl_pg.extras import missing_extra_tool
from noetl_pg.tools.artifact import ArtifactTool
from noetl_pg.tools.base import Tool
from noetl_pg.tools.http import HttpTool
from noetl_pg.tools.noop import NoopTool
from noetl_pg.tools.playbook import PlaybookTool
from noetl_pg.tools.postgres import DuckdbKind, PostgresTool
from noetl_pg.tools.python import PythonTool
from noetl_pg.tools.transfer import TransferTool
from noetl_pg.tools.unavailable import UNAVAILABLE_TOOL_CLASSES
from noetl_pg.tools.workbook import WorkbookTool

# The duckdb module is imported when a step runs (every CLI command loads this registry).
if importlib.util.find_spec("duckdb") is not None:
    from noetl_pg.tools.duckdb import DuckdbTool
else:  # the `duckdb` extra is not installed
    DuckdbTool = missing_extra_tool(DuckdbKind, extra="duckdb")  # type: ignore[misc]

TOOL_CLASSES: dict[str, type[Tool]] = {
    PythonTool.kind: PythonTool,
    NoopTool.kind: NoopTool,
    HttpTool.kind: HttpTool,
    PostgresTool.kind: PostgresTool,
    DuckdbTool.kind: DuckdbTool,
    PlaybookTool.kind: PlaybookTool,
    TransferTool.kind: TransferTool,
    ArtifactTool.kind: ArtifactTool,
    # NoETL kinds that need a service we do not have: registered, fail when reached.
    **{tool_class.kind: tool_class for tool_class in UNAVAILABLE_TOOL_CLASSES},
}


ALL_TOOL_CLASSES: tuple[type[Tool], ...] = (*TOOL_CLASSES.values(), WorkbookTool)


def _declared(attribute: str) -> dict[str, Any]:
    """kind -> its class's `attribute`, for the classes that declare one (see base.Tool)."""
    return {tool_class.kind: value for tool_class in ALL_TOOL_CLASSES
            if (value := getattr(tool_class, attribute, None))}


# What the rest of the engine knows of kinds, read off their classes: a new kind declares
# it in its own module and is known everywhere by its registry line.
SQL_TEXT_KINDS = frozenset(_declared("sql_text"))
PERCENT_PARAM_KINDS = frozenset(_declared("percent_params"))
STREAM_KINDS = frozenset(_declared("streams"))
SCRIPT_FIELDS: dict[str, str] = _declared("script_field")
CONTEXT_KEYS: dict[str, str] = _declared("context_key")
INPUT_ALIASES: dict[str, str] = _declared("input_alias")


def tool_config_keys() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """kind -> (its `tool:` keys, its `tool.spec` keys): what registration accepts."""
    return {
        tool_class.kind: (tool_class.config_keys,
                          getattr(tool_class, "spec_keys", frozenset()))
        for tool_class in ALL_TOOL_CLASSES
    }


def create_tools() -> dict[str, Tool]:
    """One instance of each tool for a worker (tools keep no per-command state).

    `workbook` dispatches to the others, so it is built with the finished registry.
    """
    tools: dict[str, Tool] = {kind: tool_class() for kind, tool_class in TOOL_CLASSES.items()}
    tools[WorkbookTool.kind] = WorkbookTool(tools)
    return tools
