"""The seeds' regression suite in both forms (examples/regression, as `make regression`).

Each round, on a database of its own: the sequential master (a case/then chain of the 48
children) then the parallel master (one loop, mode async, concurrency 10), served by an
in-process worker with the slots `noetl run` gives by default (one per CPU, 2..8) and, in
the same round, with `--tuned-slots` (4: what `make regression` uses). Reported: the median
over rounds of each master's time (start to the end of its summary step, seen from the
client), its seconds per child, and sequential / parallel. NoETL's seed measured 81 s for
the sequential form and hoped for 15-25 s in parallel.

    .venv/bin/python bench/regression.py [--rounds 3] [--tuned-slots 4]

Writes bench/results/regression.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from benchlib import figure, load_example, write_result

from noetl_pg.testdb import create_database, drop_database
from noetl_pg.worker import default_slots


def one_round(suite: Any, slots: int) -> dict[str, float]:
    dsn = create_database("noetl_bench_regression")
    try:
        runs = suite.run_suite(dsn, slots=slots)
    finally:
        drop_database(dsn)
    if not suite.report(runs):
        raise RuntimeError("the regression suite did not complete every child")
    sequential, parallel = runs
    return {"sequential": sequential.seconds, "parallel": parallel.seconds}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tuned-slots", type=int, default=4)
    args = parser.parse_args(argv)

    suite = load_example("examples/regression/run.py")
    configurations = {"default": default_slots(), "tuned": args.tuned_slots}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in configurations}
    for _ in range(args.rounds):
        for name, slots in configurations.items():
            rounds[name].append(one_round(suite, slots))

    figures = []
    medians: dict[str, dict[str, float]] = {}
    for name, slots in configurations.items():
        median = {form: statistics.median(r[form] for r in rounds[name])
                  for form in ("sequential", "parallel")}
        medians[name] = median
        for form, seconds in median.items():
            figures.append(figure(
                f"regression suite, {form} ({name}: {slots} slots)", seconds, "s",
                seconds / suite.CHILDREN, f"{suite.CHILDREN} children; NoETL's seed: "
                + ("81 s" if form == "sequential" else "15-25 s hoped for")))
        figures.append(figure(f"regression sequential / parallel ({name})",
                              median["sequential"] / median["parallel"], "x"))
        print(f"{name} ({slots} slots): sequential {median['sequential']:.1f}s, parallel "
              f"{median['parallel']:.1f}s", flush=True)
    write_result("regression", figures, {"slots": configurations, "medians": medians,
                                         "rounds_raw": rounds, "children": suite.CHILDREN})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
