"""HTTP API latency of `noetl server` (a real uvicorn process on 127.0.0.1).

Creates a scratch database and starts `noetl server --worker-slots NOETL_BENCH_SLOTS`
(default 4). Then:
  1. NOETL_BENCH_CONCURRENT (default 200) concurrent POST /api/execute of a one-step
     playbook: p50, p99, max, errors;
  2. while a NOETL_BENCH_ITEMS-item (default 10,000) parallel loop runs: GET
     /api/executions/{id} of that execution, sequentially, with include_events=false (the
     projection only) and with NoETL's default page of 100 events; p50/p99;
  3. GET /metrics, sequentially, during the same loop, and again once the loop has ended
     (idle: the workers' published window is empty).
Alongside 2., each sample also times an HTTP round trip that reads nothing (the favicon)
and the endpoint's statement run straight through psycopg: on a shared, loaded machine the
ratios say more than the absolute figures.
Prints the figures and writes them to bench/results/server_api.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))

from benchlib import figure, write_result
from server_harness import Server

from noetl_pg import db
from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

CONCURRENT = int(os.environ.get("NOETL_BENCH_CONCURRENT", "200"))
ITEMS = int(os.environ.get("NOETL_BENCH_ITEMS", "10000"))
SLOTS = int(os.environ.get("NOETL_BENCH_SLOTS", "4"))
SAMPLES = int(os.environ.get("NOETL_BENCH_SAMPLES", "300"))

ONE_STEP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: one_step, path: bench/server/one_step}
workflow:
  - step: only
    tool: {kind: noop}
"""

LOOP = f"""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: big_loop, path: bench/server/big_loop}}
workload: {{n: {ITEMS}}}
workflow:
  - step: items
    tool: {{kind: python, input: {{n: "{{{{ workload.n }}}}"}}, code: "result = list(range(n))"}}
    next: {{arcs: [{{step: work}}]}}
  - step: work
    loop:
      in: "{{{{ items }}}}"
      iterator: item
      spec: {{mode: parallel, max_in_flight: 100}}
    tool: {{kind: noop}}
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerCpu:
    """CPU milliseconds the server process spent per request over a block: a figure the
    machine's load does not inflate the way it inflates wall-clock latency."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> ServerCpu:
        self.start = cpu_seconds(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.spent = cpu_seconds(self.pid) - self.start

    def per_request_ms(self, requests: int) -> float:
        return round(1000 * self.spent / max(requests, 1), 2)


def summary(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"n": 0}
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2)}


def p50(samples: dict[str, Any]) -> float:
    """The median of a `summary` (0 when it had no samples)."""
    return float(samples.get("p50_ms", 0.0))


