"""Cursor loops (`loop.cursor`, NoETL's CursorSpec): slots claim rows from a table of the
playbook's own database until the claim returns nothing; every claimed row runs the step's
tool once; the loop closes once, when every slot has drained. The claim tables live in
the test's own database (credential `cursor_db`, given to the worker); each test uses
tables named after itself.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest
from engine_harness import Engine

from noetl_pg.credentials import MappingCredentialResolver
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
          update {table} q set status = 'claimed', claims = q.claims + 1
          where q.id in (select id from {table} where status = 'pending'
                         order by id limit {batch} for update skip locked)
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
