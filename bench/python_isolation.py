"""Per-call overhead of `kind: python` in each isolation mode (median of N calls).

    .venv/bin/python bench/python_isolation.py [calls]

Runs a trivial snippet (`result = x + 1`) through PythonTool, inline (in this process)
and process (warm executor subprocess from the pool: one pipe round trip plus JSON),
after a warm-up, and prints the median, p90 and mean microseconds per call of each. Writes
bench/results/python_isolation.json.
"""

from __future__ import annotations

import statistics
import sys
import time

from benchlib import figure, write_result

from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.python import PythonTool, worker_pool
from noetl_pg.tools.python_executor import Executor

SNIPPET = "result = x + 1"


def measure(mode: str, calls: int, resources: dict) -> list[float]:
    tool = PythonTool()
    context = ToolContext(execution_id=1, step="bench", command_id=1, attempt=1, dsn="",
                          worker_resources=resources)
    config = {"code": SNIPPET, "input": {"x": 1}, "spec": {"isolation": mode}}
    for _ in range(50):
        tool.run(config, context)
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        tool.run(config, context)
        timings.append((time.perf_counter() - started) * 1e6)
    return timings


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    resources: dict = {}
    figures = []
    try:
        for mode in ("inline", "process"):
            timings = sorted(measure(mode, calls, resources))
            median = statistics.median(timings)
            p90 = timings[int(len(timings) * 0.9)]
            print(f"{mode:8s} median {median:8.1f} us  p90 {p90:8.1f} us"
                  f"  mean {statistics.fmean(timings):8.1f} us  ({calls} calls)")
            figures.append(figure(f"kind: python call, {mode}", median, "us/call",
                                  median / 1e6, f"p90 {p90:.1f} us, {calls} calls"))
    finally:
        worker_pool(resources).close()
    started = time.perf_counter()
    executor = Executor()
    executor.call({"code": "result = 1", "input": {}, "libs": {}}, 30)
    cold_ms = (time.perf_counter() - started) * 1e3
    print(f"cold executor start + first call: {cold_ms:.1f} ms")
    executor.kill()
    figures.append(figure("cold executor start + first call", cold_ms, "ms"))
    write_result("python_isolation", figures, {"calls": calls})


if __name__ == "__main__":
    main()
