"""Resume and rerun (noetl.resume_execution, noetl.rerun_execution).

Mounted only when the database has those functions (`optional_functions`), so the OpenAPI
spec, and the console's resume button, show them exactly when they work.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from noetl_pg import db
from noetl_pg.server import database
from noetl_pg.server.api_executions import ExecutionId
from noetl_pg.server.auth import require
from noetl_pg.server.schemas import Strict

router = APIRouter(prefix="/api", tags=["Executions"])


class ResumeResponse(BaseModel):
    status: str
    execution_id: str
    commands_reissued: int
    message: str


class RerunRequest(Strict):
    from_step: str = Field(min_length=1, max_length=200,
                           description="Run again from this step; earlier results are reused")


class RerunResponse(BaseModel):
    status: str
    execution_id: str
    rerun_of: str
    from_step: str


def optional_functions(dsn: str) -> dict[str, bool]:
    """{'resume': bool, 'rerun': bool}: which of the functions the database has."""
    with db.connection(dsn) as conn:
        row = db.fetch_one(conn, "server_optional_functions")
    return {"resume": bool(row and row["resume"]), "rerun": bool(row and row["rerun"])}


@router.post("/executions/{execution_id}/resume", response_model=ResumeResponse,
             dependencies=[Depends(require("operator"))])
async def resume_execution(request: Request, execution_id: ExecutionId) -> dict[str, Any]:
    """Continue a FAILED or CANCELLED execution where it stopped (422 when RUNNING,
    COMPLETED or nothing is left to resume)."""
    async with request.app.state.pool.connection() as conn:
        row = await database.fetch_one(conn, "server_resume_execution",
                                       execution_id=execution_id)
    assert row is not None
    return {"status": "resumed", "execution_id": str(execution_id),
            "commands_reissued": row["commands"],
            "message": f"Execution {execution_id} resumed: {row['commands']} command(s) "
                       "issued again"}


@router.post("/executions/{execution_id}/rerun", response_model=RerunResponse,
             dependencies=[Depends(require("operator"))])
async def rerun_execution(request: Request, execution_id: ExecutionId,
                          body: RerunRequest) -> dict[str, Any]:
    """Start a new execution of the same playbook version from `from_step`."""
    async with request.app.state.pool.connection() as conn:
        row = await database.fetch_one(conn, "server_rerun_execution",
                                       execution_id=execution_id, from_step=body.from_step)
    assert row is not None
    return {"status": "started", "execution_id": str(row["execution_id"]),
            "rerun_of": str(execution_id), "from_step": body.from_step}
