"""Every playbook in examples/tools/ runs end to end: a local HTTP server, the test
PostgreSQL database, DuckDB files in a temporary directory; never the Internet."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from engine_harness import REPO_ROOT, Engine
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from noetl_pg.credentials import DatabaseCredentialResolver, put_credential

TOOLS = REPO_ROOT / "examples" / "tools"


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    posted: list[dict] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, status: int, value: object) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._json(200, {"orders": 3, "path": self.path})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        ApiHandler.posted.append(body)
        self._json(201, {"stored": True})


@pytest.fixture(scope="module")
def api_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ApiHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_tool_example_is_covered() -> None:
    covered = {"http", "postgres", "duckdb", "python", "workbook", "playbook"}
    assert {p.name.removesuffix("_example.yaml") for p in TOOLS.glob("*_example.yaml")} \
        <= covered


def test_http_example(engine: Engine, api_base: str) -> None:
    row = engine.run(TOOLS / "http_example.yaml", {"api_base": api_base})
    assert row["status"] == "COMPLETED", row["error"]
    assert ApiHandler.posted[-1] == {
        "day": "2024-01-01", "fetched": {"orders": 3, "path": "/json?day=2024-01-01"}
    }


def test_postgres_example(fresh_engine: Engine) -> None:
    dsn = fresh_engine.dsn
    target = make_conninfo(**{k: v for k, v in conninfo_to_dict(dsn).items()
                              if k != "connect_timeout"})
    # A payload may name a credential, never pass connection fields (docs/security.md).
    put_credential(dsn, "pg_example_target", "postgres", {"dsn": target})
    with fresh_engine.worker(credentials=DatabaseCredentialResolver(dsn)):
        row = fresh_engine.run(TOOLS / "postgres_example.yaml",
                               {"pg_auth": "pg_example_target"})
    assert row["status"] == "COMPLETED", row["error"]
    assert float(row["result"]["rows"][0]["doubled"]) == 29.5


def test_duckdb_example(engine: Engine, tmp_path: Path) -> None:
    row = engine.run(TOOLS / "duckdb_example.yaml", {"work_dir": str(tmp_path)})
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["rows"] == [{"orders": 8, "total": 440}]
    assert list(tmp_path.glob("*.parquet"))


def test_python_example(engine: Engine) -> None:
    row = engine.run(TOOLS / "python_example.yaml")
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"count": 5, "max_scaled": 1.786}


def test_workbook_example(engine: Engine) -> None:
    row = engine.run(TOOLS / "workbook_example.yaml")
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == [{"name": "bob", "score": 50}, {"name": "alice", "score": 20}]


def test_playbook_example(engine: Engine) -> None:
    child = engine.register(TOOLS / "python_example.yaml")
    row = engine.run(TOOLS / "playbook_example.yaml", {"child_path": child})
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"counts": [3, 2, 1], "means": [2, 15, 7]}
