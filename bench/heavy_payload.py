"""Heavy payload: examples/heavy_payload, 220 items x 256 KB, in both modes.

Per mode, on one database of its own: the example's echo server (in this process), a
`noetl worker` with no flags (what a user gets: one slot per CPU, python in process
isolation), a warm-up run of `--warmup-rows` items, then the measured run. Reported per
mode: items/s and payload MB/s (10^6 bytes of blob sent per second; each is also received
back and projected), the worker process's RSS (idle before the warm-up, at the start of the
measured run, its peak and end; the process tree with the python executors beside it), the
largest event row of the run and its chunk-worker children (pg_column_size), events per
item, stored and missing rows (the seed README's queries) and the longest pause between two
stored rows (a stall shows there). Targets: no stall (no pause over 10 s), peak RSS < 1.5x
the measured run's start, no event row over 4 KB, 0 missing rows. Then each mode again
under `noetl worker --tuned-flags` (default `--concurrency 6`: http and child playbooks
mostly wait, so more slots than cores pay), reported beside as tuned.

    .venv/bin/python bench/heavy_payload.py [--rows 220] [--kb 256] [--batch-size 30]
        [--warmup-rows 10] [--modes direct_stress,chunked_optimal]
        [--tuned-flags '--concurrency 6']

Writes bench/results/heavy_payload.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import psycopg
from benchlib import (
    NoetlWorker,
    RssSampler,
    figure,
    largest_event,
    load_example,
    rss_kib,
    wait_finished,
    write_result,
)

from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

STALL_SECONDS = 10.0


def longest_pause(dsn: str, execution_id: int) -> float:
    """Seconds of the longest gap between two consecutively stored rows of the run,
    counting from the run's start."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "with t as (select stored_at from public.heavy_payload_results "
            "where execution_id = %s union all select started_at from noetl.execution "
            "where execution_id = %s) "
            "select coalesce(extract(epoch from max(gap)), 0) from (select stored_at - "
            "lag(stored_at) over (order by stored_at) as gap from t) as g",
            (execution_id, execution_id)).fetchone()
    assert row is not None
    return float(row[0])


