"""Apply `sql/migrations/*.sql` in order and (re)create `sql/functions/*.sql`.

The files come from the installed package or the checkout (noetl_pg/sqlfiles.py); finding
no migration file at all is an error, never "0 applied" over an empty schema.

Each migration is applied once, recorded in `noetl.schema_migrations` with its SHA-256, in
its own transaction. Everything runs under one advisory lock, so two migrators started at
once apply each file once: the second waits, then finds nothing left to do. A recorded
migration whose file changed is an error (migrations are append-only).

Function files are reloaded only when they changed: their digest is recorded in
`noetl.schema_functions`, so `schema_status` can tell in one short query whether a database
is up to date, and commands that only read need not re-create 60 functions each time.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field

import psycopg

from noetl_pg import db
from noetl_pg.comments import apply_comments, described_objects
from noetl_pg.sqlfiles import sql_files, sql_root, stem

# Any fixed 64-bit key works; this one is "noetl-migrate" hashed once, kept constant.
MIGRATION_LOCK_KEY = 7_284_102_663_912_001


class MigrationError(RuntimeError):
    """A recorded migration no longer matches its file, or a file failed to apply."""


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class SchemaBehind(MigrationError):
    """The database schema is older than this noetl-pg (or missing): run `noetl db migrate`."""


@dataclass(frozen=True)
class SchemaStatus:
    """How a database compares with the SQL files of this installation."""

    missing: bool
    pending: list[str] = field(default_factory=list)
    functions_current: bool = False
    # Applied migrations this installation has no file for: the database is newer.
    unknown: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.missing and not self.pending and self.functions_current


def functions_digest() -> str:
    """SHA-256 over the names and texts of the function and migration files: the comments
    applied with the functions come from both."""
    digest = hashlib.sha256()
    for path in sql_files("migrations"):
        digest.update(path.name.encode() + b"\0")
    for path in sql_files("functions"):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def schema_status(dsn: str) -> SchemaStatus:
    """Compare the database with the files: two cheap reads, no lock, nothing written."""
    with db.connection(dsn) as conn:
        present = db.fetch_one(conn, "schema_tables_present")
        assert present is not None
        if not present["migrations"]:
            return SchemaStatus(missing=True, pending=[stem(p) for p in sql_files("migrations")])
        recorded = {row["version"] for row in db.fetch_all(conn, "schema_migrations_applied")}
        loaded = db.fetch_one(conn, "schema_functions_digest") if present["functions"] else None
    files = {stem(path) for path in sql_files("migrations")}
    pending = sorted(files - recorded)
    return SchemaStatus(missing=False, pending=pending, unknown=sorted(recorded - files),
                        functions_current=loaded is not None
                        and loaded["digest"] == functions_digest())


def ensure_schema(dsn: str, *, migrate_if_behind: bool,
                  reload_other_functions: bool = False) -> SchemaStatus:
    """Check the schema; when behind, migrate it (`migrate_if_behind`) or raise SchemaBehind.

    A database with migrations this installation does not have is newer: always refused,
    so an old worker never replaces newer functions. Function files that merely differ
    (no migration pending) are reloaded only with `reload_other_functions` (the embedded
    server, whose schema belongs to this installation)."""
    status = schema_status(dsn)
    if status.up_to_date:
        return status
    if status.unknown:
        raise SchemaBehind(
            f"the database schema is newer than this noetl-pg (migrations "
            f"{', '.join(status.unknown)} unknown here): upgrade noetl-pg")
    behind = status.missing or bool(status.pending)
    if not migrate_if_behind or not (behind or reload_other_functions):
        what = ("has no noetl schema" if status.missing else
                f"has pending migrations ({', '.join(status.pending)})" if status.pending else
                "has SQL functions from another noetl-pg version")
        raise SchemaBehind(f"the database {what}: run `noetl db migrate`")
    migrate(dsn)
    return schema_status(dsn)


def migrate(dsn: str, *, reload_functions: bool = False) -> list[str]:
    """Bring the database at `dsn` up to date; return the migrations applied now.

    Function files are re-created when a migration was applied, when their digest differs
    from the recorded one, or when `reload_functions` is set (`noetl db migrate`)."""
    applied_now: list[str] = []
    migrations = sql_files("migrations")
    if not migrations:
        raise MigrationError(
            f"no migration files in {sql_root() / 'migrations'}: the installation is "
            "incomplete (reinstall noetl-pg); nothing was changed"
        )
    with db.connect(dsn, application_name="noetl migrate") as conn:
        db.fetch_one(conn, "migration_lock", lock_key=MIGRATION_LOCK_KEY)
        try:
            db.execute(conn, "schema_bootstrap")
            recorded = {row["version"]: row["checksum"]
                        for row in db.fetch_all(conn, "schema_migrations_applied")}
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
                with db.transaction(conn):
                    try:
                        conn.execute(text)
                    except psycopg.Error as exc:
                        raise MigrationError(f"migration {path.name} failed: {exc}") from exc
                    db.execute(conn, "schema_migration_record", version=version,
                               checksum=_checksum(text))
                applied_now.append(version)
            digest = functions_digest()
            loaded = db.fetch_one(conn, "schema_functions_digest")
            if applied_now or reload_functions or loaded is None or loaded["digest"] != digest:
                _load_functions(conn, digest)
        finally:
            db.fetch_one(conn, "migration_unlock", lock_key=MIGRATION_LOCK_KEY)
    return applied_now


def _load_functions(conn: db.Connection, digest: str) -> None:
    """Re-create every function file in one transaction, describe every function, table and
    view from its header comment (noetl_pg/comments.py), and record the files' digest."""
    with db.transaction(conn):
        # Function bodies may call functions from files loaded later.
        db.execute(conn, "functions_defer_body_checks")
        for path in sql_files("functions"):
            try:
                conn.execute(path.read_text())
            except psycopg.Error as exc:
                raise MigrationError(f"functions file {path.name} failed: {exc}") from exc
        apply_comments(conn, described_objects())
        db.execute(conn, "schema_functions_record", digest=digest)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m noetl_pg.migrate DSN", file=sys.stderr)
        return 2
    try:
        applied = migrate(argv[0], reload_functions=True)
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for version in applied:
        print(f"applied {version}")
    print(f"{len(applied)} migration(s) applied; functions reloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
