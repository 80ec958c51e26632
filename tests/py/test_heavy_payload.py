"""examples/heavy_payload: the seeds' heavy-payload pipeline (python -> http -> python ->
postgres per item), run small in both modes against the example's own echo server; every
seeded row is stored with the bytes that were sent, and no event row carries a payload."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import yaml
from engine_harness import REPO_ROOT, Engine

from noetl_pg.credentials import DatabaseCredentialResolver

ROWS, KB, BATCH = 12, 16, 5
HERE = REPO_ROOT / "examples" / "heavy_payload"


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("heavy_payload_run", HERE / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_both_modes_store_every_row_with_its_bytes(fresh_engine: Engine) -> None:
    runner = _runner()
    reports = runner.run_modes(fresh_engine.dsn, list(runner.MODES), rows=ROWS, kb=KB,
                               batch_size=BATCH)
    assert [report["mode"] for report in reports] == ["direct_stress", "chunked_optimal"]
    for report in reports:
        assert report["status"] == "COMPLETED", report["error"]
        assert (report["stored_rows"], report["ok_rows"], report["missing_rows"]) == (ROWS, ROWS, 0)
        assert (report["min_item_id"], report["max_item_id"]) == (1, ROWS)
        # Each item's blob made the round trip whole; the HTTP bodies are the blob plus JSON.
        assert report["min_payload_bytes"] == report["max_payload_bytes"] == KB * 1024
        assert KB * 1024 < report["avg_request_bytes"] < KB * 1024 + 100
        assert report["avg_request_bytes"] < report["avg_response_bytes"] < KB * 1024 + 200
        # The payloads never reach the event log: only small results are recorded.
        assert report["largest_event_bytes"] < 4096
        final = fresh_engine.sql("select result from noetl.execution where execution_id = %s",
                                 report["execution_id"])[0]["result"]
        assert final["rows"][0]["stored_rows"] == ROWS
        assert final["rows"][0]["missing_rows"] == 0

    direct, chunked = (report["execution_id"] for report in reports)
    assert fresh_engine.sql("select count(*) as n from noetl.execution "
                            "where parent_execution_id = %s", direct) == [{"n": 0}]
    assert fresh_engine.sql("select step_name, total, done from noetl.loop "
                            "where execution_id = %s", direct) == [
        {"step_name": "direct_stress", "total": ROWS, "done": ROWS}]
    # chunked_optimal: ceil(12 / 5) = 3 windows, each a child with its own loop.
    assert fresh_engine.sql("select max_in_flight, total, done from noetl.loop "
                            "where execution_id = %s", chunked) == [
        {"max_in_flight": 3, "total": 3, "done": 3}]
    children = fresh_engine.sql(
        "select x.path, x.status, x.result -> 'rows' -> 0 as window, l.total, l.max_in_flight "
        "from noetl.execution as x join noetl.loop as l using (execution_id) "
        "where x.parent_execution_id = %s order by x.execution_id", chunked)
    assert {row["path"] for row in children} == {runner.CHUNK_WORKER}
    assert all(row["status"] == "COMPLETED" and row["max_in_flight"] == 15 for row in children)
    assert sorted((row["window"]["first_item"], row["window"]["last_item"],
                   row["window"]["stored_rows"], row["total"]) for row in children) == [
        (1, 5, 5, 5), (6, 10, 5, 5), (11, 12, 2, 2)]


def test_both_modes_run_the_same_four_tasks() -> None:
    parent = yaml.safe_load((HERE / "heavy_payload_pipeline.yaml").read_text())
    child = yaml.safe_load((HERE / "heavy_payload_chunk_worker.yaml").read_text())

    def tasks(document: dict, step: str) -> list:
        return next(s["tool"] for s in document["workflow"] if s["step"] == step)

    direct = tasks(parent, "direct_stress")
    assert [task["kind"] for task in direct] == ["python", "http", "python", "postgres"]
    assert direct == tasks(child, "process")


def test_an_unknown_mode_fails_naming_it(fresh_engine: Engine) -> None:
    runner = _runner()
    runner.prepare(fresh_engine.dsn)
    execution_id = runner.start_run(fresh_engine.dsn, "sideways", "http://127.0.0.1:1/x",
                                    rows=2, kb=1)
    with fresh_engine.worker(credentials=DatabaseCredentialResolver(fresh_engine.dsn)):
        final = fresh_engine.wait(execution_id)
    assert final["status"] == "FAILED"
    assert "execution_mode must be direct_stress or chunked_optimal, got 'sideways'" \
        in final["error"]
    assert runner.validation(fresh_engine.dsn, execution_id)["missing_rows"] == 2
