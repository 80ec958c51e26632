"""Render bench/results/*.json (one file per bench) into bench/results.md.

    .venv/bin/python bench/collect.py --begin   # before the benches: clear old results,
                                                # note the start time and load
    .venv/bin/python bench/collect.py           # after them: write bench/results.md

Each figure that has seconds per unit of work (`per_unit_s`, see bench/benchlib.py) is
shown beside three ratios of seconds per unit: to a bare pgqueuer no-op job at batch 10
and at batch 100, and to the floor (bench/floor.sql: its fused step for figures in ms/step,
its loop item for every other one). The baselines are bench/bare_queue.py's, from the same
`make bench` run. BENCH_CONDITIONS (free text, e.g. "idle" or "other jobs running") is
written under the title beside the load averages measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from benchlib import RESULTS, ROOT

from noetl_pg.testdb import create_database, drop_database

OUTPUT = ROOT / "bench" / "results.md"
RUN = RESULTS / "_run.json"
# Order of the sections; a bench not listed comes after these, by name.
ORDER = ["bare_queue", "heavy_payload", "fanout", "regression", "user_paths",
         "loop_throughput", "step_latency", "python_isolation", "status_latency",
         "server_api", "stream_rss_postgres", "pft"]


def begin() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for old in RESULTS.glob("*.json"):
        old.unlink()
    RUN.write_text(json.dumps({"started": time.time(), "load_start": os.getloadavg()}))


def server_version() -> str:
    dsn = create_database("noetl_bench_collect")
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("show server_version").fetchone()
    finally:
        drop_database(dsn)
    return str(row[0]) if row else "?"


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3g}"


def ratios(item: dict[str, Any], baselines: dict[str, float]) -> list[str]:
    per_unit = item.get("per_unit_s")
    if not per_unit or not baselines:
        return ["", "", ""]
    floor = baselines["floor_step"] if "step" in item["unit"] else baselines["floor_loop"]
    return [number(per_unit / baselines[key]) for key in ("pgqueuer_b10", "pgqueuer_b100")] \
        + [number(per_unit / floor)]


def render(results: dict[str, dict[str, Any]], run: dict[str, Any]) -> str:
    baselines = results.get("bare_queue", {}).get("baselines", {})
    finished = time.time()
    started = run.get("started", finished)
    load_start = run.get("load_start", [0, 0, 0])
    conditions = os.environ.get("BENCH_CONDITIONS", "").strip()
    lines = [
        "# Benchmark results",
        "",
        f"`make bench`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}: "
        f"{os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, PostgreSQL {server_version()}; the whole run took "
        f"{(finished - started) / 60:.1f} min. Load average (1 min) "
        f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        + (f"; {conditions}." if conditions else "."),
        "",
        "Ratios are seconds per unit of work over the baseline's seconds per unit, measured "
        "in the same run by `bench/bare_queue.py`: a bare pgqueuer no-op job (batch 10, "
        "batch 100) and the floor (`bench/floor.sql`: its fused step for ms/step figures, "
        "its loop item for the others). 1.0 is the baseline's speed; 10 is ten times its "
        "time per unit. A unit is what the figure counts: an item, a step, a child playbook, "
        "a request. Each bench's JSON (`bench/results/<name>.json`, not committed) has the "
        "rounds behind the medians.",
        "",
    ]
    targets = [t for name in results for t in results[name].get("targets", [])]
    if targets:
        lines += ["## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
        lines += [f"| {t['name']} | {number(t['measured'])} | {t['op']} {number(t['limit'])} | "
                  f"{'yes' if t['met'] else '**no**'} |" for t in targets]
        lines.append("")
    names = [n for n in ORDER if n in results] + sorted(set(results) - set(ORDER))
    for name in names:
        script = results[name].get("script") or f"{name}.py"
        lines += [f"## {name} (`bench/{script}`)", "",
                  "| figure | value | unit | x pgqueuer b10 | x pgqueuer b100 | x floor | note |",
                  "|---|---|---|---|---|---|---|"]
        for item in results[name]["figures"]:
            cells = [item["name"], number(item["value"]), item["unit"],
                     *ratios(item, baselines), item.get("note") or ""]
            lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
        lines.append("")
    walls = [f"{name} {results[name]['wall_seconds']:.0f} s" for name in names
             if "wall_seconds" in results[name]]
    if walls:
        lines += ["Wall time of each bench (process start to its result file): "
                  + ", ".join(walls) + ".", ""]
    missing = [n for n in ORDER if n not in results]
    if missing:
        lines += [f"Not in this run (failed or not run): {', '.join(missing)}.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--begin", action="store_true")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.begin:
        begin()
        return 0
    run = json.loads(RUN.read_text()) if RUN.exists() else {}
    results = {path.stem: json.loads(path.read_text())
               for path in sorted(RESULTS.glob("*.json")) if not path.stem.startswith("_")}
    args.output.write_text(render(results, run))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
