"""NATS against LISTEN/NOTIFY: wake-up latency of 1,000 concurrent loop iterations, and loop
throughput with 4 `noetl worker` processes.

Runs on a database of its own (noetl_pg.testdb) and a NATS server with JetStream
(`--nats-url`, default nats://127.0.0.1:4222) under a subject prefix of its own.

1. Wake-up latency. 4 worker processes (`--slots` slots each, serving only the loop's
   `noop` iterations) wait idle. This script claims a loop command itself and calls
   noetl.start_loop with 1,000 items and max_in_flight 1,000: one transaction queues all
   1,000 iterations. It notes the time of its commit; in NOTIFY mode the commit notifies,
   in NATS mode its session sends no NOTIFY and it publishes the counts it takes after the
   commit (noetl.take_wake_counts, then offers and a broadcast: the path a worker uses).
   Latency of an iteration = the start of the transaction that claimed it (its
   command.claimed event) - the commit. Reported: p50 and p99 over every iteration of
   every round (how long an iteration waited to be picked up: mostly queueing behind the
   16 slots), and the first pick-up per round (the wake-up itself).
2. Loop throughput. 4 worker processes serving everything run a loop of `--items` noop
   iterations, max_in_flight `--width`, started with noetl.start_execution; iterations/s =
   items / (finished_at - started_at) of the execution, median of `--runs` runs.
3. Report ingestion (NATS mode only, while the 4 workers of 2 run their consumers): 1,000
   heartbeat reports of distinct worker ids published one after another to the events
   stream; latency = when a poller (every 5 ms) first sees the row - the publish. Against
   it: 1,000 noetl.report_worker calls made directly, one round trip each.
Prints a table with the ratios (NOTIFY / NATS for latencies, NATS / NOTIFY for
throughput) and writes bench/results/nats_wakeup.json.

Usage: .venv/bin/python bench/nats_wakeup.py [--nats-url URL] [--rounds R] [--items N]
       [--width W] [--runs R] [--slots S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from noetl_pg import db
from noetl_pg.catalog import register_text
from noetl_pg.migrate import migrate
from noetl_pg.nats_bus import NatsBus, NatsSettings
from noetl_pg.testdb import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "nats_wakeup.json"
NOETL = Path(sys.executable).with_name("noetl")
WORKERS = 4
CONCURRENT = 1000

LOOP = """
metadata: {{name: nats_wakeup, path: {path}}}
workload: {{items: {items}, width: {width}}}
workflow:
  - step: each
    loop:
      in: "{{{{ range(workload.items) | list }}}}"
      iterator: i
      spec: {{mode: parallel, max_in_flight: {width}}}
    tool: {{kind: noop}}
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Workers:
    def __init__(self, dsn: str, nats: NatsSettings | None, slots: int,
                 kinds: str | None) -> None:
        env = {**os.environ, "NOETL_DSN": dsn}
        env.pop("NOETL_NATS_URL", None)
        if nats is not None:
            env.update(NOETL_NATS_URL=nats.url, NOETL_NATS_PREFIX=nats.prefix)
        tag = uuid.uuid4().hex[:4]
        args = ["--concurrency", str(slots), "--batch-size", "16", "--no-projector"]
        if kinds:
            args += ["--kinds", kinds]
        self.procs = [
            subprocess.Popen([str(NOETL), "worker", "--worker-id", f"bench-{tag}-{i}", *args],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(WORKERS)
        ]
        with db.connect(dsn) as conn:
            deadline = time.monotonic() + 30
            while _scalar(conn, f"select count(*) from noetl.worker where stopped_at is null "
                                f"and worker_id like 'bench-{tag}-%'") < WORKERS:
                if time.monotonic() > deadline:
                    raise RuntimeError("workers did not register")
                time.sleep(0.05)
        time.sleep(1.5)  # every slot connected, NATS subscribed, all idle

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _scalar(conn: psycopg.Connection[Any], statement: str, *params: Any) -> Any:
    row = conn.execute(statement, params or None).fetchone()
    assert row is not None
    return next(iter(row.values()))


def _wait_finished(conn: psycopg.Connection[Any], execution_id: int) -> None:
    deadline = time.monotonic() + 600
    while _scalar(conn, "select status from noetl.execution where execution_id = %s",
                  execution_id) == "RUNNING":
        if time.monotonic() > deadline:
            raise RuntimeError(f"execution {execution_id} did not finish")
        time.sleep(0.02)
    status = _scalar(conn, "select status from noetl.execution where execution_id = %s",
                     execution_id)
    if status != "COMPLETED":
        raise RuntimeError(f"execution {execution_id} ended {status}")


def wakeup_round(dsn: str, path: str, publisher: NatsBus | None) -> dict[str, Any]:
    """One loop of 1,000 iterations queued at once by this script; latencies in ms."""
    with db.connect(dsn) as conn:
        execution_id = int(_scalar(conn, "select noetl.start_execution(%s, '{}')", path))
        command = conn.execute(
            "select command_id, attempt from noetl.claim_commands('bench', array['loop'], 1)"
        ).fetchone()
        assert command is not None
        db.fetch_one(conn, "set_wakeup_nats", nats=publisher is not None)
        items = list(range(CONCURRENT))
        conn.execute("select noetl.start_loop(%s, %s, %s, %s, null)",
                     (command["command_id"], command["attempt"], Jsonb(items),
                      Jsonb({"iterator": "i", "mode": "parallel",
                             "max_in_flight": CONCURRENT})))
        committed = datetime.now(UTC)
        if publisher is not None:
            row = db.fetch_one(conn, "take_wake_counts")
            assert row is not None and publisher.wake(row["counts"]), row
        _wait_finished(conn, execution_id)
        claimed = [r["created_at"] for r in conn.execute(
            "select created_at from noetl.event where execution_id = %s "
            "and event_type = 'command.claimed' and loop_id is not null",
            (execution_id,)).fetchall()]
    assert len(claimed) == CONCURRENT, len(claimed)
    latencies = [max(0.0, (at - committed).total_seconds() * 1000) for at in claimed]
    return {"latencies_ms": latencies, "first_ms": min(latencies)}


def throughput_run(dsn: str, path: str) -> float:
    with db.connect(dsn) as conn:
        execution_id = int(_scalar(conn, "select noetl.start_execution(%s, '{}')", path))
        _wait_finished(conn, execution_id)
        return float(_scalar(
            conn, "select extract(epoch from finished_at - started_at) from noetl.execution "
                  "where execution_id = %s", execution_id))


def ingestion(dsn: str, publisher: NatsBus) -> dict[str, float]:
    """Reports over NATS until applied, against direct report_worker calls (ms)."""
    tag = uuid.uuid4().hex[:6]
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def poll() -> None:
        with db.connect(dsn) as conn:
            while not done.is_set() or len(seen) < len(sent):
                rows = conn.execute("select worker_id from noetl.worker where worker_id like %s",
                                    (f"ingest-{tag}-%",)).fetchall()
                now = time.monotonic()
                for row in rows:
                    seen.setdefault(row["worker_id"], now)
                if done.is_set() and time.monotonic() - max(sent.values()) > 30:
                    break
                time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    for index in range(CONCURRENT):
        worker_id = f"ingest-{tag}-{index}"
        sent[worker_id] = time.monotonic()
        report = {"worker_id": worker_id, "slots": 1, "available_slots": 1,
                  "sent_at": datetime.now(UTC).isoformat()}
        if not publisher.publish_report(report):
            raise RuntimeError("a report was not stored by NATS")
    done.set()
    poller.join()
    over_nats = [(seen[w] - sent[w]) * 1000 for w in sent if w in seen]
    direct: list[float] = []
    with db.connect(dsn) as conn:
        for index in range(CONCURRENT):
            report = {"worker_id": f"direct-{tag}-{index}", "slots": 1, "available_slots": 1}
            started = time.monotonic()
            db.fetch_one(conn, "report_worker", report=report)
            direct.append((time.monotonic() - started) * 1000)
    return {"ingest_applied": len(over_nats),
            "ingest_p50_ms": _percentile(over_nats, 0.50),
            "ingest_p99_ms": _percentile(over_nats, 0.99),
            "direct_p50_ms": _percentile(direct, 0.50),
            "direct_p99_ms": _percentile(direct, 0.99)}


def measure(dsn: str, nats: NatsSettings | None, args: argparse.Namespace,
            paths: dict[str, str]) -> dict[str, Any]:
    publisher = None
    if nats is not None:
        publisher = NatsBus(nats, worker_id=f"bench-pub-{uuid.uuid4().hex[:4]}",
                            kinds=["none"], dsn=dsn, on_wake=lambda kind, n: 0,
                            free_slots=lambda: 0)
        publisher.start()
        if not publisher.wait_connected(10):
            raise RuntimeError(f"NATS {nats.url} not reachable")
    try:
        workers = Workers(dsn, nats, args.slots, "noop")
        try:
            time.sleep(1.0)  # the publisher learns the workers' capacity
            rounds = [wakeup_round(dsn, paths["wakeup"], publisher)
                      for _ in range(args.rounds)]
        finally:
            workers.stop()
        workers = Workers(dsn, nats, args.slots, None)
        try:
            throughput_run(dsn, paths["throughput"])  # warm-up
            seconds = [throughput_run(dsn, paths["throughput"]) for _ in range(args.runs)]
            ingest = ingestion(dsn, publisher) if publisher is not None else {}
        finally:
            workers.stop()
    finally:
        if publisher is not None:
            publisher.stop()
    latencies = [value for r in rounds for value in r["latencies_ms"]]
    median_seconds = statistics.median(seconds)
    return {
        "pickup_p50_ms": _percentile(latencies, 0.50),
        "pickup_p99_ms": _percentile(latencies, 0.99),
        "first_pickup_p50_ms": statistics.median(r["first_ms"] for r in rounds),
        "first_pickup_max_ms": max(r["first_ms"] for r in rounds),
        "loop_seconds": median_seconds,
        "iterations_per_s": args.items / median_seconds,
        "runs_seconds": seconds,
        **ingest,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", default=os.environ.get("NOETL_NATS_URL")
                        or "nats://127.0.0.1:4222")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args(argv)

    dsn = create_database("noetl_bench")
    nats = NatsSettings(args.nats_url, f"bench{uuid.uuid4().hex[:6]}")
    try:
        migrate(dsn)
        paths = {"wakeup": "bench/nats_wakeup", "throughput": "bench/nats_throughput"}
        with db.connect(dsn) as conn:
            register_text(conn, LOOP.format(path=paths["wakeup"], items=1, width=1),
                          source=paths["wakeup"])
            register_text(conn, LOOP.format(path=paths["throughput"], items=args.items,
                                            width=args.width), source=paths["throughput"])
        results = {"notify": measure(dsn, None, args, paths),
                   "nats": measure(dsn, nats, args, paths)}
    finally:
        drop_database(dsn)

    notify, over_nats = results["notify"], results["nats"]
    ratios = {
        "pickup_p50_notify_over_nats": notify["pickup_p50_ms"] / over_nats["pickup_p50_ms"],
        "pickup_p99_notify_over_nats": notify["pickup_p99_ms"] / over_nats["pickup_p99_ms"],
        "first_pickup_notify_over_nats":
            notify["first_pickup_p50_ms"] / max(over_nats["first_pickup_p50_ms"], 1e-3),
        "throughput_nats_over_notify":
            over_nats["iterations_per_s"] / notify["iterations_per_s"],
    }
    print(f"{CONCURRENT} iterations queued at once, {WORKERS} workers x {args.slots} slots, "
          f"{args.rounds} rounds; loop of {args.items} (width {args.width}), "
          f"median of {args.runs}")
    print(f"{'mode':>7} {'p50 ms':>8} {'p99 ms':>8} {'first ms':>9} {'it/s':>8}")
    for mode, row in results.items():
        print(f"{mode:>7} {row['pickup_p50_ms']:>8.1f} {row['pickup_p99_ms']:>8.1f} "
              f"{row['first_pickup_p50_ms']:>9.2f} {row['iterations_per_s']:>8.0f}")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(f"reports over NATS applied: {over_nats['ingest_applied']}, p50 "
          f"{over_nats['ingest_p50_ms']:.1f} ms, p99 {over_nats['ingest_p99_ms']:.1f} ms; "
          f"direct report_worker p50 {over_nats['direct_p50_ms']:.2f} ms, p99 "
          f"{over_nats['direct_p99_ms']:.2f} ms")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "results": results,
                                   "ratios": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
