"""Execution endpoints: NoETL's /api/execute and /api/executions/*, plus the graph.

Reads come from noetl.execution and its projected `state` (one row by primary key); events
are read one page at a time by primary key, and counted from the projection.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from noetl_pg.server import database, views
from noetl_pg.server.auth import require
from noetl_pg.server.schemas import (
    BIGINT_MAX,
    CancelExecutionRequest,
    CancelExecutionResponse,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionDetailResponse,
    ExecutionEntryResponse,
    ExecutionEventsResponse,
    ExecutionGraph,
    ExecutionStatusResponse,
)

router = APIRouter(prefix="/api", tags=["Executions"])

ExecutionId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="Execution id")]
EventId = Annotated[int | None, Query(ge=0, le=BIGINT_MAX)]
MAX_EVENT_OFFSET = 100_000
MAX_EXECUTION_OFFSET = 100_000


async def _execution(request: Request, execution_id: int, *,
                     with_result: bool = False) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        row = await database.fetch_one(conn, "server_execution", execution_id=execution_id,
                                       with_result=with_result)
    if row is None:
        raise HTTPException(status_code=404, detail=f"Execution {execution_id} not found")
    return row


@router.post("/execute", response_model=ExecuteResponse,
             dependencies=[Depends(require("operator"))])
async def execute(body: ExecuteRequest, request: Request) -> dict[str, Any]:
    """Start a run of a registered playbook (noetl.start_execution)."""
    path, version = body.path, body.version
    async with request.app.state.pool.connection() as conn:
        if body.catalog_id is not None:
            entry = await database.fetch_one(conn, "server_catalog_by_id",
                                             catalog_id=body.catalog_id)
            if entry is None:
                raise HTTPException(
                    status_code=404,
                    detail=f"Executable catalog entry not found: catalog_id={body.catalog_id}")
            path, version = entry["path"], entry["version"]
        row = await database.fetch_one(conn, "server_start_execution", path=path,
                                       payload=body.payload, version=version)
        assert row is not None  # a scalar select returns one row
        issued = await database.fetch_one(conn, "server_commands_issued",
                                          execution_id=row["execution_id"])
    assert issued is not None
    return {"execution_id": str(row["execution_id"]), "status": "started",
            "commands_generated": issued["commands"]}


@router.get("/executions", response_model=list[ExecutionEntryResponse],
            dependencies=[Depends(require("reader"))])
async def list_executions(
    request: Request,
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 100,
    status: Annotated[str | None, Query(
        pattern="^(RUNNING|COMPLETED|FAILED|CANCELLED)$")] = None,
    path: Annotated[str | None, Query(max_length=1000,
                                      description="Playbook path prefix")] = None,
    before_execution_id: EventId = None,
) -> list[dict[str, Any]]:
    """Executions newest first, filtered by status and path prefix; page/page_size, or the
    before_execution_id cursor (the last id of the previous page)."""
    offset = 0 if before_execution_id is not None else (page - 1) * page_size
    if offset > MAX_EXECUTION_OFFSET:
        raise HTTPException(status_code=422, detail="page too deep: use before_execution_id")
    async with request.app.state.pool.connection() as conn:
        rows = await database.fetch_all(
            conn, "server_executions_page", status=status, path=path or None,
            before_id=before_execution_id, row_limit=page_size, row_offset=offset)
    return [views.execution_entry(row) for row in rows]


async def _events_page(request: Request, execution_id: int, state: dict[str, Any], *,
                       page: int, page_size: int, before_event_id: int | None,
                       since_event_id: int | None, event_type: str | None,
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    offset = 0 if before_event_id is not None else (page - 1) * page_size
    if offset > MAX_EVENT_OFFSET:
        raise HTTPException(status_code=422, detail="page too deep: use before_event_id")
    async with request.app.state.pool.connection() as conn:
        rows = await database.fetch_all(
            conn, "server_events_page", execution_id=execution_id, before_id=before_event_id,
            since_id=since_event_id, event_type=event_type, row_limit=page_size,
            row_offset=offset)
    # The total comes from the projection (state.events), never from counting events;
    # filtered pages cannot know theirs and report what they have seen.
    filtered = since_event_id is not None or event_type is not None
    total = offset + len(rows) if filtered else max(int(state.get("events") or 0),
                                                    offset + len(rows))
    total_pages = max(1, -(-total // page_size))
    full = len(rows) == page_size
    return [views.event_entry(execution_id, row) for row in rows], {
        "page": page,
        "page_size": page_size,
        "total_events": total,
        "total_pages": total_pages,
        "has_next": full,
        "has_prev": page > 1 or before_event_id is not None,
        "next_before_event_id": rows[-1]["event_id"] if full else None,
    }


@router.get("/executions/{execution_id}", response_model=ExecutionDetailResponse,
            dependencies=[Depends(require("reader"))])
async def get_execution(
    request: Request,
    execution_id: ExecutionId,
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
    page_size: Annotated[int, Query(ge=10, le=500)] = 100,
    since_event_id: EventId = None,
    before_event_id: EventId = None,
    event_type: Annotated[str | None, Query(max_length=100)] = None,
    include_events: bool = True,
    include_result: bool = False,
) -> dict[str, Any]:
    """One execution from the projection: status, steps, loop progress, and a page of
    events (newest first; include_events=false to skip them). The final result, which
    NoETL leaves out here, comes with include_result=true."""
    row = await _execution(request, execution_id, with_result=include_result)
    state = row["state"] or {}
    events: list[dict[str, Any]] = []
    pagination = None
    if include_events:
        events, pagination = await _events_page(
            request, execution_id, state, page=page, page_size=page_size,
            before_event_id=before_event_id, since_event_id=since_event_id,
            event_type=event_type)
    return {
        **views.execution_entry(row),
        "steps": views.step_states(state),
        "current_step": views.current_step(state),
        "projection": state,
        "events": events,
        "events_included": include_events,
        "events_endpoint": f"/api/executions/{execution_id}/events",
        "pagination": pagination,
    }


@router.get("/executions/{execution_id}/events", response_model=ExecutionEventsResponse,
            dependencies=[Depends(require("reader"))])
async def get_execution_events(
    request: Request,
    execution_id: ExecutionId,
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
    page_size: Annotated[int, Query(ge=10, le=500)] = 100,
    since_event_id: EventId = None,
    before_event_id: EventId = None,
    event_type: Annotated[str | None, Query(max_length=100)] = None,
) -> dict[str, Any]:
    """A page of events, newest first: page/page_size as NoETL, or the cursor
    before_event_id (next_before_event_id of the previous page); since_event_id for
    events after one already seen."""
    row = await _execution(request, execution_id)
    events, pagination = await _events_page(
        request, execution_id, row["state"] or {}, page=page, page_size=page_size,
        before_event_id=before_event_id, since_event_id=since_event_id, event_type=event_type)
    return {"execution_id": str(execution_id), "path": row["path"], "status": row["status"],
            "events": events, "pagination": pagination}


@router.get("/executions/{execution_id}/status", response_model=ExecutionStatusResponse,
            dependencies=[Depends(require("reader"))])
async def get_execution_status(request: Request, execution_id: ExecutionId,
                               full: bool = False) -> dict[str, Any]:
    """NoETL's status shape: completed/failed flags, current and completed steps.

    As in NoETL, a cancelled execution reports completed=true, failed=false."""
    row = await _execution(request, execution_id)
    state = row["state"] or {}
    status = row["status"]
    steps = views.step_states(state)
    entry = views.execution_entry(row)
    return {
        "execution_id": str(execution_id),
        "status": status,
        "current_step": views.current_step(state),
        "completed_steps": [step["name"] for step in steps if step["status"] == "done"],
        "failed": status == "FAILED",
        "completed": status in ("COMPLETED", "CANCELLED"),
        "completion_inferred": False,
        "variables": (row["ctx"] or {}) if full else {},
        "start_time": row["started_at"].isoformat(),
        "end_time": row["finished_at"].isoformat() if row["finished_at"] else None,
        "duration_seconds": entry["duration_seconds"],
        "duration_human": entry["duration_human"],
        "failed_step": row["failed_step"],
        "error": row["error"],
        "loops": entry["loops"],
        "projected": state.get("status") == status,
    }


@router.post("/executions/{execution_id}/cancel", response_model=CancelExecutionResponse,
             dependencies=[Depends(require("operator"))])
async def cancel_execution(request: Request, execution_id: ExecutionId,
                           body: CancelExecutionRequest | None = None) -> dict[str, Any]:
    """Cancel a running execution and its child executions (noetl.cancel_execution)."""
    reason = (body.reason if body else None) or "User requested cancellation"
    async with request.app.state.pool.connection() as conn, conn.transaction():
        row = await database.fetch_one(conn, "server_cancel_execution",
                                       execution_id=execution_id, reason=reason)
        cancelled = await database.fetch_all(conn, "server_cancelled_tree",
                                             execution_id=execution_id)
    assert row is not None
    ids = [str(item["execution_id"]) for item in cancelled]
    if not row["cancelled"]:
        return {"status": "already_completed", "execution_id": str(execution_id),
                "cancelled_executions": [],
                "message": f"Execution {execution_id} had already finished"}
    return {"status": "cancelled", "execution_id": str(execution_id),
            "cancelled_executions": ids, "message": f"Cancelled {len(ids)} execution(s)"}


@router.get("/executions/{execution_id}/graph", response_model=ExecutionGraph,
            dependencies=[Depends(require("reader"))])
async def get_execution_graph(request: Request, execution_id: ExecutionId) -> dict[str, Any]:
    """The playbook's steps and arcs, each step with its projected status (console)."""
    row = await _execution(request, execution_id)
    async with request.app.state.pool.connection() as conn:
        spec = await database.fetch_one(conn, "server_execution_graph",
                                        execution_id=execution_id)
    assert spec is not None
    return views.graph(execution_id, spec["workflow"] or [], spec["entry_step"],
                       row["state"] or {})
