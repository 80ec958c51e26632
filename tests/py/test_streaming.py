"""Streamed steps (`tool.output.stream`): one `call.partial` per chunk, one command per
chunk for each `on: call.partial` arc, `call.done` last and the only event that routes the
step's other arcs; the refused forms; a stream run again records and issues nothing twice.
"""

from __future__ import annotations

import collections
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Engine
from psycopg import OperationalError
from psycopg.types.json import Jsonb
from worker_procs import Workers, wait_until

from noetl_pg import db
from noetl_pg.dsl import load_playbook
from noetl_pg.errors import DatabaseUnavailable, PlaybookError, ToolError
from noetl_pg.store import ResultStore
from noetl_pg.stream import ChunkEmitter, DbPartialRecorder, EngineConnectionLost, pump
from noetl_pg.validate import validate_text

CHECK_CHUNK = """
def main(rows, index, has_more, row_count):
    ids = [row["id"] for row in rows]
    assert ids == list(range(index * 1000 + 1, index * 1000 + 1001)), (index, ids[:3])
    assert row_count == len(rows)
    assert all(len(row["tag"]) == 32 for row in rows)
    return {"index": index, "rows": len(rows), "first": ids[0], "last": ids[-1],
            "has_more": has_more}
"""


def _playbook(scan_tool: str, *, after_when: str = "") -> str:
    check = json.dumps(CHECK_CHUNK)
    return f"""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: stream, path: test/stream}}
workflow:
  - step: scan
    tool: {scan_tool}
    next:
      arcs:
        - {{step: check, on: call.partial}}
        - {{step: after{after_when}}}
  - step: check
    tool:
      kind: python
      input:
        rows: "{{{{ chunk.rows }}}}"
        index: "{{{{ chunk.index }}}}"
        has_more: "{{{{ chunk.has_more }}}}"
        row_count: "{{{{ chunk.row_count }}}}"
      code: {check}
  - step: after
    tool: {{kind: python, code: "result = {{'after': True}}"}}
"""


def _pg_scan(dsn: str, rows: int = 10_000, failing_at: int | None = None) -> str:
    tag = "md5(g::text)" if failing_at is None else \
        f"case when g = {failing_at} then (1 / (g - {failing_at}))::text else md5(g::text) end"
    # No ORDER BY: a sort would compute every row (and hit the failing one) before the
    # first chunk; generate_series yields them in order anyway.
    query = f"select g as id, {tag} as tag from generate_series(1, {rows}) as g"
    return json.dumps({"kind": "postgres", "auth": {"dsn": dsn}, "query": query,
                       "output": {"stream": {"chunk_rows": 1000}}})


def _by_type(engine: Engine, execution_id: int, event_type: str,
             step: str) -> list[dict[str, Any]]:
    return [event for event in engine.events(execution_id)
            if event["event_type"] == event_type and event["node_name"] == step]


def _assert_ten_chunks_checked(engine: Engine, execution_id: int) -> None:
    checked = sorted((event["result"] for event in
                      _by_type(engine, execution_id, "call.done", "check")),
                     key=lambda result: result["index"])
    assert [result["index"] for result in checked] == list(range(10))
    assert all(result["rows"] == 1000 for result in checked)
    assert [result["first"] for result in checked] == [i * 1000 + 1 for i in range(10)]
    assert [result["has_more"] for result in checked] == [True] * 9 + [False]
    (done,) = _by_type(engine, execution_id, "call.done", "scan")
    # The attempt that completed streamed every chunk, in order.
    partials = [event for event in _by_type(engine, execution_id, "call.partial", "scan")
                if event["attempt"] == done["attempt"]]
    assert [event["meta"]["chunk_index"] for event in partials] == list(range(10))
    assert [event["meta"]["row_count"] for event in partials] == [1000] * 10
    assert done["event_id"] > max(event["event_id"] for event in partials)
    assert done["result"]["row_count"] == 10_000 and done["result"]["chunks"] == 10
    assert "rows" not in done["result"]
    assert len(_by_type(engine, execution_id, "call.done", "after")) == 1


