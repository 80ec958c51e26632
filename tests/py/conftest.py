"""Shared fixtures: a real PostgreSQL database per test session, migrated.

The server is chosen by `noetl_pg.testdb` (NOETL_TEST_DSN, else 127.0.0.1:5432, else an
embedded server); each session gets its own database, dropped at the end.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator

import pytest
from engine_harness import Engine

from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

# Python steps of these tests write their side effects into pytest's temporary directories
# (mode 0700, owned by the user running the suite), which the default executor user
# (noetl-exec, when the suite runs as root) cannot reach: here executors run as the suite's
# own user. The tests of executor isolation (test_pyexec_*.py) run with the defaults.
os.environ.setdefault("NOETL_EXECUTOR_USER", pwd.getpwuid(os.geteuid()).pw_name)


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """DSN of a migrated database shared by the whole session."""
    database = create_database()
    migrate(database)
    yield database
    drop_database(database)


@pytest.fixture
def fresh_dsn() -> Iterator[str]:
    """DSN of a migrated database of this test's own (for tests that count rows globally)."""
    database = create_database("noetl_fresh")
    migrate(database)
    yield database
    drop_database(database)


@pytest.fixture(scope="session")
def engine(dsn: str) -> Iterator[Engine]:
    """The session database with one in-process worker (4 slots) serving it."""
    harness = Engine(dsn)
    with harness.worker(slots=4):
        yield harness


@pytest.fixture
def fresh_engine(fresh_dsn: str) -> Engine:
    """A database of this test's own, with no worker: start one with `engine.worker()`."""
    return Engine(fresh_dsn)
