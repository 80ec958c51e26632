"""Apply `sql/migrations/*.sql` in order and (re)create `sql/functions/*.sql`.

The files come from the installed package or the checkout (noetl_pg/sqlfiles.py); finding
no migration file at all is an error, never "0 applied" over an empty schema.

Each migration is applied once, recorded in `noetl.schema_migrations` with its SHA-256, in
its own transaction. Everything runs under one advisory lock, so two migrators started at
once apply each file once: the second waits, then finds nothing left to do. A recorded
migration whose file changed is an error (migrations are append-only).
"""

from __future__ import annotations

import hashlib
import sys

import psycopg

from noetl_pg.sqlfiles import sql_files, sql_root, stem

# Any fixed 64-bit key works; this one is "noetl-migrate" hashed once, kept constant.
MIGRATION_LOCK_KEY = 7_284_102_663_912_001

BOOTSTRAP = """
create schema if not exists noetl;
create table if not exists noetl.schema_migrations (
    version text primary key,
    checksum text not null,
    applied_at timestamptz not null default now()
);
"""


class MigrationError(RuntimeError):
    """A recorded migration no longer matches its file, or a file failed to apply."""


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def migrate(dsn: str) -> list[str]:
    """Bring the database at `dsn` up to date; return the migrations applied now."""
    applied_now: list[str] = []
    migrations = sql_files("migrations")
    if not migrations:
        raise MigrationError(
            f"no migration files in {sql_root() / 'migrations'}: the installation is "
            "incomplete (reinstall noetl-pg); nothing was changed"
        )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(BOOTSTRAP)
            recorded = dict(
                conn.execute("select version, checksum from noetl.schema_migrations").fetchall()
            )
            for path in migrations:
                text = path.read_text()
                version = stem(path)
                if version in recorded:
                    if recorded[version] != _checksum(text):
                        raise MigrationError(
                            f"migration {path.name} changed after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    try:
                        conn.execute(text)
                    except psycopg.Error as exc:
                        raise MigrationError(f"migration {path.name} failed: {exc}") from exc
                    conn.execute(
                        "insert into noetl.schema_migrations (version, checksum) values (%s, %s)",
                        (version, _checksum(text)),
                    )
                applied_now.append(version)
            with conn.transaction():
                # Function bodies may call functions from files loaded later.
                conn.execute("set local check_function_bodies = off")
                for path in sql_files("functions"):
                    try:
                        conn.execute(path.read_text())
                    except psycopg.Error as exc:
                        raise MigrationError(f"functions file {path.name} failed: {exc}") from exc
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m noetl_pg.migrate DSN", file=sys.stderr)
        return 2
    try:
        applied = migrate(argv[0])
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for version in applied:
        print(f"applied {version}")
    print(f"{len(applied)} migration(s) applied; functions reloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