def test_postgres_stream_runs_the_partial_arc_once_per_chunk(engine: Engine) -> None:
    row = engine.run(_playbook(_pg_scan(engine.dsn)), timeout=120)
    assert row["status"] == "COMPLETED", row.get("error")
    _assert_ten_chunks_checked(engine, row["execution_id"])


def test_duckdb_stream_runs_the_partial_arc_once_per_chunk(engine: Engine) -> None:
    query = ("select g::integer as id, md5(g::varchar) as tag "
             "from range(1, 10001) as t (g) order by g")
    scan = json.dumps({"kind": "duckdb", "query": query,
                       "output": {"stream": {"chunk_rows": 1000}}})
    row = engine.run(_playbook(scan), timeout=120)
    assert row["status"] == "COMPLETED", row.get("error")
    _assert_ten_chunks_checked(engine, row["execution_id"])


def test_partials_without_call_done_route_no_other_arc(engine: Engine) -> None:
    # Row 5,500 fails inside chunk 5: chunks 0-4 were streamed and checked, the step
    # fails, and neither its plain arc nor its call.done arc is taken.
    playbook = _playbook(_pg_scan(engine.dsn, failing_at=5500),
                         after_when=", when: \"{{ event.name == 'call.done' }}\"")
    row = engine.run(playbook, timeout=120)
    assert row["status"] == "FAILED" and row["failed_step"] == "scan"
    assert "division by zero" in row["error"]
    execution_id = row["execution_id"]
    partials = _by_type(engine, execution_id, "call.partial", "scan")
    assert [event["meta"]["chunk_index"] for event in partials] == [0, 1, 2, 3, 4]
    assert not _by_type(engine, execution_id, "call.done", "scan")
    assert not _by_type(engine, execution_id, "command.issued", "after")


def test_a_resumed_stream_issues_no_chunk_twice(engine: Engine) -> None:
    # The stream fails in chunk 5 (a zero divisor), the divisor is fixed, the execution is
    # resumed: the stream runs again as attempt 2 and records all ten chunks, but only
    # chunks 5-9 get a new chunk command; each chunk is checked once.
    table = f"stream_divisors_{uuid.uuid4().hex[:8]}"
    engine.sql(f"create table {table} as select g as id, case when g = 5500 then 0 else 1 "
               "end as divisor from generate_series(1, 10000) as g")
    # An index to read in order: a cursor's plan then fetches rows as it goes (a sort
    # would divide every row, and fail, before the first chunk).
    engine.sql(f"alter table {table} add primary key (id)")
    try:
        query = (f"select id, md5(id::text) || repeat('', 1 / divisor) as tag "
                 f"from {table} order by id")
        scan = json.dumps({"kind": "postgres", "auth": {"dsn": engine.dsn}, "query": query,
                           "output": {"stream": {"chunk_rows": 1000}}})
        execution_id = engine.start(engine.register(_playbook(scan)))
        failed = engine.wait(execution_id, timeout=120)
        assert failed["status"] == "FAILED" and "division by zero" in failed["error"]
        engine.sql(f"update {table} set divisor = 1")
        engine.sql("select noetl.resume_execution(%s)", execution_id)
        row = engine.wait(execution_id, timeout=120)
    finally:
        engine.sql(f"drop table {table}")
    assert row["status"] == "COMPLETED", row.get("error")
    _assert_ten_chunks_checked(engine, execution_id)
    partials = [(event["attempt"], event["meta"]["chunk_index"])
                for event in _by_type(engine, execution_id, "call.partial", "scan")]
    assert partials == [(1, index) for index in range(5)] + [(2, index) for index in range(10)]


def test_large_chunks_go_by_reference(fresh_engine: Engine) -> None:
    engine = fresh_engine
    store = ResultStore.from_env(engine.dsn)
    store.inline_max_bytes = 1024
    with engine.worker(slots=2, store=store):
        row = engine.run(_playbook(_pg_scan(engine.dsn)), timeout=120)
    assert row["status"] == "COMPLETED", row.get("error")
    partials = _by_type(engine, row["execution_id"], "call.partial", "scan")
    assert all(event["result"]["result_ref"].startswith("noetl://") for event in partials)
    _assert_ten_chunks_checked(engine, row["execution_id"])


