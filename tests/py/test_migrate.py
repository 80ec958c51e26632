"""Migrations: applied once each, safe with concurrent migrators, append-only."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from noetl_pg.migrate import MigrationError, migrate, sql_files
from noetl_pg.testdb import create_database, drop_database


@pytest.fixture
def empty_dsn() -> Iterator[str]:
    database = create_database("noetl_migrate")
    yield database
    drop_database(database)


def test_concurrent_migrators_apply_each_file_once(empty_dsn: str) -> None:
    applied: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        try:
            applied.append(migrate(empty_dsn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    expected = [path.stem for path in sql_files("migrations")]
    assert sorted(name for batch in applied for name in batch) == expected
    assert sorted(len(batch) for batch in applied) == [0, 0, 0, len(expected)]
    with psycopg.connect(empty_dsn) as conn:
        recorded = [row[0] for row in conn.execute(
            "select version from noetl.schema_migrations order by version")]
    assert recorded == expected
    assert migrate(empty_dsn) == []


def test_an_applied_migration_that_changed_is_refused(empty_dsn: str) -> None:
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("update noetl.schema_migrations set checksum = 'edited' "
                     "where version = '0001_core'")
    with pytest.raises(MigrationError, match=r"0001_core\.sql changed after it was applied"):
        migrate(empty_dsn)