async def concurrent_executes(url: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def one() -> tuple[float, bool]:
            started = time.perf_counter()
            response = await client.post("/api/execute", json={"path": "bench/server/one_step"})
            return (time.perf_counter() - started) * 1000, response.status_code == 200

        wall = time.perf_counter()
        outcomes = await asyncio.gather(*(one() for _ in range(CONCURRENT)),
                                        return_exceptions=True)
        wall_s = time.perf_counter() - wall
    latencies = [o[0] for o in outcomes if isinstance(o, tuple) and o[1]]
    errors = len(outcomes) - len(latencies)
    return {**summary(latencies), "errors": errors, "wall_s": round(wall_s, 2),
            "per_second": round(len(latencies) / wall_s, 1)}


def timed_gets(client: httpx.Client, path: str, params: dict[str, Any] | None,
               stop_when: Any, baseline: Any = None) -> tuple[list[float], dict[str, list]]:
    """Sequential GETs of `path`; before each, the floors in `baseline` (name -> call) are
    timed too, so that the figures of a loaded machine can be read as ratios."""
    values: list[float] = []
    floors: dict[str, list[float]] = {name: [] for name in baseline or {}}
    for _ in range(SAMPLES):
        for name, call in (baseline or {}).items():
            started = time.perf_counter()
            call()
            floors[name].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        response = client.get(path, params=params)
        values.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        if stop_when(response):
            break
    return values, floors


def main() -> None:
    dsn = create_database("noetl_bench_server")
    server = None
    try:
        migrate(dsn)
        server = Server(dsn, worker_slots=SLOTS)
        with server.client() as client:
            for playbook in (ONE_STEP, LOOP):
                client.post("/api/catalog/register", json={"content": playbook}) \
                    .raise_for_status()
            # Warm up the pool and prepared statements.
            for _ in range(20):
                client.get("/api/health")
            pid = server.process.pid
            with ServerCpu(pid) as cpu_execute:
                execute = asyncio.run(concurrent_executes(server.url))
            execute["server_cpu_ms_per_request"] = cpu_execute.per_request_ms(CONCURRENT)

            execution_id = client.post("/api/execute", json={"path": "bench/server/big_loop"}) \
                .json()["execution_id"]
            path = f"/api/executions/{execution_id}"
            # Wait for the loop to start, so every sample is taken while it runs.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                loops = client.get(path, params={"include_events": "false"}).json()["loops"]
                if loops:
                    break
                time.sleep(0.1)

            def finished(response: httpx.Response) -> bool:
                return bool(response.json()["status"] != "RUNNING")

            with db.connect(dsn) as conn:
                baseline = {
                    # An HTTP round trip that touches no database (the favicon's 204).
                    "http_floor": lambda: client.get("/favicon.ico"),
                    # The endpoint's own statement, straight from psycopg.
                    "sql_only": lambda: db.fetch_one(conn, "server_execution",
                                                     execution_id=int(execution_id),
                                                     with_result=False),
                }
                projection_only, floors = timed_gets(
                    client, path, {"include_events": "false"}, finished, baseline)
            with ServerCpu(pid) as cpu_events:
                with_events, _ = timed_gets(client, path, None, finished)
            with ServerCpu(pid) as cpu_metrics:
                metrics, _ = timed_gets(client, "/metrics", None, lambda response: False)
            with ServerCpu(pid) as cpu_detail:
                detail_again, _ = timed_gets(client, path, {"include_events": "false"},
                                             lambda response: False)
            progress = client.get(path, params={"include_events": "false"}).json()
            loop = progress["loops"][0] if progress["loops"] else {}
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not finished(client.get(path, params={
                    "include_events": "false"})):
                time.sleep(0.5)
            with ServerCpu(pid) as cpu_idle:
                metrics_idle, _ = timed_gets(client, "/metrics", None, lambda response: False)
        figures = {
            "concurrent_execute": {"requests": CONCURRENT, **execute},
            "get_execution_projection_only": summary(projection_only),
            "get_execution_projection_only_after_loop": {
                **summary(detail_again),
                "server_cpu_ms_per_request": cpu_detail.per_request_ms(len(detail_again))},
            "http_floor_same_samples": summary(floors["http_floor"]),
            "sql_only_same_samples": summary(floors["sql_only"]),
            "get_execution_with_100_events": {
                **summary(with_events),
                "server_cpu_ms_per_request": cpu_events.per_request_ms(len(with_events))},
            "metrics": {**summary(metrics),
                        "server_cpu_ms_per_request": cpu_metrics.per_request_ms(len(metrics))},
            "metrics_idle": {
                **summary(metrics_idle),
                "server_cpu_ms_per_request": cpu_idle.per_request_ms(len(metrics_idle))},
            "loop_items": ITEMS,
            "loop_done_when_sampling_ended": loop.get("done"),
            "loop_status_when_sampling_ended": progress["status"],
            "worker_slots": SLOTS,
            "load_average": os.getloadavg()[0],
        }
        print(json.dumps(figures, indent=2))
        write_result("server_api", [
            figure(f"POST /api/execute, {CONCURRENT} concurrent", p50(execute), "ms p50",
                   execute["wall_s"] / CONCURRENT,
                   f"p99 {execute.get('p99_ms', 0.0):.1f} ms, errors {execute['errors']}"),
            figure("GET /api/executions/{id} (projection) during a loop",
                   p50(figures["get_execution_projection_only"]), "ms p50",
                   note=f"http floor {p50(figures['http_floor_same_samples']):.1f} ms, "
                        f"sql only {p50(figures['sql_only_same_samples']):.1f} ms"),
            figure("GET /api/executions/{id} with 100 events",
                   p50(figures["get_execution_with_100_events"]), "ms p50"),
            figure("GET /metrics during a loop", p50(figures["metrics"]), "ms p50"),
        ], figures)
    finally:
        if server is not None:
            server.stop()
        drop_database(dsn)


if __name__ == "__main__":
    main()
