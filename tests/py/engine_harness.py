"""A small harness for end-to-end tests: register playbooks, run them with real workers.

Tests share one migrated database per session; each registration gets a unique catalog
path, so tests never see each other's playbooks or executions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from noetl_pg import db
from noetl_pg.catalog import register_text
from noetl_pg.runtime import wait_for_execution
from noetl_pg.worker import Worker

REPO_ROOT = Path(__file__).resolve().parents[2]


class Engine:
    """Drives one database: registration, starts, waits and event reads."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def register(self, source: str | Path, *, path: str | None = None) -> str:
        """Register YAML text or a file under a unique path (or `path`); returns the path."""
        text = Path(source).read_text() if isinstance(source, Path) else source
        document = yaml.safe_load(text)
        base = (document.get("metadata") or {}).get("path") or "test/playbook"
        unique_path = path or f"{base}-{uuid.uuid4().hex[:8]}"
        document.setdefault("metadata", {})["path"] = unique_path
        with db.connect(self.dsn) as conn:
            register_text(conn, yaml.safe_dump(document, sort_keys=False), source=unique_path)
        return unique_path

    def start(self, path: str, payload: dict[str, Any] | None = None) -> int:
        with db.connect(self.dsn) as conn:
            row = db.fetch_one(conn, "start_execution", path=path, payload=payload or {},
                               version=None)
        assert row is not None
        return int(row["execution_id"])

    def wait(self, execution_id: int, timeout: float = 60) -> dict[str, Any]:
        return wait_for_execution(self.dsn, execution_id, timeout=timeout, poll=0.02)

    def run(self, source: str | Path, payload: dict[str, Any] | None = None,
            timeout: float = 60) -> dict[str, Any]:
        """Register, start and wait (a worker must be running, e.g. `with engine.worker()`)."""
        return self.wait(self.start(self.register(source), payload), timeout)

    def events(self, execution_id: int) -> list[dict[str, Any]]:
        with db.connect(self.dsn) as conn:
            return db.fetch_all(conn, "execution_events", execution_id=execution_id)

    def sql(self, statement: str, *params: Any) -> list[dict[str, Any]]:
        """Run ad-hoc SQL in a test (assertions only; engine code uses named queries)."""
        with db.connect(self.dsn) as conn:
            cursor = conn.execute(statement, params or None)
            return list(cursor.fetchall()) if cursor.description else []

    @contextmanager
    def worker(self, **options: Any) -> Iterator[Worker]:
        """An in-process worker for the duration of the block."""
        options.setdefault("poll_interval", 0.2)
        worker = Worker(self.dsn, **options)
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()
            worker.join(timeout=30)
