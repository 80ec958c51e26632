"""Operations endpoints: health, workers (heartbeat, capacity) and the queue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from noetl_pg.server import database
from noetl_pg.server.auth import require
from noetl_pg.server.schemas import QueueEntry, WorkerEntry

router = APIRouter(prefix="/api", tags=["Operations"])

# A worker whose heartbeat is older than this is reported dead (the reaper's default
# timeout is longer; this is what the console and /metrics call alive).
ALIVE_SECONDS = 30.0


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """{"status": "ok"} when the database answers, 503 otherwise (no token needed)."""
    try:
        async with request.app.state.pool.connection(timeout=5) as conn:
            await database.fetch_one(conn, "server_ping")
    except Exception:  # any failure to reach the database is "not healthy"
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/workers", response_model=list[WorkerEntry],
            dependencies=[Depends(require("reader"))])
async def workers(request: Request) -> list[dict[str, Any]]:
    """Registered workers: heartbeat age, alive, slots, commands held, free slots."""
    async with request.app.state.pool.connection() as conn:
        rows = await database.fetch_all(conn, "server_workers")
    return [{**row,
             "alive": row["stopped_at"] is None and row["heartbeat_age_seconds"] < ALIVE_SECONDS,
             "free_slots": max(0, row["slots"] - row["claimed"])} for row in rows]


@router.get("/queue", response_model=list[QueueEntry],
            dependencies=[Depends(require("reader"))])
async def queue(request: Request) -> list[dict[str, Any]]:
    """Per command kind: queued (due now / later), claimed and waiting commands."""
    async with request.app.state.pool.connection() as conn:
        return await database.fetch_all(conn, "server_queue")
