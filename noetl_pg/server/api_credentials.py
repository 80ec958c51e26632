"""Credential endpoints (NoETL's /api/credentials): store, list, get and delete, secrets
never returned.

Storing calls noetl_pg.credentials.put_credential (the same as `noetl credential add`), so
encryption stays where that module puts it; listing runs that module's `credential_list`
statement on the server's pool, deleting the `credential_delete` of `noetl credential
delete`. A credential's id is its name. Only admins reach them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from noetl_pg.credentials import (
    CREDENTIAL_TYPES,
    CredentialError,
    put_credential,
)
from noetl_pg.server import database
from noetl_pg.server.auth import require
from noetl_pg.server.schemas import (
    CredentialCreateRequest,
    CredentialDeleteResponse,
    CredentialListResponse,
    CredentialResponse,
)

router = APIRouter(prefix="/api", tags=["Credentials"],
                   dependencies=[Depends(require("admin"))])

# NoETL's type names for the types noetl-pg has.
TYPE_ALIASES = {"httpbearerauth": "bearer", "bearer": "bearer", "postgres": "postgres",
                "http": "http", "s3": "s3", "static": "static", "generic": "generic"}


def _response(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["name"],
        "name": row["name"],
        "type": row["credential_type"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "public_fields": row["public_data"],
        "has_secret": row["has_secret"],
    }


async def _all(request: Request) -> list[dict[str, Any]]:
    # The statement noetl_pg.credentials.list_credentials runs (no secret in it), on the
    # server's pool rather than a new connection per request.
    async with request.app.state.pool.connection() as conn:
        return await database.fetch_all(conn, "credential_list")


@router.post("/credentials", response_model=CredentialResponse)
async def create_or_update_credential(body: CredentialCreateRequest,
                                      request: Request) -> dict[str, Any]:
    """Store (or replace) a credential; secret fields are encrypted, never echoed."""
    credential_type = TYPE_ALIASES.get(body.type.lower())
    if credential_type is None:
        raise HTTPException(status_code=422, detail=(
            f"credential '{body.name}': type must be one of {', '.join(CREDENTIAL_TYPES)}"))
    try:
        await run_in_threadpool(put_credential, request.app.state.dsn, body.name,
                                credential_type, body.data)
    except CredentialError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    rows = [row for row in await _all(request) if row["name"] == body.name]
    if not rows:
        raise HTTPException(status_code=409, detail=f"credential '{body.name}' vanished")
    return _response(rows[0])


@router.get("/credentials", response_model=CredentialListResponse)
async def list_all_credentials(request: Request, type: str | None = None,
                               q: str | None = None) -> dict[str, Any]:
    """Names, types and non-secret fields; `type` and `q` (name contains) filter."""
    wanted_type = TYPE_ALIASES.get(type.lower(), type) if type else None
    items = [_response(row) for row in await _all(request)
             if (wanted_type is None or row["credential_type"] == wanted_type)
             and (not q or q.lower() in row["name"].lower())]
    return {"items": items, "filter": {"type": type, "q": q}}


@router.get("/credentials/{identifier}", response_model=CredentialResponse)
async def get_credential(identifier: str, request: Request,
                         include_data: bool = False) -> dict[str, Any]:
    """One credential's public view; include_data=true is refused (secrets stay inside)."""
    if include_data:
        raise HTTPException(status_code=403, detail=(
            "include_data is refused: secret fields are only decrypted inside workers"))
    for row in await _all(request):
        if row["name"] == identifier:
            return _response(row)
    raise HTTPException(status_code=404, detail=f"credential '{identifier}' not found")


@router.delete("/credentials/{identifier}", response_model=CredentialDeleteResponse)
async def delete_credential(identifier: str, request: Request) -> dict[str, Any]:
    """Delete a credential by name (NoETL's id or name: here the name is the id); 404 when
    there is none."""
    async with request.app.state.pool.connection() as conn:
        row = await database.fetch_one(conn, "credential_delete", credential_name=identifier)
    if row is None:
        raise HTTPException(status_code=404, detail=f"credential '{identifier}' not found")
    return {"message": "Credential deleted successfully", "id": row["name"],
            "name": row["name"]}
