"""Cursor loops (`loop.cursor`, NoETL's CursorSpec): slots claim rows from a table of the
playbook's own database until the claim returns nothing; every claimed row runs the step's
tool once; the loop closes once, when every slot has drained. The claim tables live in
the test's own database (credential `cursor_db`, given to the worker); each test uses
tables named after itself.
"""

from __future__ import annotations

import collections
import importlib.util
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_harness import REPO_ROOT, Engine
from psycopg.conninfo import conninfo_to_dict
from worker_procs import Workers, wait_until

from noetl_pg.credentials import MappingCredentialResolver, put_credential
from noetl_pg.dsl import load_playbook
from noetl_pg.errors import PlaybookError


def _credentials(dsn: str) -> MappingCredentialResolver:
    return MappingCredentialResolver({"cursor_db": {"dsn": dsn}})


@pytest.fixture
def cursor_engine(fresh_engine: Engine) -> Iterator[Engine]:
    """A database of the test's own served by one in-process worker (4 slots) that knows
    credential `cursor_db` (that same database)."""
    with fresh_engine.worker(slots=4, credentials=_credentials(fresh_engine.dsn)):
        yield fresh_engine


def _queue(engine: Engine, name: str, rows: int) -> None:
    engine.sql(f"create table {name} (id int primary key, status text not null "
               "default 'pending', claims int not null default 0)")
    engine.sql(f"insert into {name} (id) select g from generate_series(1, %s) g", rows)


def _claim(table: str, batch: int) -> str:
    return f"""
          with c as (select id from {table} where status = 'pending'
                     order by id limit {batch} for update skip locked)
          update {table} q set status = 'claimed', claims = q.claims + 1
          from c where q.id = c.id
          returning q.id"""


def _playbook(table: str, *, batch: int, slots: int, tool: str, extra: str = "") -> str:
    claim = _claim(table, batch).replace("\n", "\n    ")
    return f"""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: cursor_test, path: test/cursor_{table}}}
workflow:
  - step: drain
    loop:
      cursor:
        kind: postgres
        auth: cursor_db
        claim: |{claim}
      iterator: row
      spec: {{mode: cursor, max_in_flight: {slots}{extra}}}
    tool:
{tool}
    next: [{{step: after}}]
  - step: after
    tool: {{kind: python, input: {{stats: "{{{{ drain.stats }}}}"}}, code: "result = stats"}}
"""


PYTHON_ROW = """      kind: python
      input: {id: "{{ row.id }}", index: "{{ iter._index }}"}
      code: |
        result = {"id": id, "square": id * id, "index": index}"""


def _events(engine: Engine, execution_id: int, event_type: str) -> list[dict[str, Any]]:
    return engine.sql("select node_name, iter_index, attempt, meta, error from noetl.event "
                      "where execution_id = %s and event_type = %s order by event_id",
                      execution_id, event_type)


def test_cursor_loop_runs_every_claimed_row_once(cursor_engine: Engine) -> None:
    """57 rows, batches of 5, 3 slots: 57 results (one per row, in claim order), stats
    57/57, one loop.done, the next step once; every queue row claimed exactly once."""
    engine = cursor_engine
    _queue(engine, "q_basic", 57)
    row = engine.run(_playbook("q_basic", batch=5, slots=3, tool=PYTHON_ROW))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"total": 57, "success": 57, "failed": 0}
    execution_id = row["execution_id"]
    loop_result = engine.sql("select result from noetl.step_result where execution_id = %s "
                             "and step_name = 'drain'", execution_id)[0]["result"]
    results = loop_result["results"]
    assert sorted(r["id"] for r in results) == list(range(1, 58))
    assert [r["index"] for r in results] == list(range(57)), "results in claim order"
    assert all(r["square"] == r["id"] ** 2 for r in results)
    assert len(_events(engine, execution_id, "loop.done")) == 1
    done = collections.Counter(e["iter_index"] for e in _events(engine, execution_id,
                                                                "call.done")
                               if e["node_name"] == "drain" and e["iter_index"] is not None)
    assert sorted(done) == list(range(57)) and set(done.values()) == {1}
    claimed = _events(engine, execution_id, "cursor.claimed")
    assert sum(e["meta"]["new"] for e in claimed) == 57
    assert max(e["meta"]["rows"] for e in claimed) == 5, "claims of at most a batch"
    drained = _events(engine, execution_id, "cursor.drained")
    assert sorted(e["meta"]["slot"] for e in drained) == [0, 1, 2]
    claims = engine.sql("select count(*) as n, max(claims) as most from q_basic "
                        "where status = 'claimed'")[0]
    assert claims == {"n": 57, "most": 1}
    # The `after` step ran once and saw the loop's stats.
    assert len(engine.sql("select 1 from noetl.command where execution_id = %s "
                          "and step_name = 'after'", execution_id)) == 1


