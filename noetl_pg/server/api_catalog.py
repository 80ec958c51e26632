"""Catalog endpoints: NoETL's POST /api/catalog/register, /list and /resource."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from noetl_pg import db
from noetl_pg.catalog import Registered, register_text
from noetl_pg.errors import NoetlError
from noetl_pg.server import database
from noetl_pg.server.auth import require
from noetl_pg.server.schemas import (
    CatalogEntries,
    CatalogEntriesRequest,
    CatalogEntry,
    CatalogEntryRequest,
    CatalogRegisterRequest,
    CatalogRegisterResponse,
)

router = APIRouter(prefix="/api", tags=["Catalog"])


def _register(dsn: str, content: str) -> Registered:
    # The same validation and SQL call as `noetl catalog register` (noetl_pg.catalog).
    with db.connection(dsn) as conn:
        return register_text(conn, content, source="api/catalog/register")


@router.post("/catalog/register", response_model=CatalogRegisterResponse,
             dependencies=[Depends(require("operator"))])
async def register_resource(body: CatalogRegisterRequest, request: Request) -> dict[str, Any]:
    """Validate and store a playbook as a new version (422 naming step and field if bad)."""
    try:
        registered = await run_in_threadpool(_register, request.app.state.dsn, body.content)
    except NoetlError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return {
        "status": "success",
        "message": f"Resource '{registered.path}' version '{registered.version}' registered.",
        "path": registered.path,
        "version": registered.version,
        "catalog_id": str(registered.catalog_id),
        "kind": "Playbook",
    }


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "catalog_id": str(row["catalog_id"]), "kind": "Playbook"}


@router.post("/catalog/list", response_model=CatalogEntries,
             dependencies=[Depends(require("reader"))])
async def list_resources(body: CatalogEntriesRequest, request: Request) -> dict[str, Any]:
    """Every registered playbook version (optionally of one path), newest first."""
    async with request.app.state.pool.connection() as conn:
        rows = await database.fetch_all(conn, "server_catalog_entries", path=body.path)
    return {"entries": [_entry(row) for row in rows]}


@router.post("/catalog/resource", response_model=CatalogEntry,
             dependencies=[Depends(require("reader"))])
async def get_resource(body: CatalogEntryRequest, request: Request) -> dict[str, Any]:
    """One version: by catalog_id, else by path and version (latest when absent)."""
    catalog_id = int(body.catalog_id) if body.catalog_id not in (None, "") else None
    version = None if body.version in (None, "latest") else int(body.version)
    async with request.app.state.pool.connection() as conn:
        row = await database.fetch_one(conn, "server_catalog_entry", catalog_id=catalog_id,
                                       path=body.path, version=version)
    if row is None:
        raise HTTPException(status_code=404, detail="Catalog entry not found")
    return _entry(row)
