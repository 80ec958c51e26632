"""Request and response bodies, with NoETL's field names (its server API) plus our own.

Ids are strings in responses, as NoETL sends them (its ids are 64-bit snowflakes that
JavaScript cannot hold as numbers); requests accept numbers or strings.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

BIGINT_MAX = 2**63 - 1


class Strict(BaseModel):
    # An unknown request field is refused (422 naming it), never silently ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- catalog -------------------------------------------------------------------------


class CatalogRegisterRequest(Strict):
    content: str = Field(description="Playbook YAML, plain or base64-encoded",
                         max_length=16 * 1024 * 1024)
    resource_type: str = Field(default="Playbook", description="Only Playbook is accepted")

    @field_validator("content", mode="after")
    @classmethod
    def decode_base64(cls, value: str) -> str:
        # NoETL's CLI sends base64; plain YAML (it has spaces and colons) never decodes.
        try:
            return base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return value

    @field_validator("resource_type")
    @classmethod
    def only_playbooks(cls, value: str) -> str:
        if value.strip().lower() not in ("playbook", "playbooks"):
            raise ValueError(f"resource_type {value!r} is not supported; only Playbook")
        return "Playbook"


class CatalogRegisterResponse(BaseModel):
    status: str
    message: str
    path: str
    version: int
    catalog_id: str
    kind: str


class CatalogEntriesRequest(Strict):
    resource_type: str | None = None
    path: str | None = None
    agent_only: bool = False
    capability: str | None = None
    capabilities: list[str] | None = None

    @model_validator(mode="after")
    def playbooks_only(self) -> CatalogEntriesRequest:
        if self.agent_only or self.capability or self.capabilities:
            raise ValueError("agent entries (agent_only, capability, capabilities) "
                             "are not supported: noetl-pg registers playbooks only")
        if self.resource_type and self.resource_type.strip().lower() not in (
                "playbook", "playbooks"):
            raise ValueError(f"resource_type {self.resource_type!r} is not supported; "
                             "only Playbook")
        return self


class CatalogEntryRequest(Strict):
    catalog_id: str | int | None = None
    path: str | None = None
    version: str | int | None = Field(default=None, description="A number or 'latest'")

    @model_validator(mode="after")
    def needs_identifier(self) -> CatalogEntryRequest:
        if self.catalog_id in (None, "") and not self.path:
            raise ValueError("At least one identifier must be provided: catalog_id or path")
        if self.catalog_id not in (None, ""):
            catalog_id = str(self.catalog_id)
            if not catalog_id.isdigit() or int(catalog_id) > BIGINT_MAX:
                raise ValueError("catalog_id must be a positive integer")
        if isinstance(self.version, str) and self.version != "latest" and (
                not self.version.isdigit() or int(self.version) > 2**31 - 1):
            raise ValueError("version must be an integer or 'latest'")
        if isinstance(self.version, int) and not 0 < self.version <= 2**31 - 1:
            raise ValueError("version must be a positive integer")
        return self


class CatalogEntry(BaseModel):
    catalog_id: str
    path: str
    version: int
    kind: str = "Playbook"
    content: str | None = None
    layout: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    created_at: datetime | None = None


class CatalogEntries(BaseModel):
    entries: list[CatalogEntry]


# --- executions ----------------------------------------------------------------------


class ExecuteRequest(Strict):
    path: str | None = Field(default=None, max_length=1000)
    catalog_id: int | None = Field(default=None, ge=1, le=BIGINT_MAX)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    resource_kind: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict, alias="workload")
    parent_execution_id: int | None = Field(
        default=None, description="Refused: a parent link is made by the playbook tool")

    @model_validator(mode="after")
    def path_or_catalog_id(self) -> ExecuteRequest:
        if not self.path and not self.catalog_id:
            raise ValueError("Either 'path' or 'catalog_id' must be provided")
        if self.resource_kind and self.resource_kind.strip().lower() not in (
                "playbook", "playbooks"):
            raise ValueError(f"Catalog kind '{self.resource_kind}' is not executable")
        if self.parent_execution_id is not None:
            raise ValueError("parent_execution_id is not accepted: child executions are "
                             "started by a step with the playbook tool")
        return self


class ExecuteResponse(BaseModel):
    execution_id: str
    status: str
    commands_generated: int


class LoopProgress(BaseModel):
    step: str
    loop_id: str | None
    total: int
    done: int
    failed: int
    completed: bool
    rate_per_second: float | None = Field(description="Iterations finished per second")


class StepState(BaseModel):
    name: str
    status: str
    started: datetime | None = None
    finished: datetime | None = None
    attempts: int = 0
    runs: int = 0
    error: str | None = None


class ExecutionEntryResponse(BaseModel):
    execution_id: str
    catalog_id: str
    path: str
    version: int
    status: str
    start_time: datetime
    end_time: datetime | None = None
    duration_seconds: float | None = None
    duration_human: str | None = None
    progress: int = Field(ge=0, le=100)
    result: JsonValue = None
    error: str | None = None
    parent_execution_id: str | None = None
    failed_step: str | None = None
    loops: list[LoopProgress] = Field(default_factory=list)


class ExecutionEventResponse(BaseModel):
    execution_id: str
    event_id: int
    event_type: str
    node_id: str | None = None
    node_name: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    timestamp: datetime | None = None
    context: JsonValue = None
    result: JsonValue = None
    error: str | None = None
    catalog_id: str | None = None
    parent_execution_id: str | None = None
    parent_event_id: str | None = None
    duration: float | None = None
    command_id: str | None = None
    attempt: int | None = None
    loop_id: str | None = None
    iter_index: int | None = None
    result_ref: str | None = None


class ExecutionEventsPagination(BaseModel):
    page: int
    page_size: int
    total_events: int
    total_pages: int
    has_next: bool
    has_prev: bool
    next_before_event_id: int | None = Field(
        default=None, description="Cursor: pass as before_event_id for the next (older) page")


class ExecutionDetailResponse(ExecutionEntryResponse):
    steps: list[StepState] = Field(default_factory=list)
    current_step: str | None = None
    projection: dict[str, Any] = Field(default_factory=dict,
                                       description="noetl.execution_state as projected")
    events: list[ExecutionEventResponse] = Field(default_factory=list)
    events_included: bool = True
    events_endpoint: str
    pagination: ExecutionEventsPagination | None = None


class ExecutionEventsResponse(BaseModel):
    execution_id: str
    path: str
    status: str
    events: list[ExecutionEventResponse]
    pagination: ExecutionEventsPagination


class ExecutionStatusResponse(BaseModel):
    execution_id: str
    status: str
    current_step: str | None
    completed_steps: list[str]
    failed: bool
    completed: bool
    completion_inferred: bool = False
    variables: dict[str, Any]
    start_time: str | None
    end_time: str | None
    duration_seconds: float | None
    duration_human: str | None
    failed_step: str | None = None
    error: str | None = None
    loops: list[LoopProgress] = Field(default_factory=list)
    projected: bool = Field(description="The projection (steps, loops) has folded the "
                                        "execution's events up to its current status")


class CancelExecutionRequest(Strict):
    reason: str | None = Field(default="User requested cancellation", max_length=2000)
    cascade: bool = Field(default=True, description="Must be true: children are always "
                                                    "cancelled with their parent")

    @field_validator("cascade")
    @classmethod
    def always_cascade(cls, value: bool) -> bool:
        if not value:
            raise ValueError("cascade=false is not supported: cancelling an execution "
                             "always cancels its child executions")
        return value


class CancelExecutionResponse(BaseModel):
    status: str
    execution_id: str
    cancelled_executions: list[str]
    message: str


class GraphNode(BaseModel):
    name: str
    kind: str
    status: str
    has_loop: bool
    is_entry: bool


class GraphEdge(BaseModel):
    source: str
    target: str
    when: str | None = None


class ExecutionGraph(BaseModel):
    execution_id: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]


# --- credentials ---------------------------------------------------------------------


class CredentialCreateRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    type: str = Field(default="generic", alias="credential_type")
    data: dict[str, Any]
    meta: dict[str, Any] | None = None
    tags: str | list[str] | None = None
    description: str | None = None

    @model_validator(mode="after")
    def no_unstored_fields(self) -> CredentialCreateRequest:
        # noetl.credential has no column for these; refusing beats dropping them.
        given = [name for name in ("meta", "tags", "description")
                 if getattr(self, name) not in (None, {}, [], "")]
        if given:
            raise ValueError(f"{', '.join(given)} cannot be stored by noetl-pg; "
                             "put non-secret fields in data")
        return self


class CredentialResponse(BaseModel):
    id: str
    name: str
    type: str
    meta: dict[str, Any] | None = None
    tags: list[str] | None = None
    description: str | None = None
    created_at: str
    updated_at: str
    public_fields: dict[str, Any] = Field(
        default_factory=dict, description="Non-secret fields (secret fields never leave)")
    has_secret: bool = False


class CredentialListResponse(BaseModel):
    items: list[CredentialResponse]
    filter: dict[str, Any] | None = None


class CredentialDeleteResponse(BaseModel):
    message: str
    id: str
    name: str


# --- operations ----------------------------------------------------------------------


class WorkerEntry(BaseModel):
    worker_id: str
    hostname: str | None
    pid: int | None
    slots: int
    kinds: list[str] | None
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    heartbeat_age_seconds: float
    alive: bool
    claimed: int
    free_slots: int


class QueueEntry(BaseModel):
    kind: str
    queued_due: int
    queued_later: int
    claimed: int
    waiting: int
