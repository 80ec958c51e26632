"""The ASGI application: routers, the connection pool, error mapping and the console."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from noetl_pg import __version__, db
from noetl_pg.errors import DatabaseError, DatabaseUnavailable
from noetl_pg.server import (
    api_catalog,
    api_credentials,
    api_executions,
    api_ops,
    api_resume,
    api_schedules,
    metrics,
)
from noetl_pg.server.auth import TokenAuth
from noetl_pg.server.database import make_pool

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"

# SQLSTATE classes and codes the SQL API raises on purpose, and the HTTP status each means.
_SQLSTATE_HTTP = {
    "P0002": 404,  # no_data_found: unknown playbook, version or execution
    "22023": 422,  # invalid_parameter_value: bad payload, bad spec
    "22P02": 422,  # invalid_text_representation
    "23514": 422,  # check_violation: a value outside what the table accepts
    "54000": 413,  # program_limit_exceeded: payload over noetl.max_payload_bytes
    "40001": 409,  # serialization_failure
    "40P01": 409,  # deadlock_detected
}


def _sql_error_status(exc: DatabaseError) -> int:
    state = exc.sqlstate or ""
    if state in _SQLSTATE_HTTP:
        return _SQLSTATE_HTTP[state]
    if state.startswith("22"):  # data exception
        return 422
    return 500


def create_app(dsn: str, *, open_without_tokens: bool, pool_size: int = 10) -> FastAPI:
    """The app over database `dsn`; `open_without_tokens` lets requests in while no token
    exists (loopback servers only, see noetl_pg.server.auth)."""
    pool = make_pool(dsn, max_size=pool_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title="noetl-pg",
        version=__version__,
        description="NoETL's HTTP API over a PostgreSQL engine, plus metrics and a console.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI loads its code from a CDN; the console must not
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.dsn = dsn
    app.state.pool = pool
    app.state.auth = TokenAuth(pool, open_without_tokens=open_without_tokens)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI echoes the offending input by default; a credential body holds secrets,
        # so an error says where and what, never the value.
        errors = [{"loc": list(error.get("loc", ())), "msg": error.get("msg", ""),
                   "type": error.get("type", "")} for error in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(DatabaseError)
    async def sql_error(request: Request, exc: DatabaseError) -> JSONResponse:
        if isinstance(exc, DatabaseUnavailable):
            return JSONResponse({"detail": "database unavailable"}, status_code=503)
        status = _sql_error_status(exc)
        message = exc.message or type(exc).__name__
        if status == 500:
            log.error("%s %s: unexpected database error %s: %s", request.method,
                      request.url.path, exc.sqlstate, message)
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(psycopg.Error)
    async def driver_error(request: Request, exc: psycopg.Error) -> JSONResponse:
        # Raised by the pool itself (a connection that could not be had), not by a query.
        return await sql_error(request, db.database_error(exc))

    for module in (api_catalog, api_executions, api_credentials, api_ops, api_schedules,
                   metrics):
        app.include_router(module.router)
    # Resume and rerun exist only where their SQL functions do (read once, at start).
    if all(api_resume.optional_functions(dsn).values()):
        app.include_router(api_resume.router)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/console", StaticFiles(directory=STATIC_DIR, html=True), name="console")
    return app
