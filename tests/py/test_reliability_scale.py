"""Claims, the reaper and progress checks scale with the batch, not with the backlog.

A 1,000,000-command backlog of one kind is inserted set-based; then each hot query runs
under EXPLAIN (ANALYZE, BUFFERS) inside a transaction that is rolled back, and the test
reads what it touched: shared buffers (the functions' nested statements included) and
rows of noetl.command read by scans (pg_stat_xact_user_tables, before and after). Walking
the backlog would touch over 20,000 buffers and 1,000,000 rows; each call must stay within
a small multiple of its batch.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from engine_harness import Engine

BACKLOG = 1_000_000
BATCH = 10
# Per claimed/reaped row: its update, its index entries, its event and the re-reads of the
# lock helpers; plus a constant for index descents. Walking the backlog costs thousands of
# times more.
MAX_BUFFERS = 60 * BATCH + 100
MAX_ROWS = 10 * BATCH + 20

PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: scale, path: test/scale}
workflow:
  - step: a
    tool: {kind: python, code: "result = 1"}
    next: [{step: b, when: "{{ a == 1 }}"}]
  - step: b
    tool: {kind: noop}
"""


def _touched(conn: psycopg.Connection[Any], call: str, *params: Any) -> dict[str, int]:
    """Buffers and noetl.command rows one call touches, in a transaction rolled back."""
    counters = ("select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                "from pg_stat_xact_user_tables where relid = 'noetl.command'::regclass")
    with conn.transaction(force_rollback=True):
        conn.execute(call, params)  # warm caches and plans, as a running worker has them
    with conn.transaction(force_rollback=True):
        before = conn.execute(counters).fetchone()[0]
        plan = conn.execute("explain (analyze, buffers, format json) " + call,
                            params).fetchone()[0]
        after = conn.execute(counters).fetchone()[0]
    top = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
    return {"buffers": top["Shared Hit Blocks"] + top["Shared Read Blocks"],
            "rows": after - before}


def test_hot_queries_touch_o_batch_with_a_million_command_backlog(fresh_engine: Engine) -> None:
    engine = fresh_engine
    path = engine.register(PLAYBOOK)
    small = engine.start(path)
    backlog = engine.start(path)
    with psycopg.connect(engine.dsn, autocommit=True) as conn:
        # The per-execution command budget (a row trigger) would count the backlog one row
        # at a time and stop the execution at its limit: off for this set-based fixture.
        conn.execute("alter table noetl.command disable trigger command_budget")
        conn.execute(
            "insert into noetl.command (execution_id, command_key, kind, step_name) "
            "select %s, 'b' || g, 'python', 'a' from generate_series(1, %s) as g",
            (backlog, BACKLOG))
        conn.execute("alter table noetl.command enable trigger command_budget")
        # A few commands of another kind, queued after the backlog (higher ids).
        conn.execute(
            "insert into noetl.command (execution_id, command_key, kind, step_name) "
            "select %s, 'r' || g, 'route', 'a' from generate_series(1, %s) as g",
            (small, 2 * BATCH))
        conn.execute("analyze noetl.command")
        conn.execute("select noetl.register_worker('w', 'h', 1, 1, null)")
        queued = conn.execute("select count(*) from noetl.command where status = 'queued'"
                              ).fetchone()[0]
        assert queued == BACKLOG + 2 * BATCH + 2

        figures = {
            "claim --kinds route": _touched(
                conn, "select noetl.claim_command_ids('w', array['route'], %s)", BATCH),
            "claim --kinds http (none queued)": _touched(
                conn, "select noetl.claim_command_ids('w', array['http'], %s)", BATCH),
            "claim --kinds python": _touched(
                conn, "select noetl.claim_command_ids('w', array['python'], %s)", BATCH),
            "claim --kinds route,python": _touched(
                conn, "select noetl.claim_command_ids('w', array['route', 'python'], %s)",
                BATCH),
            "claim any kind": _touched(
                conn, "select noetl.claim_command_ids('w', null, %s)", BATCH),
        }
        # Ten claims of a worker that went silent: the reaper finds and re-queues them.
        conn.execute("select noetl.claim_command_ids('w', array['route'], %s)", (BATCH,))
        conn.execute("update noetl.worker set heartbeat_at = now() - interval '1 hour'")
        figures["reap_stale_claims (10 stale)"] = _touched(
            conn, "select noetl.reap_stale_claims(300)")
        figures["reap_orphan_claims (none)"] = _touched(
            conn, "select noetl.reap_orphan_claims('w', array(select command_id from "
                  "noetl.command where claimed_by = 'w' and status = 'claimed'), 0)")
        figures["check_progress (backlog execution)"] = _touched(
            conn, "select noetl.check_progress(%s, 'a')", backlog)
        figures["check_progress (small execution)"] = _touched(
            conn, "select noetl.check_progress(%s, 'a')", small)
        [(step_a, attempt, claim)] = conn.execute(
            "update noetl.command set status = 'claimed', claimed_by = 'w', claim_gen = 1 "
            "where execution_id = %s and command_key like 'a@%%' "
            "returning command_id, attempt, claim_gen", (small,)).fetchall()
        outcome = json.dumps([{"op": "done", "command_id": step_a, "attempt": attempt,
                               "claim": claim, "result": 1}])
        figures["finish_and_claim (1 outcome, claim 10 routes)"] = _touched(
            conn, "select count(*) from noetl.finish_and_claim('w', %s, array['route'], %s)",
            outcome, BATCH)

    print("\nbuffers / noetl.command rows touched with a", f"{BACKLOG:,}-command backlog:")
    for name, touched in figures.items():
        print(f"  {name:48} {touched['buffers']:6} buffers {touched['rows']:6} rows")
    too_many = {name: touched for name, touched in figures.items()
                if touched["buffers"] > MAX_BUFFERS or touched["rows"] > MAX_ROWS}
    assert not too_many, f"walked the backlog (limits {MAX_BUFFERS} buffers, {MAX_ROWS} rows)"
