"""The hot path's statements keep key lookups as key lookups, whatever the statistics.

The engine's PL/pgSQL functions are planned once per session (generic plans), from the
statistics the tables have then, which on a fresh database or with autovacuum off are
none, and the plans are kept while the tables grow. Three shapes went wrong that way, each
costing a walk over rows the statement did not want on every transition:

- a command looked up by its id with `status = 'claimed'` let the planner scan a whole
  partial index on status (command_active_idx, command_claimed_by_idx), dead entries
  included, filtering by id, instead of probing the primary key;
- a step's plan row joined by (catalog_id, step_name) was probed by catalog_id alone and
  the playbook's steps filtered by name;
- a claim's update by id read the whole command table (claim_command_ids was planned
  without `enable_seqscan = off`).

Here a chain and a loop run through `finish_and_claim_v1` (a worker's calls, from one
session), then the examples, a chain and a loop on a real worker, on databases that were
never analyzed, each several times so the tables hold more than any one transition
reads, and auto_explain reports every nested statement's plan with its row counts. A
statement walking a status partial index without an index condition, or discarding more
rows than a transition handles, fails the test with its text. The queue's indexes are
exempt: reading the queue's head is what they are for.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from engine_harness import REPO_ROOT, Engine
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from noetl_pg.catalog import register_text
from noetl_pg.worker import slots

CHAIN_STEPS = 40
LOOP_ITEMS = 150
LOOP_WIDTH = 10
BATCH = 5
# More rows than one transition touches (a batch, the loop's width): a statement that
# discards this many is walking rows it did not ask for.
MOST_ROWS_DISCARDED = 3 * LOOP_WIDTH
QUEUE_INDEXES = {"command_queue_idx", "command_queue_kind_idx"}
WORKER = "plan-shapes"


def chain(steps: int) -> str:
    lines = ["metadata: {name: plan_chain, path: tests/plan_chain}", "workload: {n: 0}",
             "workflow:"]
    for index in range(steps):
        source = "{{ n }}" if index == 0 else f"{{{{ s{index - 1} }}}}"
        lines += [f"  - step: s{index}", f"    tool: {{kind: noop, input: {{n: '{source}'}}}}"]
        if index + 1 < steps:
            lines.append(f"    next: s{index + 1}")
    return "\n".join(lines) + "\n"


LOOP = """
metadata: {name: plan_loop, path: tests/plan_loop}
workflow:
  - step: start
    tool: {kind: python, input: {xs: "{{ xs }}"}, code: "result = {'xs': xs}"}
    next: work
  - step: work
    loop: {in: "{{ start.xs }}", iterator: x, spec: {mode: parallel, max_in_flight: WIDTH}}
    tool: {kind: noop, input: {x: "{{ x }}"}}
