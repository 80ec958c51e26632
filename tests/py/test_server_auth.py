"""Bearer tokens and roles on a real server; tokens made by `noetl server token add`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import psycopg
import pytest
from server_harness import Server, noetl

from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: auth_check, path: tests/auth/hello}
workflow:
  - step: only
    tool: {kind: noop}
"""


@pytest.fixture(scope="module")
def auth_dsn() -> Iterator[str]:
    database = create_database("noetl_server_auth")
    migrate(database)
    yield database
    drop_database(database)


@pytest.fixture(scope="module")
def server(auth_dsn: str) -> Iterator[Server]:
    running = Server(auth_dsn, worker_slots=1)
    yield running
    running.stop()


def add_token(dsn: str, name: str, role: str) -> str:
    result = noetl(dsn, "server", "token", "add", name, "--role", role)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("noetl_") and len(token) > 40
    return token


def test_roles_and_tokens(server: Server, auth_dsn: str) -> None:
    # No token exists yet and the server is on 127.0.0.1: open, as documented.
    with server.client() as anonymous:
        assert anonymous.post("/api/catalog/register",
                              json={"content": PLAYBOOK}).status_code == 200

    reader = add_token(auth_dsn, "dashboards", "reader")
    operator = add_token(auth_dsn, "scheduler", "operator")
    admin = add_token(auth_dsn, "ops", "admin")

    with server.client() as anonymous, server.client("noetl_wrong") as wrong:
        for client in (anonymous, wrong):
            response = client.get("/api/executions")
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert client.post("/api/execute", json={"path": "tests/auth/hello"}) \
                .status_code == 401
        assert anonymous.get("/api/health").status_code == 200  # probes need no token

    assert noetl(auth_dsn, "credential", "add", "doomed", "--type", "generic",
                 "--data", '{"note": "public"}').returncode == 0
    with server.client() as anonymous:
        assert anonymous.delete("/api/credentials/doomed").status_code == 401
    with server.client(reader) as client:
        assert client.get("/api/executions").status_code == 200
        assert client.get("/metrics").status_code == 200
        refused = client.post("/api/execute", json={"path": "tests/auth/hello"})
        assert refused.status_code == 403 and "reader" in refused.json()["detail"]
        assert client.get("/api/credentials").status_code == 403
        assert client.delete("/api/credentials/doomed").status_code == 403
        assert client.get("/api/schedules").json() == []
        assert client.post("/api/schedules", json={"path": "tests/auth/hello",
                                                   "cron": "0 6 * * *"}).status_code == 403

    with server.client(operator) as client:
        started = client.post("/api/execute", json={"path": "tests/auth/hello"})
        assert started.status_code == 200
        scheduled = client.post("/api/schedules", json={"path": "tests/auth/hello",
                                                        "cron": "0 6 * * *"})
        assert scheduled.status_code == 200
        assert client.delete(f"/api/schedules/{scheduled.json()['schedule_id']}") \
            .status_code == 200
        assert client.get("/api/credentials").status_code == 403
        assert client.delete("/api/credentials/doomed").status_code == 403
    with psycopg.connect(auth_dsn) as conn:  # refused deletes deleted nothing
        assert conn.execute("select count(*) from noetl.credential").fetchone()[0] == 1
    with server.client(admin) as client:
        assert client.get("/api/credentials").status_code == 200
        assert client.delete("/api/credentials/doomed").json()["name"] == "doomed"

    with psycopg.connect(auth_dsn) as conn:
        rows = conn.execute("select name, role, token_sha256 from noetl.api_token "
                            "order by name").fetchall()
        stored_text = conn.execute("select string_agg(t::text, ' ') from noetl.api_token "
                                   "as t").fetchone()[0]
        executions = conn.execute("select count(*) from noetl.execution").fetchone()[0]
    assert [(name, role) for name, role, _ in rows] == [
        ("dashboards", "reader"), ("ops", "admin"), ("scheduler", "operator")]
    assert bytes(rows[0][2]) == hashlib.sha256(reader.encode()).digest()
    for token in (reader, operator, admin):
        assert token not in stored_text
    assert executions == 1  # only the operator's start went through

    assert noetl(auth_dsn, "server", "token", "revoke", "scheduler").returncode == 0
    with server.client(operator) as client:
        assert client.get("/api/executions").status_code == 401
    listed = noetl(auth_dsn, "server", "token", "list")
    assert "scheduler" in listed.stdout and operator not in listed.stdout


def test_refuses_public_bind_without_tokens() -> None:
    database = create_database("noetl_server_bind")
    try:
        migrate(database)
        result = noetl(database, "server", "--host", "0.0.0.0", "--port", "1", timeout=60)
        assert result.returncode == 2
        assert "refusing to serve on 0.0.0.0 without authentication" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        drop_database(database)


def test_unknown_role_is_refused(auth_dsn: str) -> None:
    result = noetl(auth_dsn, "server", "token", "add", "x", "--role", "root")
    assert result.returncode == 2 and "root" in result.stderr
    with psycopg.connect(auth_dsn) as conn:
        assert conn.execute("select count(*) from noetl.api_token where name = 'x'") \
            .fetchone()[0] == 0