def test_cursor_loop_with_nothing_to_claim_closes(cursor_engine: Engine) -> None:
    """An empty queue: every slot drains at once, the loop closes with no results."""
    engine = cursor_engine
    _queue(engine, "q_empty", 0)
    row = engine.run(_playbook("q_empty", batch=5, slots=4, tool=PYTHON_ROW))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"total": 0, "success": 0, "failed": 0}


def test_cursor_loop_row_failures_follow_on_error(cursor_engine: Engine) -> None:
    """Rows whose tool fails are failed items: with on_error continue the loop completes
    with them in its stats; with the default (fail) the step fails naming them."""
    engine = cursor_engine
    failing = """      kind: python
      input: {id: "{{ row.id }}"}
      code: |
        assert id % 10 != 0, f"row {id} refused"
        result = {"id": id}"""
    _queue(engine, "q_cont", 30)
    row = engine.run(_playbook("q_cont", batch=4, slots=2, tool=failing,
                               extra=", on_error: continue"))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"total": 30, "success": 27, "failed": 3}

    _queue(engine, "q_fail", 30)
    row = engine.run(_playbook("q_fail", batch=4, slots=2, tool=failing))
    assert row["status"] == "FAILED"
    assert "3/30 iterations failed" in row["error"] and "row 10 refused" in row["error"]


def test_cursor_claim_error_fails_the_step(cursor_engine: Engine) -> None:
    """A claim statement that raises: the step fails with the server's message."""
    engine = cursor_engine
    row = engine.run(_playbook("q_missing", batch=4, slots=2, tool=PYTHON_ROW))
    assert row["status"] == "FAILED"
    assert "cursor claim failed" in row["error"] and "q_missing" in row["error"]


def test_cursor_row_seen_again_is_not_run_twice(cursor_engine: Engine) -> None:
    """A claim that returns rows the loop already holds (as after a worker died between
    the engine's commit and the claim's): those rows are skipped by their key, the new ones
    run. This claim marks nothing; it returns a window of 4 ids that starts 2 below the
    highest id done, so every claim after the first returns 2 rows seen before."""
    engine = cursor_engine
    engine.sql("create table q_again (id int primary key)")
    engine.sql("insert into q_again select g from generate_series(1, 12) g")
    engine.sql("create table q_again_done (id int)")
    claim = """select id from q_again
          where id > (select coalesce(max(id), 0) from q_again_done) - 2
            and (select coalesce(max(id), 0) from q_again_done) < 12
          order by id limit 4"""
    text = _playbook("q_again", batch=4, slots=1, tool="""      kind: postgres
      auth: cursor_db
      command: "insert into q_again_done values ({{ row.id }})\"""")
    text = text.replace(_claim("q_again", 4).replace("\n", "\n    "), "\n          " + claim)
    row = engine.run(text)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["total"] == 12
    done = [r["id"] for r in engine.sql("select id from q_again_done order by id")]
    assert done == list(range(1, 13)), "each row's tool ran once, though claimed twice"
    claimed = _events(engine, row["execution_id"], "cursor.claimed")
    assert [(e["meta"]["rows"], e["meta"]["new"]) for e in claimed] == \
        [(4, 4)] + [(4, 2)] * 4


