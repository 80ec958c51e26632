"""A `kind: workbook` call resolved to the workbook entry it names, rendered to run.

The tool (noetl_pg.tools.workbook) runs a resolved call; resolving it is rendering, which
needs the playbook's workbook and the step's namespace: the executor's, not a tool's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from noetl_pg.errors import ToolError
from noetl_pg.sqlrender import render_tool_config
from noetl_pg.tools.workbook import WorkbookTool


def resolve_task(
    workbook: Sequence[Mapping[str, Any]], config: Mapping[str, Any], scope: Mapping[str, Any],
    playbook_workload: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The rendered workbook call `config` with its resolved task under `task`."""
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise ToolError("workbook tool needs `name` (a workbook entry)")
    entry = next((e for e in workbook if isinstance(e, Mapping) and e.get("name") == name), None)
    if entry is None:
        known = ", ".join(sorted(str(e.get("name")) for e in workbook)) or "none"
        raise ToolError(f"workbook has no task named '{name}' (known: {known})")
    raw = entry.get("tool")
    if raw is None:
        raw = {key: value for key, value in entry.items() if key != "name"}
    if not isinstance(raw, Mapping) or not raw.get("kind"):
        raise ToolError(f"workbook task '{name}' has no tool kind")
    if raw["kind"] == WorkbookTool.kind:
        raise ToolError(f"workbook task '{name}' cannot itself be a workbook call")
    call_input = config.get("input") or {}
    if not isinstance(call_input, Mapping):
        raise ToolError(f"workbook '{name}': input must be a mapping")
    task_scope = {**scope, **call_input, "input": dict(call_input)}
    task = render_tool_config(
        {key: value for key, value in raw.items() if key not in ("spec", "retry")}, task_scope,
        playbook_workload=playbook_workload,
    )
    task["input"] = {**(task.get("input") or {}), **call_input}
    return {**config, "task": task}
