"""The contract every tool kind implements.

A tool is a class with one `run()`; it receives its already-rendered configuration (the
`tool:` block of a step, templates resolved) and a `ToolContext`, and returns a JSON-able
value or raises `ToolError`. Tools are the only side effects in the engine: they never
touch engine tables and never decide routing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class CredentialResolver(Protocol):
    """Looks up a named credential's decrypted fields (never logged, never stored in events)."""

    def get(self, name: str) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class ToolContext:
    """Where a tool runs: identifiers for logs and child executions, and shared services."""

    execution_id: int
    step: str
    command_id: int
    attempt: int
    dsn: str
    credentials: CredentialResolver | None = None
    # Per-worker shared objects (an HTTP client, connection pools), keyed by tool kind.
    worker_resources: dict[str, Any] = field(default_factory=dict)
    timeout_seconds: float | None = None


class Tool(Protocol):
    """One tool kind. `kind` is the value of `tool.kind` in a playbook."""

    kind: ClassVar[str]

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any: ...
