"""Async access to the named queries for the server (a connection pool per app).

The statements are the ones `noetl_pg.db` loads from `sql/queries/`; this module only runs
them on psycopg's async pool so one slow request does not hold the event loop.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from noetl_pg import db


def make_pool(dsn: str, *, max_size: int = 10) -> AsyncConnectionPool:
    """A pool of autocommit connections returning dict rows (opened by the app's lifespan)."""
    return AsyncConnectionPool(
        dsn,
        min_size=2,
        max_size=max_size,
        kwargs={"autocommit": True, "row_factory": dict_row},
        open=False,
        name="noetl-server",
    )


def _params(params: dict[str, Any]) -> dict[str, Any]:
    # dicts travel as jsonb; lists stay arrays (as in noetl_pg.db).
    return {key: Jsonb(value) if isinstance(value, dict) else value
            for key, value in params.items()}


async def fetch_all(conn: AsyncConnection[Any], name: str, **params: Any) -> list[dict[str, Any]]:
    """Run the named query; its rows. Driver errors mapped by noetl_pg.db.database_error."""
    try:
        cursor = await conn.execute(db.query(name), _params(params))
        return list(await cursor.fetchall())
    except psycopg.Error as exc:
        raise db.database_error(exc, name) from exc


async def fetch_one(conn: AsyncConnection[Any], name: str, **params: Any) -> dict[str, Any] | None:
    """Run the named query; its first row or None. Errors as `fetch_all`."""
    try:
        cursor = await conn.execute(db.query(name), _params(params))
        row: dict[str, Any] | None = await cursor.fetchone()
    except psycopg.Error as exc:
        raise db.database_error(exc, name) from exc
    return row