""".replace("WIDTH", str(LOOP_WIDTH))


def outcome(claim: dict[str, Any], items: int) -> dict[str, Any]:
    return {"op": "done", "command_id": claim["command_id"], "attempt": claim["attempt"],
            "claim": claim["claim_gen"], "loop_id": claim["loop_id"],
            "result": claim["iter_index"] if claim["loop_id"] else {"xs": list(range(items))}}


def finish(conn: psycopg.Connection[dict[str, Any]], claims: list[dict[str, Any]],
           room: int, items: int) -> list[dict[str, Any]]:
    outcomes = Jsonb([outcome(claim, items) for claim in claims])
    return conn.execute(
        "select (c).* from (select c from noetl.finish_and_claim_v1(%s, %s, '{noop,python}',"
        " %s) as c) as x", (WORKER, outcomes, room)).fetchall()


def claim(conn: psycopg.Connection[dict[str, Any]], room: int) -> list[dict[str, Any]]:
    return conn.execute("select (c).* from (select c from noetl.claim_commands_v1(%s,"
                        " '{noop,python,loop}', %s) as c) as x", (WORKER, room)).fetchall()


def run_to_end(conn: psycopg.Connection[dict[str, Any]], path: str,
               items: int = LOOP_ITEMS) -> str:
    """Start `path` and finish every claim, a batch at a time, as a worker would; a loop
    runs over `items` items."""
    execution_id = conn.execute("select noetl.start_execution(%s, %s) as id",
                                (path, Jsonb({"xs": list(range(items))}))).fetchone()["id"]
    held = claim(conn, 1)
    while held:
        loops = [command for command in held if command["kind"] == "loop"]
        if loops:  # the loop command itself: its collection, as the executor sends it
            conn.execute("select noetl.start_loop(%s, %s, %s, %s, %s)",
                         (loops[0]["command_id"], loops[0]["attempt"],
                          Jsonb(list(range(items))),
                          Jsonb({"iterator": "x", "mode": "parallel",
                                 "max_in_flight": LOOP_WIDTH}), WORKER))
            held = conn.execute(  # its first iterations, created claimed by this worker
                "select (d).* from (select d from noetl.describe_commands_v1(array("
                "select c.command_id from noetl.command as c where c.claimed_by = %s"
                " and c.status = 'claimed' and c.kind = 'noop' order by c.command_id))"
                " as d) as x", (WORKER,)).fetchall() + claim(conn, LOOP_WIDTH)
            continue
        batch, held = held[:BATCH], held[BATCH:]
        held += finish(conn, batch, BATCH, items)
        if not held:  # claims the short path did not hand back wait in the queue
            held = claim(conn, LOOP_WIDTH)
    return str(conn.execute("select status from noetl.execution where execution_id = %s",
                            (execution_id,)).fetchone()["status"])


AUTO_EXPLAIN = ("log_min_duration = 0", "log_nested_statements = on", "log_analyze = on",
                "log_timing = off", "log_format = json", "log_level = notice")


def explain_session(conn: psycopg.Connection[dict[str, Any]], settings: tuple[str, ...]) -> None:
    """auto_explain in this session, its plans sent to the client as notices."""
    conn.execute("load 'auto_explain'")
    for setting in settings:
        conn.execute(f"set auto_explain.{setting}")


def explained(notices: list[str]) -> list[dict[str, Any]]:
    """The plans among auto_explain's notices (JSON after "plan:")."""
    return [json.loads(text.split("plan:", 1)[1]) for text in notices if "plan:" in text]


def offenders(node: dict[str, Any], query: str, found: list[str]) -> None:
    index = str(node.get("Index Name", ""))
    discarded = int(node.get("Rows Removed by Filter", 0)) + int(
        node.get("Rows Removed by Join Filter", 0))
    whole_status_index = (index.startswith("command_") and index != "command_pkey"
                          and index not in QUEUE_INDEXES and "Index Cond" not in node)
    if whole_status_index or (discarded > MOST_ROWS_DISCARDED and index not in QUEUE_INDEXES):
        found.append(f"{node['Node Type']} {index or node.get('Relation Name', '')}"
                     f" discarding {discarded} rows"
                     f" ({node.get('Filter') or node.get('Join Filter')}) in: "
                     + " ".join(query.split())[:300])
    for child in node.get("Plans", []):
        offenders(child, query, found)


def test_hot_path_plans_probe_keys_on_an_unanalyzed_database(fresh_dsn: str) -> None:
    plans: list[str] = []
    with psycopg.connect(fresh_dsn, autocommit=True, row_factory=dict_row) as conn:
        never_analyzed = conn.execute(
            "select count(*) as n from pg_stat_user_tables where schemaname = 'noetl'"
            " and relname in ('command', 'catalog_step')"
            " and coalesce(last_analyze, last_autoanalyze) is not null").fetchone()
        assert never_analyzed is not None and never_analyzed["n"] == 0
        chain_path = register_text(conn, chain(CHAIN_STEPS), source="chain").path
        loop_path = register_text(conn, LOOP, source="loop").path
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        explain_session(conn, AUTO_EXPLAIN)
        for _ in range(3):
            assert run_to_end(conn, chain_path) == "COMPLETED"
            assert run_to_end(conn, loop_path) == "COMPLETED"
        conn.execute("set auto_explain.log_min_duration = -1")
        done = conn.execute("select count(*) as n from noetl.command where status = 'done'"
                            " and kind in ('noop', 'python')").fetchone()
    # Every step and iteration ran once: the plans below are those of the whole runs.
    assert done is not None and done["n"] == 3 * (CHAIN_STEPS + 1 + LOOP_ITEMS)
    assert_plans_probe_keys(plans)


def assert_plans_probe_keys(plans: list[str]) -> None:
    plans_read = explained(plans)
    assert len(plans_read) > 1000, "auto_explain reported no nested statements"
    found: list[str] = []
    for plan in plans_read:
        offenders(plan["Plan"], str(plan.get("Query Text", "")), found)
    assert not found, "\n".join(sorted(set(found)))