class _Chunks:
    """A ChunkSink keeping what it was handed."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, int, bool]] = []

    def emit(self, index: int, columns: list[str], rows: list[dict[str, Any]],
             has_more: bool) -> None:
        self.chunks.append((index, len(rows), has_more))


@pytest.mark.parametrize(("total", "expected"), [
    (25, [(0, 10, True), (1, 10, True), (2, 5, False)]),
    (20, [(0, 10, True), (1, 10, False)]),
    (1, [(0, 1, False)]),
    (0, []),
])
def test_pump_reads_one_row_ahead_and_never_more(total: int,
                                                  expected: list[tuple[int, int, bool]]) -> None:
    source = [{"n": n} for n in range(total)]
    asked: list[int] = []

    def fetch(n: int) -> list[dict[str, Any]]:
        asked.append(n)
        taken, source[:] = source[:n], source[n:]
        return taken

    sink = _Chunks()
    summary = pump(["n"], fetch, 10, sink)
    assert sink.chunks == expected
    assert summary == {"columns": ["n"], "row_count": total, "chunks": len(expected),
                       "streamed": True}
    assert max(asked) == 10


# --- a stream run again ---------------------------------------------------------------------


class _Recorder(DbPartialRecorder):
    """The worker's recorder, counting what reached the database."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.statuses: list[str] = []

    def record(self, chunk: Any) -> str:
        status = super().record(chunk)
        self.statuses.append(status)
        return status


def _claimed_stream(engine: Engine) -> dict[str, Any]:
    """A streamed step's command, claimed by hand (no worker runs it)."""
    path = engine.register(_playbook(_pg_scan(engine.dsn)))
    execution_id = engine.start(path)
    with db.connect(engine.dsn) as conn:
        rows = conn.execute(
            "update noetl.command set status = 'claimed', claimed_by = 'test', "
            "claim_gen = claim_gen + 1 where execution_id = %s and step_name = 'scan' "
            "returning command_id, execution_id, step_name, attempt, claim_gen",
            (execution_id,)).fetchall()
    assert len(rows) == 1
    return dict(rows[0])


def _stream(engine: Engine, command: dict[str, Any], chunks: int) -> list[str]:
    """What the database answered to each chunk of a stream of `chunks` one-row chunks."""
    with db.connect(engine.dsn) as conn:
        recorder = _Recorder(conn)
        emitter = ChunkEmitter(command, ResultStore.from_env(engine.dsn), recorder,
                               lambda chunk: [{"step": "check", "set": None}])
        for index in range(chunks):
            emitter.emit(index, ["id"], [{"id": index}], index < chunks - 1)
    return recorder.statuses


def test_a_stream_run_again_records_and_issues_no_chunk_twice(fresh_engine: Engine) -> None:
    engine = fresh_engine  # no worker: the test plays it
    command = _claimed_stream(engine)
    with db.connect(engine.dsn) as conn:
        for index in range(3):
            status = DbPartialRecorder(conn).record({
                "command_id": command["command_id"], "attempt": command["attempt"],
                "claim": command["claim_gen"], "chunk_index": index, "has_more": True,
                "row_count": 1, "columns": ["id"], "rows": [{"id": index}],
                "targets": [{"step": "check", "set": None}],
            })
            assert status == "ok"
        # The worker died; the stream is claimed again at the same attempt.
        again = conn.execute(
            "update noetl.command set claim_gen = claim_gen + 1 where command_id = %s "
            "returning claim_gen", (command["command_id"],)).fetchone()
        assert again is not None
        stale = DbPartialRecorder(conn).record({
            "command_id": command["command_id"], "attempt": command["attempt"],
            "claim": command["claim_gen"], "chunk_index": 3, "has_more": True,
            "row_count": 1, "columns": ["id"], "rows": [], "targets": [],
        })
        assert stale == "stale"
        assert DbPartialRecorder(conn).recorded(command["command_id"], 1) == {0, 1, 2}
        duplicate = conn.execute(
            "select noetl.record_partial(%s, 1, %s, 1, true, 1, '[\"id\"]', '[]', %s)",
            (command["command_id"], again["claim_gen"],
             Jsonb([{"step": "check", "set": None}]))).fetchone()
        assert duplicate == {"record_partial": "duplicate"}
        # A retry (attempt 2) records its chunks again but issues no chunk command twice.
        conn.execute("update noetl.command set attempt = 2 where command_id = %s",
                     (command["command_id"],))
        for index in range(4):
            assert conn.execute(
                "select noetl.record_partial(%s, 2, null, %s, %s, 1, '[\"id\"]', '[]', %s)",
                (command["command_id"], index, index < 3,
                 Jsonb([{"step": "check", "set": None}]))).fetchone() == \
                {"record_partial": "ok"}
        issued = conn.execute(
            "select command_key from noetl.command where execution_id = %s "
            "and step_name = 'check' order by command_key",
            (command["execution_id"],)).fetchall()
        partials = conn.execute(
            "select attempt, count(*) as n from noetl.event where execution_id = %s "
            "and event_type = 'call.partial' group by attempt order by attempt",
            (command["execution_id"],)).fetchall()
    cid = command["command_id"]
    assert [row["command_key"] for row in issued] == [
        f"check@{cid}/chunk/{index}" for index in range(4)]
    assert partials == [{"attempt": 1, "n": 3}, {"attempt": 2, "n": 4}]


