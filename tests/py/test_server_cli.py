"""The CLI's verbs sent to a real server with --server / NOETL_SERVER_URL / --host --port."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from server_harness import REPO_ROOT, Server, noetl, noetl_env

from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

SLOW = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: slow, path: tests/cli/slow}
workflow:
  - step: wait
    tool: {kind: python, code: "import time\\ntime.sleep(60)\\nresult = {}"}
"""


@pytest.fixture(scope="module")
def cli_dsn() -> Iterator[str]:
    database = create_database("noetl_server_cli")
    migrate(database)
    yield database
    drop_database(database)


@pytest.fixture(scope="module")
def server(cli_dsn: str) -> Iterator[Server]:
    running = Server(cli_dsn, worker_slots=2)
    yield running
    running.stop()


def rows(dsn: str, statement: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(statement).fetchall()


def test_cli_verbs_over_http(server: Server, cli_dsn: str, tmp_path) -> None:
    # The database the CLI would use otherwise does not exist: every verb must go over HTTP.
    remote_env = noetl_env("host=127.0.0.1 port=1 dbname=none connect_timeout=1",
                           NOETL_SERVER_URL=server.url)
    registered = noetl(cli_dsn, "catalog", "register", "examples/branching.yaml",
                       env=remote_env)
    assert registered.returncode == 0, registered.stderr
    assert "registered examples/branching version 1" in registered.stdout

    started = noetl(cli_dsn, "start", "catalog://examples/branching", "--set", "amount=5",
                    env=remote_env)
    assert started.returncode == 0, started.stderr
    execution_id = int(started.stdout.strip())
    status = noetl(cli_dsn, "status", str(execution_id), "--watch", "--json", env=remote_env)
    assert json.loads(status.stdout)["completed"] is True
    assert rows(cli_dsn, f"select status, result from noetl.execution "
                         f"where execution_id = {execution_id}") == [
        ("COMPLETED", {"handled": "small"})]

    # NoETL's spelling: --host/--port and exec -r distributed with a file.
    run = noetl(cli_dsn, "--host", "127.0.0.1", "--port", str(server.port), "exec",
                str(REPO_ROOT / "examples" / "loop_parallel.yaml"), "-r", "distributed",
                "--json", env=noetl_env("host=127.0.0.1 port=1 dbname=none"))
    assert run.returncode == 0, run.stderr
    final = json.loads(run.stdout)
    assert final["completed"] is True and final["completed_steps"] == ["measure", "summarize"]

    slow = tmp_path / "slow.yaml"
    slow.write_text(SLOW)
    slow_id = noetl(cli_dsn, "start", str(slow), env=remote_env).stdout.strip()
    cancelled = noetl(cli_dsn, "cancel", slow_id, "--reason", "cli test", env=remote_env)
    assert "Cancelled 1 execution(s)" in cancelled.stdout
    assert rows(cli_dsn, f"select status, error from noetl.execution "
                         f"where execution_id = {slow_id}") == [("CANCELLED", "cli test")]

    listed = noetl(cli_dsn, "catalog", "list", env=remote_env)
    for path in ("examples/branching", "examples/loop_parallel", "tests/cli/slow"):
        assert path in listed.stdout
    local_only = noetl(cli_dsn, "run", "examples/hello_world.yaml", "-r", "local",
                       env=remote_env)
    assert local_only.returncode == 2 and "use -r distributed" in local_only.stderr
