"""Worker memory while a postgres step streams a large result (`tool.output.stream`).

Runs on a database of its own (noetl_pg.testdb). A `noetl worker` process (2 slots) runs a
postgres step (`--tool duckdb`: a duckdb step over `range`) that streams `--rows` rows
(default 10,000,000; about 80 s on a loaded 2-core machine) in chunks of `--chunk-rows`
(default 100,000) to a `noop` step wired `on: call.partial`; its resident set (VmRSS of
/proc/<pid>/status) is sampled every 0.1 s. A second, fresh worker process runs the same
query limited to one chunk without streaming: what holding one chunk costs the worker
(its rows as a step result, stored by ref). Both workers first run a small warm-up stream
and a small plain query, so imports and pools are in their baseline.

Reported: each worker's baseline RSS, its peak growth over the baseline, the stream's RSS
at each quarter of its chunks (flat: no growth with the rows read), the ratio of the
stream's peak growth to one chunk's, and rows/s. Chunks over the inline limit go to the
fs tier in a temporary directory (removed at the end), not to the database.

Usage: .venv/bin/python bench/stream_rss.py [--rows N] [--chunk-rows C] [--tool postgres|duckdb]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import figure, write_result

from noetl_pg import db
from noetl_pg.catalog import register_text
from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

NOETL = Path(sys.executable).with_name("noetl")
QUERIES = {
    "postgres": "select g as id, g % 997 as bucket from generate_series(1, {rows}) as g",
    "duckdb": "select g as id, g % 997 as bucket from range(1, {rows} + 1) as t (g)",
}

STREAM = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: stream_rss, path: bench/stream_rss_{rows}}}
workflow:
  - step: scan
    tool: {{{tool}, output: {{stream: {{chunk_rows: {chunk_rows}}}}}}}
    next:
      arcs:
        - {{step: each, on: call.partial}}
  - step: each
    tool: {{kind: noop}}
"""

PLAIN = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: plain_rss, path: bench/plain_rss_{rows}}}
workflow:
  - step: scan
    tool: {{{tool}}}
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Sampler:
    """RSS of `pid` every 0.1 s, with the count of the execution's call.partial events."""

    def __init__(self, pid: int, dsn: str) -> None:
        self.pid, self.dsn = pid, dsn
        self.samples: list[tuple[int, int]] = []
        self.execution_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with db.connect(self.dsn) as conn:
            while not self._stop.wait(0.1):
                chunks = 0
                if self.execution_id is not None:
                    row = conn.execute(
                        "select count(*) as n from noetl.stream_chunk where execution_id = %s",
                        (self.execution_id,)).fetchone()
                    chunks = int(row["n"]) if row else 0
                self.samples.append((chunks, rss_kib(self.pid)))


def start_worker(dsn: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(NOETL), "worker", "--concurrency", "2"],
        env={**env, "NOETL_DSN": dsn}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def start(dsn: str, text: str) -> int:
    """Register `text` and start it; returns the execution id."""
    with db.connect(dsn) as conn:
        registered = register_text(conn, text, source="bench/stream_rss.py")
        row = db.fetch_one(conn, "start_execution", path=registered.path, payload={},
                           version=None)
    assert row is not None
    return int(row["execution_id"])


def wait(dsn: str, execution_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with db.connect(dsn) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select status, error, extract(epoch from finished_at - started_at) as seconds "
                "from noetl.execution where execution_id = %s", (execution_id,)).fetchone()
            if row and row["status"] != "RUNNING":
                if row["status"] != "COMPLETED":
                    raise RuntimeError(f"execution {execution_id}: {row['error']}")
                return dict(row)
            time.sleep(0.2)
    raise TimeoutError(f"execution {execution_id} still running after {timeout}s")


def playbook(template: str, kind: str, dsn: str, rows: int, chunk_rows: int) -> str:
    query = QUERIES[kind].format(rows=rows)
    tool = (f'kind: postgres, auth: {{dsn: "{dsn}"}}, query: "{query}"' if kind == "postgres"
            else f'kind: duckdb, query: "{query}"')
    return template.format(tool=tool, rows=rows, chunk_rows=chunk_rows)