# Examples whose results test_examples.py checks; here only their plans are looked at.
EXAMPLES = ("hello_world.yaml", "branching.yaml", "fanout_join.yaml", "legacy_case.yaml",
            "loop_fanout.yaml", "loop_parallel.yaml", "loop_pipeline.yaml")


def test_users_playbooks_plans_on_a_worker(fresh_engine: Engine,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on a real worker serving users' shapes: branches (`when`, `case/then`),
    a join, loops over a step's output and over the workload, a chain, each run three
    times. Every session of the database loads auto_explain; the slots' notice handler
    keeps the plans."""
    database = psycopg.conninfo.conninfo_to_dict(fresh_engine.dsn)["dbname"]
    fresh_engine.sql(f"alter database {database} set session_preload_libraries"
                     " = 'auto_explain'")
    for setting in AUTO_EXPLAIN:
        name, value = setting.split(" = ")
        fresh_engine.sql(f"alter database {database} set auto_explain.{name} = '{value}'")
    plans: list[str] = []
    log_refusal = slots._log_refusal

    def keep_plans(diagnostic: psycopg.errors.Diagnostic) -> None:
        plans.append(diagnostic.message_primary or "")
        log_refusal(diagnostic)

    monkeypatch.setattr(slots, "_log_refusal", keep_plans)
    playbooks = [REPO_ROOT / "examples" / name for name in EXAMPLES]
    with fresh_engine.worker(slots=2):
        for _ in range(3):
            for playbook in playbooks:
                assert fresh_engine.run(playbook)["status"] == "COMPLETED", playbook
            assert fresh_engine.run(chain(CHAIN_STEPS))["status"] == "COMPLETED"
            row = fresh_engine.run(LOOP, {"xs": list(range(LOOP_ITEMS))})
            assert row["status"] == "COMPLETED", row["error"]
    assert_plans_probe_keys(plans)


def buffers_per_transition(conn: psycopg.Connection[dict[str, Any]], playbook: str,
                           transitions: int, items: int = LOOP_ITEMS) -> float:
    """Shared buffers the worker's finishing calls touch per transition (a step done or an
    iteration done) in one run of `playbook` to its end."""
    plans: list[str] = []

    def keep(notice: psycopg.errors.Diagnostic) -> None:
        plans.append(notice.message_primary or "")

    path = register_text(conn, playbook, source="playbook").path
    conn.add_notice_handler(keep)
    conn.execute("set auto_explain.log_min_duration = 0")
    try:
        assert run_to_end(conn, path, items) == "COMPLETED"
    finally:
        conn.execute("set auto_explain.log_min_duration = -1")
        conn.remove_notice_handler(keep)
    finishing = [plan["Plan"] for plan in explained(plans)
                 if "finish_and_claim_v1" in str(plan.get("Query Text", ""))]
    assert finishing, "auto_explain reported no finishing call"
    return sum(int(node["Shared Hit Blocks"]) + int(node["Shared Read Blocks"])
               for node in finishing) / transitions


def test_database_work_per_transition_does_not_grow_with_the_run(fresh_dsn: str) -> None:
    """The work itself, counted in buffers rather than timed: a chain twenty times longer
    and a loop ten times larger, run after the shorter ones on the same never-analyzed
    database, cost each transition what the shorter ones did (a step's plan read by
    catalog_id alone grew with the playbook; a walk over a status index with the dead
    entries of every earlier command)."""
    with psycopg.connect(fresh_dsn, autocommit=True, row_factory=dict_row) as conn:
        explain_session(conn, ("log_min_duration = -1", "log_nested_statements = off",
                               "log_analyze = on", "log_buffers = on", "log_timing = off",
                               "log_format = json", "log_level = notice"))
        short_chain = buffers_per_transition(conn, chain(30), 30)
        long_chain = buffers_per_transition(conn, chain(600), 600)
        small_loop = buffers_per_transition(conn, LOOP, 1 + 200, items=200)
        big_loop = buffers_per_transition(conn, LOOP, 1 + 2000, items=2000)
    assert long_chain <= 1.5 * short_chain, (short_chain, long_chain)
    assert big_loop <= 1.5 * small_loop, (small_loop, big_loop)
