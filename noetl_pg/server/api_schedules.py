"""Schedule endpoints (our own; NoETL's server has none): list, add, pause, resume, delete.

The same functions as `noetl schedule ...` (noetl_pg/schedules.py and the schedule_*
statements): tick times are computed here, firing stays with the workers' heartbeat.
Readers list; operators change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from noetl_pg import db
from noetl_pg.schedules import MISSED_POLICIES, ScheduleError, add_schedule, set_paused
from noetl_pg.server import database
from noetl_pg.server.auth import require
from noetl_pg.server.schemas import Strict

router = APIRouter(prefix="/api", tags=["Schedules"])


class ScheduleCreateRequest(Strict):
    path: str = Field(min_length=1, max_length=1000, description="Catalog path to start")
    cron: str = Field(min_length=1, max_length=200,
                      description="5 fields: minute hour day month weekday")
    timezone: str = Field(default="UTC", max_length=100, description="IANA time zone")
    payload: dict[str, Any] = Field(default_factory=dict,
                                    description="Object each run starts with")
    missed_policy: str = Field(default="skip",
                               description=f"One of {', '.join(MISSED_POLICIES)}")


class ScheduleEntry(BaseModel):
    schedule_id: int
    path: str
    cron: str
    timezone: str
    payload: dict[str, Any]
    missed_policy: str
    paused: bool
    next_run_at: datetime
    last_run_at: datetime | None = None
    last_execution_id: int | None = None
    last_status: str | None = None
    runs: int


class ScheduleState(BaseModel):
    schedule_id: int
    state: str


async def _entry(request: Request, schedule_id: int) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        rows = await database.fetch_all(conn, "schedule_list")
    for row in rows:
        if row["schedule_id"] == schedule_id:
            return row
    raise HTTPException(status_code=404, detail=f"schedule {schedule_id} does not exist")


@router.get("/schedules", response_model=list[ScheduleEntry],
            dependencies=[Depends(require("reader"))])
async def list_schedules(request: Request) -> list[dict[str, Any]]:
    """Every schedule with its next tick, run count and last execution."""
    async with request.app.state.pool.connection() as conn:
        return await database.fetch_all(conn, "schedule_list")


@router.post("/schedules", response_model=ScheduleEntry,
             dependencies=[Depends(require("operator"))])
async def create_schedule(body: ScheduleCreateRequest, request: Request) -> dict[str, Any]:
    """Start `path` on every tick of `cron`; the first tick is the first after now."""

    def add() -> int:
        with db.connect(request.app.state.dsn) as conn:
            return add_schedule(conn, body.path, body.cron, timezone_name=body.timezone,
                                payload=body.payload, missed_policy=body.missed_policy)

    try:
        schedule_id = await run_in_threadpool(add)
    except ScheduleError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return await _entry(request, schedule_id)


async def _toggle(request: Request, schedule_id: int, paused: bool) -> dict[str, Any]:
    def toggle() -> bool:
        with db.connect(request.app.state.dsn) as conn:
            return set_paused(conn, schedule_id, paused)

    if not await run_in_threadpool(toggle):
        raise HTTPException(status_code=404, detail=f"schedule {schedule_id} does not exist")
    return {"schedule_id": schedule_id, "state": "paused" if paused else "active"}


@router.post("/schedules/{schedule_id}/pause", response_model=ScheduleState,
             dependencies=[Depends(require("operator"))])
async def pause_schedule(schedule_id: int, request: Request) -> dict[str, Any]:
    """Stop firing the schedule until it is resumed."""
    return await _toggle(request, schedule_id, True)


@router.post("/schedules/{schedule_id}/resume", response_model=ScheduleState,
             dependencies=[Depends(require("operator"))])
async def resume_schedule(schedule_id: int, request: Request) -> dict[str, Any]:
    """Fire the schedule again from its first tick after now."""
    return await _toggle(request, schedule_id, False)


@router.delete("/schedules/{schedule_id}", response_model=ScheduleState,
               dependencies=[Depends(require("operator"))])
async def delete_schedule(schedule_id: int, request: Request) -> dict[str, Any]:
    """Remove the schedule and its tick history (executions it started stay)."""
    async with request.app.state.pool.connection() as conn:
        row = await database.fetch_one(conn, "schedule_delete", schedule_id=schedule_id)
    if not (row and row["found"]):
        raise HTTPException(status_code=404, detail=f"schedule {schedule_id} does not exist")
    return {"schedule_id": schedule_id, "state": "deleted"}