def warm(dsn: str, kind: str) -> None:
    for template in (STREAM, PLAIN):
        wait(dsn, start(dsn, playbook(template, kind, dsn, 100, 50)), 60)


def measure(dsn: str, env: dict[str, str], kind: str, text: str,
            timeout: float) -> dict[str, Any]:
    """Baseline and peak RSS (KiB) of a fresh worker running `text` after a warm-up."""
    worker = start_worker(dsn, env)
    try:
        warm(dsn, kind)
        time.sleep(0.5)
        baseline = rss_kib(worker.pid)
        with Sampler(worker.pid, dsn) as sampler:
            execution_id = start(dsn, text)
            sampler.execution_id = execution_id
            finished = wait(dsn, execution_id, timeout)
        peak = max(rss for _, rss in sampler.samples)
        return {"baseline_kib": baseline, "peak_kib": peak, "growth_kib": peak - baseline,
                "seconds": float(finished["seconds"]), "samples": sampler.samples,
                "execution_id": execution_id}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


def quarters(samples: list[tuple[int, int]], chunks: int) -> list[int]:
    """RSS (KiB) at the first sample reaching each quarter of the chunks."""
    marks = []
    for quarter in (1, 2, 3, 4):
        target = max(1, chunks * quarter // 4)
        marks.append(next((rss for done, rss in samples if done >= target), samples[-1][1]))
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--tool", choices=sorted(QUERIES), default="postgres")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    dsn = create_database("noetl_bench_stream")
    store_dir = tempfile.mkdtemp(prefix="noetl-stream-bench-")
    env = {**os.environ, "NOETL_PVC_MOUNT_PATH": store_dir,
           "NOETL_PVC_TIER_THRESHOLD_BYTES": "65536"}
    try:
        migrate(dsn)
        stream = measure(dsn, env, args.tool,
                         playbook(STREAM, args.tool, dsn, args.rows, args.chunk_rows),
                         args.timeout)
        one_chunk = measure(dsn, env, args.tool,
                            playbook(PLAIN, args.tool, dsn, args.chunk_rows, args.chunk_rows),
                            args.timeout)
        with db.connect(dsn) as conn:
            row = conn.execute(
                "select count(*) as n from noetl.command where execution_id = %s "
                "and step_name = 'each' and status = 'done'",
                (stream["execution_id"],)).fetchone()
        chunks = -(-args.rows // args.chunk_rows)
        assert row is not None and row["n"] == chunks, (row, chunks)
        result = {
            "tool": args.tool, "rows": args.rows, "chunk_rows": args.chunk_rows, "chunks": chunks,
            "stream_seconds": stream["seconds"],
            "rows_per_second": round(args.rows / stream["seconds"]),
            "stream_baseline_mib": round(stream["baseline_kib"] / 1024, 1),
            "stream_growth_mib": round(stream["growth_kib"] / 1024, 1),
            "stream_rss_at_quarters_mib": [round(kib / 1024, 1)
                                           for kib in quarters(stream["samples"], chunks)],
            "one_chunk_baseline_mib": round(one_chunk["baseline_kib"] / 1024, 1),
            "one_chunk_growth_mib": round(one_chunk["growth_kib"] / 1024, 1),
            "growth_over_one_chunk": round(stream["growth_kib"]
                                           / max(one_chunk["growth_kib"], 1), 2),
        }
    finally:
        drop_database(dsn)
        shutil.rmtree(store_dir, ignore_errors=True)
    write_result(f"stream_rss_{args.tool}", [
        figure(f"{args.tool} stream of {args.rows:,} rows", result["rows_per_second"],
               "rows/s", stream["seconds"] / chunks,
               f"{chunks} chunks of {args.chunk_rows:,} (the unit of the ratios: a chunk, "
               f"one call.partial and one noop step), noetl worker --concurrency 2"),
        figure("worker RSS growth while streaming", result["stream_growth_mib"], "MiB",
               note=f"baseline {result['stream_baseline_mib']} MiB; at each quarter "
                    f"{result['stream_rss_at_quarters_mib']}; one chunk held as a result: "
                    f"+{result['one_chunk_growth_mib']} MiB"),
    ], result)
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
