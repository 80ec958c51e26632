"""finish_and_claim_v1's own cost per loop iteration, beside the floor's, with no worker.

A loop of noop iterations is started in SQL (`start_loop`), its first iterations claimed
by a bench worker id; a PL/pgSQL block then finishes them in batches through
`noetl.finish_and_claim_v1` (each call's claims are the next batch), committing after
each call, and times the call and the commit apart with clock_timestamp. The same block,
with the floor's calls in place of the engine's, drives the floor's loop (`floor.sql`:
`floor.claim`, `floor.finish_loop_batch`). Runs
alternate engine and floor; medians are reported, and the engine's over the floor's.

There is no round trip, no Python and no projector in these figures: they are the
database's share of a batched iteration, the part a change to the SQL moves (the
`user_paths.py` figures carry the rest, and the machine's noise). Not part of `make
bench`: a diagnosis for SQL changes, run it alternating the two versions.

Usage: .venv/bin/python bench/finish_cost.py [--items 10000] [--batch 25] [--runs 5]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import psycopg
from benchlib import figure, write_result
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from noetl_pg.catalog import register_text
from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
WORKER = "finish-cost"

PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: finish_cost, path: bench/finish_cost}
workflow:
  - step: work
    loop: {in: "{{ xs }}", iterator: x}
    tool: {kind: noop, input: {x: "{{ x }}"}}
"""

# The drive both sides share: from a pool of claims, batches of `batch` finished by one
# timed call each (whose claims join the pool), a commit after each call, until `items`
# are done or the pool runs short; `start` fills the pool, `outcome` is one claim's
# outcome (the claim is `c`), `call` the finishing call (its outcomes are `v_outcomes`).
DRIVE = """
do $$
declare
    v_pool {element}[];
    v_batch {element}[];
    v_outcomes jsonb;
    v_t0 timestamptz;
    v_t1 timestamptz;
    v_call interval := interval '0';
    v_commit interval := interval '0';
    v_done integer := 0;
begin
    {start}
    commit;
    while v_done < {items} loop
        v_batch := v_pool[1:{batch}];
        v_pool := v_pool[{batch} + 1:];
        exit when cardinality(v_batch) < {batch};
        v_outcomes := (select jsonb_agg({outcome}) from unnest(v_batch) as c);
        v_t0 := clock_timestamp();
        v_pool := v_pool || array({call});
        v_t1 := clock_timestamp();
        commit;
        v_call := v_call + (v_t1 - v_t0);
        v_commit := v_commit + (clock_timestamp() - v_t1);
        v_done := v_done + {batch};
    end loop;
    raise notice 'done % call % commit %', v_done,
        extract(epoch from v_call), extract(epoch from v_commit);
end;
$$
"""

# The engine's pool starts with what the bench worker holds and whatever is queued.
ENGINE = {
    "element": "noetl.claimed_command",
    "start": """v_pool := array(
        select d from noetl.describe_commands_v1(array(
            select c.command_id from noetl.command as c
            where c.claimed_by = '{worker}' and c.status = 'claimed' and c.kind = 'noop'
            order by c.command_id
        )) as d
    ) || array(select c from noetl.claim_commands_v1('{worker}', '{{noop}}', 10000) as c);""",
    "outcome": """jsonb_build_object(
            'op', 'done', 'command_id', (c).command_id, 'attempt', (c).attempt,
            'claim', (c).claim_gen, 'result', (c).iter_index, 'loop_id', (c).loop_id
        )""",
    "call": "select c from noetl.finish_and_claim_v1("
            "'{worker}', v_outcomes, '{{noop}}', {batch}) as c",
}

# The floor's pool: a loop of its own started for the run, its first items claimed.
FLOOR = {
    "element": "bigint",
    "start": """perform floor.start_loop({run}, {items}, {width});
    v_pool := array(select c.command_id from floor.claim('{worker}', {width}) as c);""",
    "outcome": "jsonb_build_object('command_id', c, 'result', c)",
    "call": "select c.command_id from floor.finish_loop_batch('{worker}', {run}, v_outcomes)"
            " as c",
}