def test_cursor_loop_keys_dsl() -> None:
    """The DSL takes NoETL's CursorSpec and refuses, naming the step, what it does not run."""
    text = _playbook("q_dsl", batch=1, slots=2, tool=PYTHON_ROW)
    playbook = load_playbook(text)
    loop = playbook.workflow[0].loop
    assert loop is not None and loop.cursor is not None and loop.in_ is None
    assert loop.spec.mode == "cursor" and loop.in_flight_bound == 2
    assert playbook.to_spec()["workflow"][0]["loop"]["cursor"]["auth"] == "cursor_db"
    # Without spec.mode a cursor loop is still one.
    assert load_playbook(text.replace("mode: cursor, ", "")).workflow[0].loop.spec.mode \
        == "cursor"

    bad = {
        "offered again by the engine": text.replace(
            "        auth: cursor_db\n",
            "        auth: cursor_db\n        options: {reclaim_after: 300}\n"),
        "`in` or `cursor`, not both": text.replace(
            "      iterator: row", "      in: \"{{ [1] }}\"\n      iterator: row"),
        "runs in mode 'cursor'": text.replace("mode: cursor", "mode: parallel"),
        "not supported (supported: postgres)": text.replace("kind: postgres", "kind: mysql"),
        "cannot be a fan-out": text.replace("mode: cursor,", "mode: cursor, loop_mode: fanout,"),
        "unknown key 'query'": text.replace("        claim: |", "        query: |"),
        "needs `auth`": text.replace("        auth: cursor_db\n", ""),
        "mode 'cursor' needs loop.cursor": text.replace(
            "      cursor:", "      in: \"{{ [1] }}\"\n      unused:").split("      unused:")[0]
        + "      iterator: row\n      spec: {mode: cursor}\n    tool: {kind: noop}\n",
    }
    for message, playbook_text in bad.items():
        with pytest.raises(PlaybookError) as raised:
            load_playbook(playbook_text)
        assert message in str(raised.value), (message, str(raised.value))
        assert "'drain'" in str(raised.value), "the error names the step"


# --- the pft example (examples/pft), reduced --------------------------------------------

PFT = REPO_ROOT / "examples" / "pft"
PFT_SIZE = {"num_facilities": 3, "patients_per_facility": 200, "claim_batch": 20,
            "slots": 3, "units_in_flight": 5}


