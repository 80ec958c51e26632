"""`kind: workbook`: run a named task of the playbook's `workbook` section.

Config keys: `name` (the workbook entry), `input` (bindings for the task).

A workbook entry is `{name, tool: {kind, ...}}` (or the older flat form `{name, kind,
...}`). The executor, which knows the playbook, resolves the entry before the tool runs
(noetl_pg.workbook_call.resolve_task): the entry's tool config is rendered with the
step's namespace plus the call's `input` (each key bare and as `input`), and its own
`input` is merged under the call's. The resolved config travels in the `task` key;
`WorkbookTool.run` hands it to the tool of its kind, so a workbook task may be any kind
except another `workbook`. Its result is the step's result; a `playbook` task starts a
child like a `playbook` step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from noetl_pg.errors import ToolError
from noetl_pg.tools.base import Tool, ToolContext


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
