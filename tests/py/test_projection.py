"""The projection of events into noetl.execution_state: live == rebuild, out-of-order
commits, no lock shared with the engine, projector takeover, and the cost of `noetl status`
on a long history."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from engine_harness import REPO_ROOT, Engine

from noetl_pg import db
from noetl_pg.projection import Projector

FANOUT_WITH_FAILURES = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: fanout_failures, path: test/fanout_failures}
workload: {shards: [0, 1, 2, 3, 4, 5, 6]}
workflow:
  - step: shards
    loop:
      in: "{{ workload.shards }}"
      iterator: n
      spec: {mode: parallel, max_in_flight: 3, loop_mode: fanout,
             fanout: {max_shard_retries: 1}, on_error: continue}
    tool:
      kind: python
      input: {n: "{{ n }}"}
      code: |
        if n % 3 == 0:
            raise ValueError(f"shard {n} always fails")
        result = {"n": n}
    next: {arcs: [{step: after}]}
  - step: after
    tool: {kind: noop}
"""

RETRY_THEN_SUCCEED = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: retry_then_succeed, path: test/retry_then_succeed}
workflow:
  - step: flaky
    tool:
      kind: python
      retry: {max_attempts: 3}
      input: {marker: "{{ workload.marker }}"}
      code: |
        import os
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        result = {"ok": True}
    next: {arcs: [{step: done}]}
  - step: done
    tool: {kind: noop}
"""

FAILING = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: failing, path: test/failing}
workflow:
  - step: first
    tool: {kind: noop}
    next: {arcs: [{step: broken}]}
  - step: broken
    tool: {kind: python, code: "raise ValueError('broken on purpose')"}
"""


@pytest.fixture(scope="module")
def projector(engine: Engine) -> Iterator[Projector]:
    running = Projector(engine.dsn, poll_interval=0.02)
    running.start()
    yield running
    running.stop()
    running.join(timeout=30)