def _pft_module() -> Any:
    """examples/pft/run.py (register, start, credentials)."""
    spec = importlib.util.spec_from_file_location("pft_run", PFT / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _assert_pft_complete(engine: Engine, execution_id: int) -> dict[str, Any]:
    """200/200 for every facility and data type, nothing doubled: one result row per
    patient and type, and each cursor loop holds each claimed row once with one done
    outcome per item. Returns the per-patient tool runs (above 1: run again)."""
    final = engine.wait(execution_id, timeout=600)
    assert final["status"] == "COMPLETED", final["error"]
    patients = PFT_SIZE["patients_per_facility"]
    assert final["result"]["complete"] == f"{patients}/{patients}"
    counts = engine.sql(
        "select facility_id, data_type, count(*) as n, count(distinct patient_id) as d "
        "from pft_result where run_id = %s group by 1, 2 order by 1, 2", execution_id)
    assert len(counts) == PFT_SIZE["num_facilities"] * 5
    assert {(row["n"], row["d"]) for row in counts} == {(patients, patients)}
    queue = engine.sql("select status, count(*) as n from pft_work_queue where run_id = %s "
                       "group by 1", execution_id)
    assert queue == [{"status": "done", "n": 3 * 200 * 5}]
    loops = engine.sql(
        "select l.loop_id, l.total, l.done, l.failed, count(li.*) as items, "
        "count(distinct li.row_key) as keys, count(distinct li.item_value) as rows "
        "from noetl.loop l join noetl.execution e on e.execution_id = l.execution_id "
        "join noetl.loop_item li on li.loop_id = l.loop_id "
        "where e.parent_execution_id = %s and l.mode = 'cursor' group by l.loop_id",
        execution_id)
    assert len(loops) == 15
    for loop in loops:
        assert (loop["total"], loop["done"], loop["failed"], loop["items"], loop["keys"],
                loop["rows"]) == (200, 200, 0, 200, 200, 200), loop
    done = engine.sql(
        "select ev.loop_id, ev.iter_index, count(*) as n from noetl.event ev "
        "join noetl.execution e on e.execution_id = ev.execution_id "
        "where e.parent_execution_id = %s and ev.event_type = 'call.done' "
        "and ev.iter_index is not null and ev.node_name = 'fetch' group by 1, 2",
        execution_id)
    assert len(done) == 15 * 200 and {row["n"] for row in done} == {1}, \
        "each claimed row's result recorded once"
    return {(r["facility_id"], r["data_type"], r["patient_id"]): r["runs"] for r in engine.sql(
        "select facility_id, data_type, patient_id, runs from pft_result where run_id = %s",
        execution_id)}


def test_pft_example_reduced_end_to_end(fresh_engine: Engine) -> None:
    """3 facilities x 200 patients x 5 data types: 200/200 everywhere, every patient's
    tool run exactly once (no worker died)."""
    pft, engine = _pft_module(), fresh_engine
    pft.register(engine.dsn)
    with engine.worker(slots=4, credentials=pft.credentials(engine.dsn)):
        execution_id = pft.start(engine.dsn, PFT_SIZE)
        runs = _assert_pft_complete(engine, execution_id)
    assert set(runs.values()) == {1}


@pytest.fixture
def workers(fresh_dsn: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(fresh_dsn, tmp_path, heartbeat_seconds="0.2", claim_timeout_seconds="1.5")
    try:
        yield pool
    finally:
        pool.close()


def test_pft_example_survives_a_sigkilled_worker(fresh_engine: Engine, workers: Workers) -> None:
    """The same with two `noetl worker` processes, one SIGKILLed a third of the way in:
    still 200/200 everywhere and nothing doubled; the victim's claims were taken back
    (the engine re-offered its rows, no reclaim SQL), and only rows it held ran twice."""
    pft, engine = _pft_module(), fresh_engine
    fields = conninfo_to_dict(engine.dsn)
    put_credential(engine.dsn, "pft_pg", "postgres", {
        "db_host": fields.get("host", "127.0.0.1"), "db_port": fields.get("port", "5432"),
        "db_user": fields.get("user", "postgres"), "db_name": fields["dbname"]})
    pft.register(engine.dsn)
    workers.start("victim", concurrency=4)
    workers.start("survivor", concurrency=4)
    execution_id = pft.start(engine.dsn, PFT_SIZE)
    wait_until(lambda: engine.sql("select to_regclass('pft_result') as t")[0]["t"]
               and engine.sql("select count(*) as n from pft_result where run_id = %s",
                              execution_id)[0]["n"] >= 1000,
               timeout=300, what="1000 results written")
    held_by_victim = ("select c.kind, c.iter_index, c.loop_id from noetl.command c "
                      "where c.status = 'claimed' and c.claimed_by = 'victim'")

    def stopped_holding_claims() -> bool:
        # Frozen first, so what it holds cannot change before the kill (between batches it
        # may hold nothing, and the test would prove nothing).
        workers.signal("victim", signal.SIGSTOP)
        if engine.sql(held_by_victim):
            return True
        workers.signal("victim", signal.SIGCONT)
        time.sleep(0.05)
        return False

    wait_until(stopped_holding_claims, timeout=120, what="the victim holding claims")
    workers.signal("victim", signal.SIGKILL)
    wait_until(lambda: not engine.sql("select 1 from pg_stat_activity "
                                      "where application_name = 'noetl worker victim'"),
               what="the victim's backends to exit")
    held = engine.sql(held_by_victim)
    runs = _assert_pft_complete(engine, execution_id)
    reaped = engine.sql("select ev.meta from noetl.event ev where ev.event_type = "
                        "'command.reaped'")
    assert held and len(reaped) >= len(held), "the victim's claims were taken back"
    assert {r["meta"]["worker_id"] for r in reaped} == {"victim"}
    twice = [key for key, count in runs.items() if count > 1]
    assert max(runs.values()) <= 2
    assert len(twice) <= len([h for h in held if h["kind"] != "cursor"]), \
        "only rows whose iteration the victim held ran again"
    assert engine.sql("select count(*) as n from noetl.event where event_type = "
                      "'command.failed'") == [{"n": 0}]


def test_cursor_auth_naming_a_workload_secret_is_refused(engine: Engine) -> None:
    """loop.cursor.auth is checked like tool.auth at registration: a workload entry it
    names may not hold a literal password."""
    text = _playbook("q_secret", batch=1, slots=1, tool=PYTHON_ROW).replace(
        "auth: cursor_db", 'auth: "{{ db }}"').replace(
        "workflow:", "workload:\n  db: {db_host: h, db_password: hunter2}\nworkflow:", 1)
    with pytest.raises(PlaybookError, match="secret is written inline") as raised:
        engine.register(text)
    assert "workload.db.db_password" in str(raised.value)


def test_status_shows_a_running_cursor_loop_without_a_total(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`noetl status` of a cursor loop still claiming: done/? and no ETA (its total is
    unknown until its cursor drains), where it used to raise on the missing total."""
    from noetl_pg.cli import status as cli_status

    loop = {"loop_id": 1, "total": None, "done": 7, "failed": 1, "completed": False}
    assert cli_status._loop_text({"loop": {"drain": loop}}, "drain").startswith("7/? (1 failed)")
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(cli_status.time, "monotonic", lambda: next(clock))
    rates = cli_status.LoopRates()
    rates.text("drain", {**loop, "done": 0, "failed": 0})
    assert rates.text("drain", loop) == " 0.8/s"