def run_mode(example: Any, dsn: str, url: str, mode: str, args: argparse.Namespace,
             flags: list[str]) -> dict[str, Any]:
    with NoetlWorker(dsn, flags) as worker:
        idle_kib = rss_kib(worker.pid)
        warmup = example.start_run(dsn, mode, url, rows=args.warmup_rows, kb=args.kb,
                                   batch_size=args.batch_size)
        if wait_finished(dsn, warmup)["status"] != "COMPLETED":
            raise RuntimeError(f"{mode} warm-up did not complete")
        with RssSampler(worker.pid) as rss:
            execution_id = example.start_run(dsn, mode, url, rows=args.rows, kb=args.kb,
                                             batch_size=args.batch_size)
            final = wait_finished(dsn, execution_id)
    checks = example.validation(dsn, execution_id)
    seconds = final["seconds"]
    return {
        "mode": mode, "worker_flags": " ".join(flags), "execution_id": execution_id,
        "status": final["status"], "error": final["error"], "seconds": seconds,
        "items_per_s": args.rows / seconds,
        "mb_per_s": args.rows * args.kb * 1024 / 1e6 / seconds,
        "rss_idle_mib": idle_kib / 1024, **rss.figures(),
        **largest_event(dsn, execution_id), "longest_pause_s": longest_pause(dsn, execution_id),
        **checks,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=220)
    parser.add_argument("--kb", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--warmup-rows", type=int, default=10)
    parser.add_argument("--modes", default="direct_stress,chunked_optimal")
    parser.add_argument("--tuned-flags", default="--concurrency 6",
                        help="`noetl worker` flags of a second, tuned run of each mode "
                             "('' skips it)")
    args = parser.parse_args(argv)

    example = load_example("examples/heavy_payload/run.py")
    dsn = create_database("noetl_bench_heavy")
    server, url = example.echo_server.start()
    try:
        migrate(dsn)
        example.prepare(dsn)
        modes = args.modes.split(",")
        runs = [run_mode(example, dsn, url, mode, args, []) for mode in modes]
        tuned = [run_mode(example, dsn, url, mode, args, args.tuned_flags.split())
                 for mode in modes if args.tuned_flags]
    finally:
        server.shutdown()
        server.server_close()
        drop_database(dsn)

    figures, targets = [], []
    for run in runs:
        mode = run["mode"]
        print(f"{mode}: {run['status']} {run['seconds']:.1f}s {run['items_per_s']:.1f} items/s "
              f"{run['mb_per_s']:.1f} MB/s; worker RSS idle {run['rss_idle_mib']:.0f} MiB, "
              f"start {run['rss_start_mib']:.0f}, peak {run['rss_peak_mib']:.0f}, end "
              f"{run['rss_end_mib']:.0f} (tree peak {run['tree_rss_peak_mib']:.0f}); largest "
              f"event {run['largest_event_bytes']} B; stored {run['stored_rows']}, missing "
              f"{run['missing_rows']}; longest pause {run['longest_pause_s']:.2f}s", flush=True)
        figures += [
            figure(f"{mode} throughput", run["items_per_s"], "items/s",
                   run["seconds"] / args.rows, f"{args.rows} x {args.kb} KB, noetl worker"),
            figure(f"{mode} payload rate", run["mb_per_s"], "MB/s"),
            figure(f"{mode} worker RSS start / peak / end",
                   run["rss_peak_mib"], "MiB peak",
                   note=f"start {run['rss_start_mib']:.0f}, end {run['rss_end_mib']:.0f}, "
                        f"idle before warm-up {run['rss_idle_mib']:.0f}; with executors "
                        f"{run['tree_rss_start_mib']:.0f}/{run['tree_rss_peak_mib']:.0f}/"
                        f"{run['tree_rss_end_mib']:.0f}"),
            figure(f"{mode} largest event row", run["largest_event_bytes"], "bytes",
                   note=f"{run['events'] / args.rows:.2f} events per item"),
            figure(f"{mode} missing rows", run["missing_rows"], "rows",
                   note=f"stored {run['stored_rows']} of {args.rows}"),
        ]
        targets += [
            {"name": f"{mode}: completed, no stall (longest pause between rows)",
             "measured": round(run["longest_pause_s"], 2), "op": "<", "limit": STALL_SECONDS,
             "met": run["status"] == "COMPLETED" and run["longest_pause_s"] < STALL_SECONDS},
            {"name": f"{mode}: worker RSS peak / start", "measured":
             round(run["peak_over_start"], 2), "op": "<", "limit": 1.5,
             "met": run["peak_over_start"] < 1.5},
            {"name": f"{mode}: largest event row (bytes)", "measured":
             run["largest_event_bytes"], "op": "<=", "limit": 4096,
             "met": run["largest_event_bytes"] <= 4096},
            {"name": f"{mode}: missing rows", "measured": run["missing_rows"], "op": "==",
             "limit": 0, "met": run["missing_rows"] == 0 and run["stored_rows"] == args.rows},
        ]
    for run in tuned:
        print(f"{run['mode']} (noetl worker {run['worker_flags']}): {run['status']} "
              f"{run['seconds']:.1f}s {run['items_per_s']:.1f} items/s; worker RSS start "
              f"{run['rss_start_mib']:.0f} MiB, peak {run['rss_peak_mib']:.0f}; missing "
              f"{run['missing_rows']}", flush=True)
        figures.append(figure(
            f"{run['mode']} throughput, tuned", run["items_per_s"], "items/s",
            run["seconds"] / args.rows,
            f"noetl worker {run['worker_flags']}; {run['mb_per_s']:.1f} MB/s, RSS start "
            f"{run['rss_start_mib']:.0f} / peak {run['rss_peak_mib']:.0f} MiB, largest event "
            f"{run['largest_event_bytes']} B, missing {run['missing_rows']}"))
    write_result("heavy_payload", figures, {"targets": targets, "runs": runs, "tuned": tuned,
                                            "rows": args.rows, "kb": args.kb,
                                            "batch_size": args.batch_size})
    return 0 if all(run["status"] == "COMPLETED" for run in runs + tuned) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