def drive_block(side: dict[str, str], **values: Any) -> str:
    """The DO block driving one side, its pieces filled in with `values`."""
    pieces = {key: piece.format(**values) for key, piece in side.items()}
    return DRIVE.format(items=values["items"], batch=values["batch"], **pieces)


NOTICE = re.compile(r"done (\d+) call ([\d.]+) commit ([\d.]+)")


def start_engine_loop(dsn: str, total: int, width: int) -> None:
    """A loop of `total` noop iterations, width `width`, none of them claimed yet."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        registered = register_text(conn, PLAYBOOK, source="bench/finish_cost.py")
        conn.execute("select noetl.start_execution(%s)", (registered.path,))
        command = conn.execute(
            "select c.command_id, c.attempt"
            " from noetl.claim_commands_v1(%s, array['loop'], 1) as c", (WORKER,)).fetchone()
        assert command is not None, "the loop command was not issued"
        conn.execute("select noetl.start_loop(%s, %s, %s, %s, %s)",
                     (command["command_id"], command["attempt"], Jsonb(list(range(total))),
                      Jsonb({"iterator": "x", "mode": "parallel", "max_in_flight": width}),
                      WORKER))


def drive(conn: psycopg.Connection[Any], block: str) -> tuple[float, float]:
    """Microseconds per iteration of the call and of the commit, from the block's notice."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
    conn.execute(block.encode())
    match = next((NOTICE.search(text) for text in notices if NOTICE.search(text)), None)
    if match is None:
        raise RuntimeError(f"the drive reported nothing: {notices}")
    done = int(match.group(1))
    return float(match.group(2)) * 1e6 / done, float(match.group(3)) * 1e6 / done


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="iterations per run")
    parser.add_argument("--batch", type=int, default=25, help="iterations per call")
    parser.add_argument("--runs", type=int, default=5, help="runs of each side")
    args = parser.parse_args(argv)
    width = 2 * args.batch
    dsn = create_database("noetl_finish_cost")
    try:
        migrate(dsn)
        # Enough iterations that no run finishes the loop (its close is another path).
        start_engine_loop(dsn, args.items * (args.runs + 1) + width, width)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((ROOT / "bench" / "floor.sql").read_text().encode())
            engine: list[tuple[float, float]] = []
            floor: list[tuple[float, float]] = []
            for run in range(args.runs):
                values = {"worker": WORKER, "run": run + 1, "items": args.items,
                          "width": width, "batch": args.batch}
                engine.append(drive(conn, drive_block(ENGINE, **values)))
                floor.append(drive(conn, drive_block(FLOOR, **values)))
    finally:
        drop_database(dsn)
    medians = {
        "engine_call_us": statistics.median(call for call, _ in engine),
        "engine_commit_us": statistics.median(commit for _, commit in engine),
        "floor_call_us": statistics.median(call for call, _ in floor),
        "floor_commit_us": statistics.median(commit for _, commit in floor),
    }
    ratio = statistics.median(
        (e_call + e_commit) / (f_call + f_commit)
        for (e_call, e_commit), (f_call, f_commit) in zip(engine, floor, strict=True))
    print(f"{args.items} iterations a run, batches of {args.batch}, median of {args.runs}")
    for name, value in medians.items():
        print(f"  {name:18} {value:7.1f}")
    print(f"  engine over floor  {ratio:7.2f}  (call and commit, within a run pair)")
    write_result("finish_cost", [
        figure("finish_and_claim_v1 per batched iteration", medians["engine_call_us"], "us"),
        figure("floor.finish_loop_batch per item", medians["floor_call_us"], "us"),
    ], {"items": args.items, "batch": args.batch, "runs": args.runs, **medians,
        "engine_over_floor": ratio,
        "runs_raw": {"engine": engine, "floor": floor}})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
