"""`kind: workbook`: run a named task of the playbook's `workbook` section.

Config keys: `name` (the workbook entry), `input` (bindings for the task).

A workbook entry is `{name, tool: {kind, ...}}` (or the older flat form `{name, kind,
...}`). The executor, which knows the playbook, resolves the entry with `resolve_task`:
the entry's tool config is rendered with the step's namespace plus the call's `input`
(each key bare and as `input`), and its own `input` is merged under the call's. The
resolved config travels in the `task` key; `WorkbookTool.run` hands it to the tool of its
kind, so a workbook task may be any kind except another `workbook`. Its result is the
step's result; a `playbook` task starts a child like a `playbook` step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from noetl_pg.errors import ToolError
from noetl_pg.sqlrender import render_tool_config
from noetl_pg.tools.base import Tool, ToolContext


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


class WorkbookTool:
    """Runs a resolved workbook task with the worker's tool of that kind."""

    kind: ClassVar[str] = "workbook"
    config_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, tools: Mapping[str, Tool]) -> None:
        self._tools = tools

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        task = config.get("task")
        if not isinstance(task, Mapping):
            raise ToolError(f"workbook task '{config.get('name')}' was not resolved")
        tool = self._tools.get(str(task.get("kind")))
        if tool is None:
            raise ToolError(f"workbook task '{config.get('name')}': no worker tool for kind "
                            f"'{task.get('kind')}'")
        return tool.run(task, context)