def test_a_reclaimed_stream_skips_the_chunks_it_recorded(fresh_engine: Engine) -> None:
    engine = fresh_engine  # no worker: the test plays it
    command = _claimed_stream(engine)
    assert _stream(engine, command, 2) == ["ok", "ok"]
    # The same attempt streams again from the start: chunks 0 and 1 are not sent again.
    assert _stream(engine, command, 4) == ["ok", "ok"]
    with db.connect(engine.dsn) as conn:
        rows = conn.execute(
            "select count(*) as n from noetl.command where execution_id = %s "
            "and step_name = 'check'", (command["execution_id"],)).fetchone()
    assert rows == {"n": 4}


@pytest.fixture
def workers(fresh_dsn: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(fresh_dsn, tmp_path, heartbeat_seconds="0.2", claim_timeout_seconds="1.5")
    try:
        yield pool
    finally:
        pool.close()


def test_sigkill_mid_stream_runs_each_chunk_once(fresh_engine: Engine,
                                                 workers: Workers) -> None:
    """The worker streaming is killed after its third chunk: the stream runs again at the
    same attempt on the survivor, which skips the recorded chunks; each chunk has one
    call.partial and its step ran once."""
    engine = fresh_engine
    # 0.4 s at the first row of each chunk, so the stream is still going when it is killed.
    slow = ("select g as id, md5(g::text) as tag, case when g % 1000 = 1 then "
            "(select 0 from pg_sleep(0.4)) else 0 end as pause "
            "from generate_series(1, 10000) as g")
    scan = json.dumps({"kind": "postgres", "auth": {"dsn": engine.dsn}, "query": slow,
                       "output": {"stream": {"chunk_rows": 1000}}})
    workers.start("victim", kinds="postgres")
    execution_id = engine.start(engine.register(_playbook(scan)))
    wait_until(lambda: engine.sql("select 1 from noetl.stream_chunk where execution_id = %s "
                                  "offset 2", execution_id), what="three chunks recorded")
    workers.signal("victim", signal.SIGKILL)
    workers.start("survivor")
    row = engine.wait(execution_id, timeout=120)
    assert row["status"] == "COMPLETED", row.get("error")
    _assert_ten_chunks_checked(engine, execution_id)
    partials = collections.Counter(
        (event["attempt"], event["meta"]["chunk_index"])
        for event in _by_type(engine, execution_id, "call.partial", "scan"))
    assert partials == {(1, index): 1 for index in range(10)}
    checked = collections.Counter(event["result"]["index"] for event in
                                  _by_type(engine, execution_id, "call.done", "check"))
    assert checked == {index: 1 for index in range(10)}
    assert _by_type(engine, execution_id, "command.reaped", "scan"), "the stream was taken back"


# --- refused forms --------------------------------------------------------------------------


def _one_step(tool: str, arcs: str = "", extra: str = "") -> str:
    return f"""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: bad_stream, path: test/bad_stream}}
workflow:
  - step: scan
    tool: {tool}
{arcs}
  - step: check
    tool: {{kind: noop}}
{extra}
"""


PG = "{kind: postgres, auth: pg, query: 'select 1', output: {stream: {chunk_rows: %s}}}"
PARTIAL_ARC = "    next: {arcs: [{step: check, on: call.partial}]}"


@pytest.mark.parametrize(("text", "expected"), [
    (_one_step(PG % "0"), "step 'scan', field 'tool.output.stream.chunk_rows', line 7: "
                          "must be an integer from 1 to 1,000,000, got 0"),
    (_one_step(PG % "'lots'"), "got 'lots'"),
    (_one_step(PG % "2000000"), "got 2000000"),
    (_one_step(PG % "true"), "got True"),
    (_one_step("{kind: postgres, auth: pg, query: 'select 1', output: {stream: {rows: 5}}}"),
     "unknown key 'rows' (known: chunk_rows)"),
    (_one_step("{kind: http, url: 'http://x', output: {stream: {chunk_rows: 5}}}"),
     "output.stream is not supported by kind 'http' (supported: duckdb, postgres)"),
    (_one_step("[{kind: postgres, auth: pg, query: 'select 1', "
               "output: {stream: {chunk_rows: 5}}}]"),
     "output.stream is not supported in a pipeline"),
    (_one_step("{kind: postgres, auth: pg, query: 'select 1'}", PARTIAL_ARC),
     "an `on: call.partial` arc needs a streamed step"),
    (_one_step(PG % "5", "    next: {arcs: [{step: check, on: call.done}]}"),
     "'call.done' is not supported (supported: call.partial)"),
    (_one_step(PG % "5", "    loop: {in: [1, 2], iterator: x}"),
     "output.stream is not supported on a loop step"),
    (_one_step(PG % "5", PARTIAL_ARC,
               "    loop: {in: '{{ chunk.rows }}', iterator: row}"),
     "step 'check' is a loop"),
    (_one_step(PG % "5", PARTIAL_ARC, "    next: [check]"),
     "step 'check' runs once per chunk of an `on: call.partial` arc"),
])
def test_refused_stream_forms_give_one_line(text: str, expected: str) -> None:
    with pytest.raises(PlaybookError) as raised:
        load_playbook(text, source="bad_stream.yaml")
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message and "bad_stream.yaml" in message


def test_the_plan_keeps_partial_arcs_out_of_routing() -> None:
    text = _one_step(PG % "5", "    next: {arcs: [{step: check, on: call.partial}, "
                     "{step: done}]}",
                     "  - step: done\n    tool: {kind: noop}")
    spec = load_playbook(text).to_spec()
    plan = spec["workflow"][0]["plan"]
    assert plan["route_mode"] == "direct" and plan["direct_targets"] == ["done"]
    assert plan["partial_targets"] == ["check"]
    assert set(plan["successors"]) == {"check", "done"}


def test_validate_knows_chunk_only_where_a_chunk_is() -> None:
    text = _one_step(PG % "5", "    next: {arcs: [{step: check, on: call.partial, "
                     "when: '{{ chunk.has_more }}'}, {step: done}]}",
                     "  - step: done\n    tool: {kind: python, code: 'result = 1', "
                     "input: {n: '{{ chunk.index }}'}}")
    _, _, problems = validate_text(text, "stream.yaml")
    assert [str(problem) for problem in problems] == [
        "step 'done', field 'tool.input.n': template names 'chunk', which nothing defines"]


def test_recorder_errors_are_not_the_query_s(engine: Engine) -> None:
    chunk = {"command_id": -1, "attempt": 1, "claim": None, "chunk_index": 0,
             "has_more": False, "row_count": 0, "columns": [], "rows": [], "targets": []}
    with db.connect(engine.dsn) as conn:
        with pytest.raises(ToolError, match="stream: chunk 0 not recorded: command -1 does "
                                            "not exist"):
            DbPartialRecorder(conn).record(chunk)
        with pytest.raises(OperationalError):
            conn.execute("select pg_terminate_backend(pg_backend_pid())")
        with pytest.raises(EngineConnectionLost) as lost:
            DbPartialRecorder(conn).record(chunk)
    assert isinstance(lost.value.connection_error, DatabaseUnavailable)
