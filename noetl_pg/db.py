"""Database access: connections and the named queries of `sql/queries/*.sql`.

Python never assembles SQL: every statement lives in a file of `sql/queries/` (one file per
concern, `engine.sql` for the worker's hot path) under a `-- name: <name>` header and is run
by name; a name defined in two files is an error. On a broken connection psycopg raises
`psycopg.OperationalError`; callers that must survive it (the worker) reconnect.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from noetl_pg import settings
from noetl_pg.sqlfiles import sql_files, sql_root

_HEADER = re.compile(r"^-- name: (?P<name>\w+)\s*$", re.MULTILINE)


@cache
def _queries() -> dict[str, str]:
    named: dict[str, str] = {}
    origin: dict[str, str] = {}
    for path in sql_files("queries"):
        parts = _HEADER.split(path.read_text())
        # parts = [preamble, name1, body1, name2, body2, ...]
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in named:
                raise KeyError(f"query {name!r} is defined in {origin[name]} and {path.name}")
            statement = "\n".join(
                line for line in body.strip().splitlines() if not line.startswith("--")
            ).strip()
            named[name] = statement.rstrip(";")
            origin[name] = path.name
    return named


def query(name: str) -> str:
    """The SQL text of the named query; KeyError names the missing query."""
    try:
        return _queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {sql_root() / 'queries'}") from None


def connect(dsn: str, *, autocommit: bool = True) -> psycopg.Connection[dict[str, Any]]:
    """A connection returning rows as dicts (prepared statements after 2 uses, the default)."""
    return psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row)


def fetch_all(conn: psycopg.Connection[Any], name: str, **params: Any) -> list[dict[str, Any]]:
    return list(conn.execute(query(name), _adapt(params)).fetchall())


def fetch_one(conn: psycopg.Connection[Any], name: str, **params: Any) -> dict[str, Any] | None:
    row: dict[str, Any] | None = conn.execute(query(name), _adapt(params)).fetchone()
    return row


def _adapt(params: dict[str, Any]) -> dict[str, Any]:
    # dicts are JSON parameters; lists stay arrays (kinds text[]).
    return {key: Jsonb(value) if isinstance(value, dict) else value
            for key, value in params.items()}


def dsn_from_env() -> str | None:
    return settings.current().dsn
