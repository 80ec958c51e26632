"""`kind: playbook`: run another registered playbook as a child execution.

Config keys: `path` (the child's catalog path), `version` (an integer, or `latest` /
omitted for the newest), `input` (alias `payload`: merged over the child's workload),
`return_step` (use that child step's result instead of the child's final result).

The tool does not wait. `run()` only validates the config and returns a `ChildRequest`;
the executor turns it into the `await_child` outcome, and `noetl.await_child` (SQL,
sql/functions/child.sql) parks the parent command in status 'waiting' and starts the
child in the same transaction. The worker slot is free at once; when the child finishes,
`noetl.child_finished` completes the parent command with the child's result, or fails it
with the child's error (the parent step's retry policy then decides whether a fresh child
is started on the next attempt). A playbook task therefore has to be the only tool of its
step (not a task inside a pipeline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from noetl_pg.errors import ToolError
from noetl_pg.tools.base import ToolContext


@dataclass(frozen=True)
class ChildRequest:
    """What a `playbook` step asks the database to start and wait for."""

    path: str
    version: int | None
    payload: dict[str, Any] = field(default_factory=dict)
    return_step: str | None = None


def _version(value: Any) -> int | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "latest"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ToolError(f"playbook tool: version must be an integer or 'latest', got {value!r}") \
            from None


class PlaybookTool:
    """Validates a child request; see the module docstring."""

    kind: ClassVar[str] = "playbook"
    config_keys: ClassVar[frozenset[str]] = frozenset({"path", "version", "payload", "return_step"})
    # NoETL's other name for this kind's `input` (registration renames it, noetl_pg.dsl).
    input_alias: ClassVar[str] = "payload"

    def run(self, config: Mapping[str, Any], context: ToolContext) -> ChildRequest:
        path = config.get("path")
        if not isinstance(path, str) or not path:
            raise ToolError("playbook tool needs `path` (a registered playbook path)")
        payload = config.get("input")
        if payload is None:
            payload = config.get(self.input_alias)
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            raise ToolError(f"playbook tool: input must be a mapping, got {type(payload).__name__}")
        return_step = config.get("return_step")
        if return_step is not None and not isinstance(return_step, str):
            raise ToolError("playbook tool: return_step must be a step name")
        return ChildRequest(path, _version(config.get("version")), dict(payload), return_step)
