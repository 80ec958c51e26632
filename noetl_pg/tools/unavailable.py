"""NoETL tool kinds that need a service noetl-pg does not have (a warehouse, a cloud
bucket, a container runtime, an agent or MCP server, a shell sandbox).

A playbook naming one registers, with a warning naming the kind (NoETL's own fixtures
keep such probes behind workload flags, so the step may never be reached); a step of such
a kind that is reached fails with that same message. Their keys are NoETL's and are not
checked here (`config_keys` is ANY_KEYS). A kind NoETL does not have is refused at
registration as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from noetl_pg.errors import ToolError
from noetl_pg.tools.base import Tool, ToolContext

# `config_keys` of a kind whose keys registration does not check (see dsl_keys.task).
ANY_KEYS = frozenset({"*"})

# NoETL kind -> the service it needs.
SERVICE_KINDS: dict[str, str] = {
    "snowflake": "a Snowflake account",
    "snowflake_transfer": "a Snowflake account",
    "ducklake": "a DuckLake catalog and object storage",
    "gcs": "Google Cloud Storage",
    "container": "a Kubernetes cluster",
    "nats": "a NATS KV/object store bound to NoETL's server",
    "agent": "an AI agent runtime",
    "mcp": "an MCP server",
    "shell": "a shell sandbox (not provided by noetl-pg workers)",
}


def unavailable_message(kind: str) -> str:
    return (f"tool kind '{kind}' needs {SERVICE_KINDS[kind]}, which noetl-pg does not "
            "have; a step of this kind fails when it is reached")


def _unavailable_tool(kind_name: str) -> type[Tool]:
    class UnavailableTool:
        kind: ClassVar[str] = kind_name
        config_keys: ClassVar[frozenset[str]] = ANY_KEYS
        spec_keys: ClassVar[frozenset[str]] = ANY_KEYS

        def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
            raise ToolError(unavailable_message(self.kind))

    UnavailableTool.__name__ = f"Unavailable_{kind_name}"
    return UnavailableTool


UNAVAILABLE_TOOL_CLASSES: tuple[type[Tool], ...] = tuple(
    _unavailable_tool(kind) for kind in SERVICE_KINDS)
