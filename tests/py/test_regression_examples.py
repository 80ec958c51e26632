"""examples/regression: the seeds' regression suite, sequential (case/then chain) and
parallel (loop, mode async, concurrency 10), each over the 48 children after a sequential
setup phase; each master's summary step counts its children by status."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from types import ModuleType

from engine_harness import REPO_ROOT, Engine


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "regression_run", REPO_ROOT / "examples" / "regression" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_both_masters_run_every_child_once_and_count_them(fresh_engine: Engine) -> None:
    runner = _runner()
    runs = runner.run_suite(fresh_engine.dsn)
    assert [run.master for run in runs] == list(runner.MASTERS)
    for run in runs:
        assert run.status == "COMPLETED", run.error
        assert run.summary == {"completed": 48, "failed": 0, "total": 48}
        children = fresh_engine.sql(
            "select path, status from noetl.execution where parent_execution_id = %s",
            run.execution_id)
        paths = [row["path"] for row in children if row["path"].startswith("regression/children/")]
        assert len(paths) == len(set(paths)) == 48
        kinds = {path.split("/")[-1].rsplit("_", 1)[0] for path in paths}
        assert kinds == {"python", "postgres", "duckdb", "http"}
        setup = [row["path"] for row in children if row["path"].startswith("regression/setup/")]
        assert sorted(setup) == ["regression/setup/create_schema", "regression/setup/reset_rows"]
        assert all(row["status"] == "COMPLETED" for row in children)
    sequential, parallel = runs
    # The setup phase runs one child at a time: reset_rows starts after create_schema ended.
    order = fresh_engine.sql(
        "select e.path, e.started_at, e.finished_at from noetl.execution as e "
        "where e.parent_execution_id = %s and e.path like 'regression/setup/%%' "
        "order by e.started_at", parallel.execution_id)
    assert [row["path"] for row in order] == ["regression/setup/create_schema",
                                              "regression/setup/reset_rows"]
    assert order[1]["started_at"] >= order[0]["finished_at"]
    # The sequential chain runs its children one after another, in test order.
    chain = fresh_engine.sql(
        "select e.started_at, e.finished_at from noetl.execution as e "
        "where e.parent_execution_id = %s and e.path like 'regression/children/%%' "
        "order by e.started_at", sequential.execution_id)
    assert all(later["started_at"] >= earlier["finished_at"]
               for earlier, later in itertools.pairwise(chain))
    # The parallel master ran its children as one loop, at most 10 at a time.
    loop = fresh_engine.sql("select max_in_flight, mode, total, done, failed from noetl.loop "
                            "where execution_id = %s and step_name = 'run_tests_parallel'",
                            parallel.execution_id)
    assert loop == [{"max_in_flight": 10, "mode": "parallel", "total": 48, "done": 48,
                     "failed": 0}]
    # Each postgres child wrote its rows (the parallel run's, after reset_rows emptied it).
    rows = fresh_engine.sql("select count(distinct child) as children, count(*) as n "
                            "from regression.child_rows")
    assert rows == [{"children": 12, "n": sum(i + 1 for i in range(1, 13))}]