def _projected(dsn: str, execution_id: int, timeout: float = 30) -> dict[str, Any]:
    """The execution's state once every one of its events is folded."""
    deadline = time.monotonic() + timeout
    with db.connect(dsn) as conn:
        while True:
            row = conn.execute(
                "select coalesce(st.state, '{}') as state, x.status,"
                " (select count(*) from noetl.event as e"
                " where e.execution_id = x.execution_id) as events"
                " from noetl.execution as x left join noetl.execution_state as st"
                " on x.execution_id = st.execution_id where x.execution_id = %s",
                (execution_id,),
            ).fetchone()
            assert row is not None
            if row["status"] != "RUNNING" and row["state"].get("events") == row["events"]:
                return dict(row["state"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_id} not projected: {row}")
            time.sleep(0.02)


def _rebuilt(dsn: str, execution_id: int) -> dict[str, Any]:
    with db.connect(dsn) as conn:
        row = conn.execute("select noetl.rebuild_execution_state(%s) as state",
                           (execution_id,)).fetchone()
    assert row is not None
    return dict(row["state"])


def _run(engine: Engine, source: str | Path, payload: dict[str, Any] | None = None) -> int:
    execution_id = engine.start(engine.register(source), payload)
    engine.wait(execution_id)
    return execution_id


def test_rebuild_equals_live(engine: Engine, projector: Projector, tmp_path: Path) -> None:
    runs = {
        "loop": _run(engine, REPO_ROOT / "examples" / "loop_parallel.yaml"),
        "fanout": _run(engine, FANOUT_WITH_FAILURES),
        "retry": _run(engine, RETRY_THEN_SUCCEED, {"marker": str(tmp_path / "marker")}),
        "failing": _run(engine, FAILING),
    }
    states = {name: _projected(engine.dsn, execution_id) for name, execution_id in runs.items()}
    for name, execution_id in runs.items():
        assert states[name] == _rebuilt(engine.dsn, execution_id), name

    loop = states["loop"]
    assert loop["status"] == "COMPLETED"
    assert {k: loop["loop"]["measure"][k] for k in ("total", "done", "failed", "completed")} \
        == {"total": 6, "done": 6, "failed": 0, "completed": True}
    assert loop["steps"]["measure"]["status"] == "done"
    assert loop["steps"]["summarize"]["status"] == "done"

    fanout = states["fanout"]
    assert fanout["fanout"]["shards"] == {
        "total_shards": 7, "done": 4, "failed": 3, "retries": 3, "status": "partial"
    }
    assert fanout["loop"]["shards"]["done"] == 4
    assert fanout["loop"]["shards"]["failed"] == 3
    assert fanout["steps"]["after"]["status"] == "done"

    retry = states["retry"]
    assert retry["status"] == "COMPLETED"
    assert retry["steps"]["flaky"]["status"] == "done"
    assert retry["steps"]["flaky"]["attempts"] == 2

    failing = states["failing"]
    assert failing["status"] == "FAILED"
    assert failing["failed_step"] == "broken"
    assert failing["steps"]["broken"]["status"] == "failed"
    assert "broken on purpose" in failing["steps"]["broken"]["error"]
    assert failing["steps"]["first"]["status"] == "done"


def test_refolding_is_idempotent(engine: Engine, projector: Projector) -> None:
    execution_id = _run(engine, REPO_ROOT / "examples" / "loop_parallel.yaml")
    live = _projected(engine.dsn, execution_id)
    with db.connect(engine.dsn) as conn:
        row = conn.execute(
            "select coalesce(("
            "  select noetl.fold_event(%s, row(e.event_id, e.tx_id, e.event_type, e.node_name,"
            "    e.command_id, e.loop_id, e.iter_index, e.attempt, e.meta, e.error,"
            "    e.created_at)::noetl.projection_event)"
            "  from noetl.event as e where e.execution_id = %s"
            "  order by e.tx_id desc, e.event_id desc limit 1), '{}') as refolded",
            (psycopg.types.json.Jsonb(live), execution_id),
        ).fetchone()
    assert row is not None and row["refolded"] == live


def _new_execution(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "with c as (insert into noetl.catalog (path, version, content, spec)"
        " values ('test/synthetic-' || gen_random_uuid(), 1, '', '{}') returning *)"
        " insert into noetl.execution (catalog_id, path, version)"
        " select catalog_id, path, version from c returning execution_id"
    ).fetchone()
    assert row is not None
    return int(row[0] if not isinstance(row, dict) else row["execution_id"])


def test_events_committed_out_of_order_are_all_folded(fresh_dsn: str) -> None:
    projector = Projector(fresh_dsn, owner="solo")
    with db.connect(fresh_dsn) as admin:
        execution_id = _new_execution(admin)
        projector.renew(admin)
        with psycopg.connect(fresh_dsn) as first, psycopg.connect(fresh_dsn) as second:
            event_a = first.execute(
                "select noetl.record_event(%s, 'command.issued', 'a', 1, 1, null, null,"
                " '{\"kind\": \"noop\"}')", (execution_id,)).fetchone()[0]
            event_b = second.execute(
                "select noetl.record_event(%s, 'command.issued', 'b', 2, 1, null, null,"
                " '{\"kind\": \"noop\"}')", (execution_id,)).fetchone()[0]
            assert event_a < event_b
            second.commit()
            projector.catch_up(admin)
            state = _state(admin, execution_id)
            # B is committed but A's transaction (older xid) is still open: B waits for it.
            assert "b" not in state.get("steps", {})
            first.commit()
        _fold_until(projector, admin,
                    lambda: _state(admin, execution_id).get("events") == 2)
        state = _state(admin, execution_id)
    assert set(state["steps"]) == {"a", "b"}
    assert state["last_event"]["id"] == event_b


def test_later_xid_committed_first_is_folded_after_the_older_one(fresh_dsn: str) -> None:
    """The same race with the checkpoint already past B when A commits (A holds the
    lower event_id but the higher xid): a bare event_id checkpoint would skip A."""
    projector = Projector(fresh_dsn, owner="solo")
    with db.connect(fresh_dsn) as admin:
        execution_id = _new_execution(admin)
        projector.renew(admin)
        with psycopg.connect(fresh_dsn) as first, psycopg.connect(fresh_dsn) as second:
            second.execute("select pg_current_xact_id()")  # second's xid is the older one
            event_a = first.execute(
                "select noetl.record_event(%s, 'command.issued', 'a', 1, 1, null, null,"
                " '{\"kind\": \"noop\"}')", (execution_id,)).fetchone()[0]
            event_b = second.execute(
                "select noetl.record_event(%s, 'command.issued', 'b', 2, 1, null, null,"
                " '{\"kind\": \"noop\"}')", (execution_id,)).fetchone()[0]
            assert event_a < event_b
            second.commit()
            _fold_until(projector, admin, lambda: "b" in _state(admin, execution_id)
                        .get("steps", {}))
            assert set(_state(admin, execution_id)["steps"]) == {"b"}
            first.commit()
        _fold_until(projector, admin, lambda: _state(admin, execution_id)["events"] == 2)
        state = _state(admin, execution_id)
    assert set(state["steps"]) == {"a", "b"}


def test_the_fold_neither_waits_for_nor_holds_the_engines_row(fresh_dsn: str) -> None:
    """The engine locks an execution's row for each whole transition; the state is in a
    table of its own, so a fold goes on while the engine holds the row, and the engine
    takes the row while a fold's transaction is open (lock_timeout: waiting fails)."""
    projector = Projector(fresh_dsn, owner="solo")
    with db.connect(fresh_dsn) as admin:
        execution_id = _new_execution(admin)
        _insert_synthetic(admin, [execution_id], 10)
        projector.renew(admin)
        admin.execute("set lock_timeout = '2s'")
        with psycopg.connect(fresh_dsn) as engine_tx:
            engine_tx.execute("select 1 from noetl.execution where execution_id = %s"
                              " for update", (execution_id,))
            _fold_until(projector, admin,
                        lambda: _state(admin, execution_id).get("events") == 10)

        _insert_synthetic(admin, [execution_id], 5)
        shard = execution_id % 16
        deadline = time.monotonic() + 20
        with psycopg.connect(fresh_dsn) as fold_tx, psycopg.connect(fresh_dsn) as engine_tx:
            while True:
                row = fold_tx.execute("select folded from noetl.project_shard(%s, 'solo')",
                                      (shard,)).fetchone()
                assert row is not None
                if row[0] == 5:
                    break
                fold_tx.rollback()  # an older transaction of the cluster is still running
                assert time.monotonic() < deadline, "the events were never folded"
                time.sleep(0.05)
            engine_tx.execute("set lock_timeout = '2s'")
            engine_tx.execute("select 1 from noetl.execution where execution_id = %s"
                              " for update", (execution_id,))
            engine_tx.execute("update noetl.execution set updated_at = now()"
                              " where execution_id = %s", (execution_id,))
            engine_tx.commit()
            fold_tx.commit()
        assert _state(admin, execution_id)["events"] == 15


def test_migration_0025_moves_the_states_out_of_the_execution_rows(fresh_dsn: str) -> None:
    """0025 run over a database from before it (execution.state put back): every non-empty
    state lands in execution_state, the column goes; run again, it changes nothing."""
    migration = (REPO_ROOT / "sql" / "migrations" / "0025_execution_state.sql").read_text()
    with db.connect(fresh_dsn) as conn:
        conn.execute("drop table noetl.execution_state")
        conn.execute("alter table noetl.execution add column state jsonb not null default '{}'")
        folded, empty = _new_execution(conn), _new_execution(conn)
        conn.execute("update noetl.execution set state = '{\"events\": 3}'"
                     " where execution_id = %s", (folded,))
        for _ in range(2):
            conn.execute(migration)
        states = conn.execute("select execution_id, state from noetl.execution_state"
                              " where execution_id in (%s, %s)", (folded, empty)).fetchall()
        column = conn.execute("select count(*) as n from information_schema.columns"
                              " where table_schema = 'noetl' and table_name = 'execution'"
                              " and column_name = 'state'").fetchone()
    assert states == [{"execution_id": folded, "state": {"events": 3}}]
    assert column == {"n": 0}


def _fold_until(projector: Projector, conn: psycopg.Connection[Any], done: Any,
                timeout: float = 20) -> None:
    """Fold rounds until `done()`. Events wait while any older transaction of the cluster
    (other databases too: xids are cluster-wide) is running, hence a deadline, not one round."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("projection did not get there")
        if projector.run_once(conn) == 0:
            time.sleep(0.02)


def _state(conn: psycopg.Connection[Any], execution_id: int) -> dict[str, Any]:
    row = conn.execute("select coalesce(st.state, '{}') as state from noetl.execution as x"
                       " left join noetl.execution_state as st"
                       " on x.execution_id = st.execution_id where x.execution_id = %s",
                       (execution_id,)).fetchone()
    assert row is not None
    return dict(row["state"])


def _insert_synthetic(conn: psycopg.Connection[Any], execution_ids: list[int],
                      per_execution: int) -> None:
    conn.execute(
        "insert into noetl.event (execution_id, event_type, node_name, command_id, attempt,"
        " meta)"
        " select x, 'command.issued', 's' || n, n, 1, '{\"kind\": \"noop\"}'"
        " from unnest(%s::bigint[]) as x, generate_series(1, %s) as n",
        (execution_ids, per_execution),
    )


def _projector_process(dsn: str, owner: str) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from noetl_pg.projection import Projector; "
        "Projector(sys.argv[1], owner=sys.argv[2], lease_seconds=1.5, "
        "poll_interval=0.02).run_forever()"
    )
    return subprocess.Popen([sys.executable, "-c", code, dsn, owner], cwd=REPO_ROOT)


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_killed_projector_shards_are_taken_over(fresh_dsn: str) -> None:
    with db.connect(fresh_dsn) as conn:
        execution_ids = [_new_execution(conn) for _ in range(20)]

        def owners() -> set[str | None]:
            return {row["owner"] for row in
                    conn.execute("select owner from noetl.projection_shard").fetchall()}

        def folded() -> bool:
            row = conn.execute(
                "select count(*) filter (where coalesce((st.state ->> 'events')::bigint, 0)"
                " <> (select count(*) from noetl.event as e"
                "     where e.execution_id = x.execution_id)) as behind"
                " from noetl.execution as x left join noetl.execution_state as st"
                " on x.execution_id = st.execution_id").fetchone()
            return row is not None and row["behind"] == 0

        first = _projector_process(fresh_dsn, "first")
        try:
            _wait_for(lambda: owners() == {"first"}, 15, "first projector holds every shard")
            _insert_synthetic(conn, execution_ids, 50)
            _wait_for(folded, 15, "first projector folds the first events")
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        _insert_synthetic(conn, execution_ids, 50)
        assert owners() == {"first"}  # leases still held by the dead projector

        second = _projector_process(fresh_dsn, "second")
        try:
            _wait_for(lambda: owners() == {"second"}, 15, "second projector takes over")
            _wait_for(folded, 15, "second projector catches up")
        finally:
            second.terminate()
            second.wait(timeout=15)
        for execution_id in execution_ids:
            state = _state(conn, execution_id)
            assert state["events"] == 100
            assert state == _rebuilt(fresh_dsn, execution_id)


def test_projectors_share_the_shards(fresh_dsn: str) -> None:
    one = Projector(fresh_dsn, owner="one")
    two = Projector(fresh_dsn, owner="two")
    with db.connect(fresh_dsn) as conn:
        assert len(one.renew(conn)) == 16
        assert two.renew(conn) == []  # nothing free yet
        assert len(one.renew(conn)) == 8  # two is live: one releases half
        assert len(two.renew(conn)) == 8
        assert set(one.shards).isdisjoint(two.shards)


def test_status_of_100k_events_reads_one_row(fresh_dsn: str) -> None:
    with db.connect(fresh_dsn) as conn:
        execution_id = _new_execution(conn)
        conn.execute(
            "insert into noetl.event (execution_id, event_type, node_name, command_id,"
            " attempt, meta, loop_id)"
            " values (%s, 'playbook.started', null, null, null, null, null),"
            " (%s, 'command.issued', 'big', 1, 1, '{\"kind\": \"loop\"}', null),"
            " (%s, 'loop.started', 'big', 1, 1, '{\"loop_id\": 7, \"collection_size\": 33333}',"
            " 7)",
            (execution_id, execution_id, execution_id),
        )
        projector = Projector(fresh_dsn, owner="bulk", batch_limit=10_000)
        projector.renew(conn)
        _fold_until(projector, conn, lambda: _state(conn, execution_id).get("events") == 3,
                    timeout=60)
        pages_with_three_events = _pages(_status_plan(conn, execution_id))
        conn.execute(
            "insert into noetl.event (execution_id, event_type, node_name, command_id,"
            " attempt, loop_id, iter_index)"
            " select %s, kind, 'big', 100 + i, 1, 7, i"
            " from generate_series(0, 33332) as i,"
            " unnest(array['command.issued', 'command.claimed', 'call.done']) as kind",
            (execution_id,),
        )
        total = conn.execute("select count(*) as n from noetl.event where execution_id = %s",
                             (execution_id,)).fetchone()["n"]
        assert total >= 100_000
        started = time.monotonic()
        _fold_until(projector, conn, lambda: _state(conn, execution_id).get("events") == total,
                    timeout=300)
        fold_seconds = time.monotonic() - started
        state = _state(conn, execution_id)
        assert state["loop"]["big"]["done"] == 33333

        timings = []
        for _ in range(50):
            began = time.perf_counter()
            row = db.fetch_one(conn, "execution_progress", execution_id=execution_id)
            timings.append((time.perf_counter() - began) * 1000)
            assert row is not None and row["state"]["events"] == total
        plan = _status_plan(conn, execution_id)
    median_ms = statistics.median(timings)
    print(f"\n100k events: folded in {fold_seconds:.1f}s; status median {median_ms:.2f} ms"
          f" (client round trip), {plan['Execution Time']:.3f} ms server execution time")
    # What it reads, not how long it takes (timings belong in bench/): the status query
    # never touches the event log and reads a handful of pages, however many events.
    assert not [node for node in _plan_nodes(plan["Plan"])
                if node.get("Relation Name") == "event"]
    assert _pages(plan) <= pages_with_three_events + 10, \
        f"status read {_pages(plan)} pages at 100k events, {pages_with_three_events} at 3"


def _pages(plan: dict[str, Any]) -> int:
    """Shared buffers the statement touched (its plan's root counts every node's)."""
    return int(plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0))


def _status_plan(conn: Any, execution_id: int) -> dict[str, Any]:
    for _warm in range(3):  # the first calls of a session also read the catalog
        db.fetch_one(conn, "execution_progress", execution_id=execution_id)
    row = conn.execute("explain (analyze, buffers, format json) "
                       + db.query("execution_progress"),
                       {"execution_id": execution_id}).fetchone()
    return dict(row["QUERY PLAN"][0])


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_status_cli_reads_the_projection(engine: Engine, projector: Projector,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from noetl_pg.cli import main

    execution_id = _run(engine, FANOUT_WITH_FAILURES)
    _projected(engine.dsn, execution_id)
    monkeypatch.setenv("NOETL_DSN", engine.dsn)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    shown = runner.invoke(main, ["status", str(execution_id)])
    assert shown.exit_code == 0, shown.output
    assert "4/7 (3 failed) fan-out partial, 3 shard retries" in shown.output
    assert "behind" in shown.output
    as_json = runner.invoke(main, ["status", str(execution_id), "--json", "--watch"])
    assert as_json.exit_code == 0, as_json.output
    assert '"total_shards": 7' in as_json.output
    listed = runner.invoke(main, ["executions", "--status", "COMPLETED", "--json"])
    assert listed.exit_code == 0 and f'"execution_id": {execution_id}' in listed.output


def test_long_chain_folded_in_one_catch_up_equals_rebuild(fresh_engine: Engine) -> None:
    """A 150-step chain folded by one catch-up after it ran: the batch folds steps against
    a small state and merges them every 64, and gives what folding one by one gives."""
    steps = 150
    lines = ["metadata: {name: long_chain, path: test/long_chain}", "workflow:"]
    for index in range(steps):
        lines.append(f"  - step: s{index}\n    tool: {{kind: noop}}")
        if index + 1 < steps:
            lines.append(f"    next: s{index + 1}")
    with fresh_engine.worker(slots=2):
        execution_id = _run(fresh_engine, "\n".join(lines) + "\n")
    assert "events" not in fresh_engine.sql(
        "select coalesce(st.state, '{}') as state from noetl.execution as x"
        " left join noetl.execution_state as st on x.execution_id = st.execution_id"
        " where x.execution_id = %s", execution_id)[0]["state"]
    projector = Projector(fresh_engine.dsn, owner="catch-up")
    with db.connect(fresh_engine.dsn) as conn:
        projector.catch_up(conn, timeout=120)
    live = _projected(fresh_engine.dsn, execution_id)
    assert live == _rebuilt(fresh_engine.dsn, execution_id)
    assert live["status"] == "COMPLETED"
    assert len(live["steps"]) == steps
    assert {step["status"] for step in live["steps"].values()} == {"done"}
    # Per step command.issued and call.done; the first step's claim is its own event
    # (taken from the queue), every later step is issued claimed by the finishing worker.
    assert live["events"] == steps * 2 + 1 + 2
