"""Large results by reference, end to end: a result over the inline limit goes to a store
tier, events carry only its ref (and `event.result_ref`), later templates load it when they
touch it, DuckDB reads a Parquet ref in place, S3 works through moto, a tier that is down
falls back with a warning event, and a 220-item loop of 256 KB results keeps every event
row under 4 KB and the worker's memory flat.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from engine_harness import Engine
from test_store_tiers import CREDENTIALS, free_port, start_moto, stop

from noetl_pg.cli import main as cli_main
from noetl_pg.store import ResultStore
from noetl_pg.store.fs import FsTier
from noetl_pg.store.s3 import S3Tier

VENV_BIN = Path(sys.executable).parent

BIG_THEN_READ = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: big_then_read, path: test/big_then_read}
workflow:
  - step: fetch
    tool:
      kind: python
      code: |
        result = {"rows": [{"id": n, "text": "x" * 290} for n in range(1000)]}
    next: [{step: read}]
  - step: read
    tool:
      kind: python
      input:
        count: "{{ fetch.rows | length }}"
        last_id: "{{ fetch.rows[-1].id }}"
        ref: "{{ fetch_ref }}"
        uri: "ref={{ fetch_ref }}"
      code: |
        result = {"count": count, "last_id": last_id, "ref": ref, "uri": uri}
"""


def _max_event_bytes(engine: Engine, execution_id: int) -> int:
    row = engine.sql(
        "select max(octet_length(e::text)) as text_bytes, max(pg_column_size(e.*)) as row_bytes"
        " from noetl.event as e where e.execution_id = %s",
        execution_id,
    )[0]
    return max(row["text_bytes"], row["row_bytes"])


def _step_result(engine: Engine, execution_id: int, step: str) -> Any:
    return engine.sql(
        "select result from noetl.step_result where execution_id = %s and step_name = %s",
        execution_id, step,
    )[0]["result"]


def test_large_result_travels_by_ref_and_templates_load_it(
    fresh_engine: Engine, tmp_path: Path
) -> None:
    with fresh_engine.worker(slots=2, store=ResultStore(fresh_engine.dsn)):
        final = fresh_engine.run(BIG_THEN_READ)
    assert final["status"] == "COMPLETED", (final["failed_step"], final["error"])
    execution_id = final["execution_id"]
    uri = f"noetl://execution/{execution_id}/result/fetch/result"

    done = fresh_engine.sql(
        "select result, result_ref, octet_length(result::text) as size from noetl.event"
        " where execution_id = %s and event_type = 'call.done' and node_name = 'fetch'",
        execution_id,
    )
    assert len(done) == 1
    assert done[0]["result_ref"] == uri
    assert done[0]["size"] < 1024
    assert done[0]["result"]["store_tier"] == "db"
    assert done[0]["result"]["bytes_size"] > 300_000
    assert _step_result(fresh_engine, execution_id, "fetch")["result_ref"] == uri

    read = _step_result(fresh_engine, execution_id, "read")
    assert read["count"] == 1000 and read["last_id"] == 999
    assert read["ref"]["result_ref"] == uri          # `_ref`: the ref, not the value
    assert read["uri"] == f"ref={uri}"                # inside text: the URI
    assert _max_event_bytes(fresh_engine, execution_id) < 4096

    env = {"NOETL_DSN": fresh_engine.dsn}
    listed = CliRunner().invoke(cli_main, ["results", str(execution_id), "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert uri in listed.output
    cleaned = CliRunner().invoke(cli_main, ["results", "cleanup", str(execution_id)], env=env)
    assert cleaned.exit_code == 0, cleaned.output
    assert "deleted 1 result(s)" in cleaned.output
    assert fresh_engine.sql(
        "select count(*) as n from noetl.result_ref where execution_id = %s", execution_id
    )[0]["n"] == 0
    assert fresh_engine.sql(
        "select count(*) as n from noetl.result_blob where execution_id = %s", execution_id
    )[0]["n"] == 0


PARQUET_TO_DUCKDB = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: parquet_to_duckdb, path: test/parquet_to_duckdb}
workflow:
  - step: write
    tool:
      kind: python
      libs: {io: io, pa: pyarrow, pq: pyarrow.parquet}
      spec: {isolation: inline}     # bytes results need the in-process interpreter
      output: {store: fs}
      code: |
        table = pa.table({"id": list(range(5000)), "even": [n % 2 == 0 for n in range(5000)]})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        result = sink.getvalue()
    next: [{step: write_small}]
  - step: write_small
    tool:
      kind: python
      libs: {io: io, pa: pyarrow, pq: pyarrow.parquet}
      spec: {isolation: inline}
      code: |
        sink = io.BytesIO()
        pq.write_table(pa.table({"id": [1, 2, 3]}), sink)
        result = sink.getvalue()
    next: [{step: count}]
  - step: count
    tool:
      kind: duckdb
      query: >
        select
          (select count(*) from read_parquet('{{ write_ref }}')) as total,
          (select count(*) from read_parquet('{{ write_ref }}') where even) as even,
          (select count(*) from read_parquet('{{ write_small_ref }}')) as small
"""


def test_duckdb_counts_rows_of_a_parquet_ref(fresh_engine: Engine, tmp_path: Path) -> None:
    store = ResultStore(fresh_engine.dsn, fs=FsTier(tmp_path))
    with fresh_engine.worker(slots=2, store=store):
        final = fresh_engine.run(PARQUET_TO_DUCKDB)
    assert final["status"] == "COMPLETED", (final["failed_step"], final["error"])
    execution_id = final["execution_id"]

    written = _step_result(fresh_engine, execution_id, "write")
    assert written["store_tier"] == "fs"          # forced by output.store
    assert written["content_type"] == "application/octet-stream"
    assert list(tmp_path.glob(f"noetl-results/{execution_id}/write/result/*"))
    # Small bytes still go by ref (events are JSON), to the default tier: db.
    assert _step_result(fresh_engine, execution_id, "write_small")["store_tier"] == "db"

    counted = _step_result(fresh_engine, execution_id, "count")
    assert counted["rows"] == [{"total": 5000, "even": 2500, "small": 3}]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    process, endpoint = start_moto()
    yield endpoint
    stop(process)


def test_s3_tier_end_to_end(fresh_engine: Engine, s3_endpoint: str) -> None:
    store = ResultStore(fresh_engine.dsn, s3=S3Tier(s3_endpoint, "engine-results", CREDENTIALS))
    with fresh_engine.worker(slots=2, store=store):
        final = fresh_engine.run(BIG_THEN_READ)
    assert final["status"] == "COMPLETED", (final["failed_step"], final["error"])
    execution_id = final["execution_id"]
    ref = _step_result(fresh_engine, execution_id, "fetch")
    assert ref["store_tier"] == "s3"
    physical = fresh_engine.sql(
        "select physical_uri from noetl.result_ref where ref = %s", ref["result_ref"]
    )[0]["physical_uri"]
    assert physical.startswith("s3://engine-results/")
    assert _step_result(fresh_engine, execution_id, "read")["count"] == 1000
    assert not fresh_engine.sql(
        "select 1 from noetl.event where execution_id = %s"
        " and event_type = 'result.store.fallback'", execution_id,
    )
    report = store.cleanup_execution(execution_id)
    assert report.refs_deleted == 1 and not report.leftovers


def test_s3_down_falls_back_with_a_warning_event(fresh_engine: Engine, tmp_path: Path) -> None:
    dead_s3 = S3Tier(f"http://127.0.0.1:{free_port()}", "nowhere", CREDENTIALS)
    store = ResultStore(fresh_engine.dsn, s3=dead_s3, fs=FsTier(tmp_path))
    with fresh_engine.worker(slots=2, store=store):
        final = fresh_engine.run(BIG_THEN_READ)
    assert final["status"] == "COMPLETED", (final["failed_step"], final["error"])
    execution_id = final["execution_id"]
    assert _step_result(fresh_engine, execution_id, "fetch")["store_tier"] == "fs"
    assert _step_result(fresh_engine, execution_id, "read")["count"] == 1000
    warnings = fresh_engine.sql(
        "select node_name, meta from noetl.event where execution_id = %s"
        " and event_type = 'result.store.fallback'", execution_id,
    )
    assert len(warnings) == 1
    assert warnings[0]["node_name"] == "fetch"
    meta = warnings[0]["meta"]
    assert (meta["tier_from"], meta["tier_to"]) == ("s3", "fs")
    assert meta["result_ref"] == f"noetl://execution/{execution_id}/result/fetch/result"
    assert "s3" in meta["error"]


LOOP_OF_BIG_RESULTS = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loop_of_big_results, path: test/loop_of_big_results}
workflow:
  - step: big
    loop: {in: "{{ range(220) | list }}", iterator: n, spec: {mode: parallel, max_in_flight: 8}}
    tool:
      kind: python
      input: {n: "{{ n }}"}
      code: |
        result = {"n": n, "blob": chr(97 + n % 26) * 262144}
    next: [{step: summary}]
  - step: summary
    tool:
      kind: python
      input:
        total: "{{ big.stats.total }}"
        refs: "{{ big.results | length }}"
        third: "{{ big.results[2].blob[:3] }}"
        last_n: "{{ big.results[-1].n }}"
      code: |
        result = {"total": total, "refs": refs, "third": third, "last_n": last_n}
"""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _children_rss_kib(pid: int) -> int:
    """RSS of the worker's child processes (python snippets run in a pool of children)."""
    total = 0
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                total += _rss_kib(int(child)) + _children_rss_kib(int(child))
            except (OSError, RuntimeError):
                continue  # the child exited between listing and reading
    return total


def test_loop_of_220_big_results_keeps_events_small_and_worker_flat(
    fresh_engine: Engine,
) -> None:
    path = fresh_engine.register(LOOP_OF_BIG_RESULTS)
    worker = subprocess.Popen(
        [str(VENV_BIN / "noetl"), "worker", "--concurrency", "4"],
        env={**os.environ, "NOETL_DSN": fresh_engine.dsn},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    samples: list[tuple[int, int]] = []          # (loop items finished, RSS KiB)
    finished = threading.Event()

    def sample() -> None:
        while not finished.is_set():
            done = fresh_engine.sql(
                "select count(*) as n from noetl.loop_item where status <> 'pending'"
                " and result is not null"
            )[0]["n"]
            samples.append((done, _rss_kib(worker.pid)))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        time.sleep(1.0)  # the worker imports and registers; its baseline RSS
        baseline = _rss_kib(worker.pid)
        sampler.start()
        final = fresh_engine.wait(fresh_engine.start(path), timeout=300)
        finished.set()
        sampler.join(timeout=5)
        end = _rss_kib(worker.pid)
        children_end = _children_rss_kib(worker.pid)
    finally:
        finished.set()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert final["status"] == "COMPLETED", (final, worker.stderr.read() if worker.stderr else "")
    execution_id = final["execution_id"]

    summary = _step_result(fresh_engine, execution_id, "summary")
    assert summary == {"total": 220, "refs": 220, "third": "ccc", "last_n": 219}
    aggregate = _step_result(fresh_engine, execution_id, "big")
    assert all(ResultStore.is_ref(item) for item in aggregate["results"])
    refs = fresh_engine.sql(
        "select count(*) as n, count(distinct ref) as distinct_refs from noetl.result_ref"
        " where execution_id = %s", execution_id,
    )[0]
    assert refs == {"n": 220, "distinct_refs": 220}
    with_ref = fresh_engine.sql(
        "select count(*) as n from noetl.event where execution_id = %s"
        " and event_type = 'call.done' and result_ref is not null", execution_id,
    )[0]["n"]
    assert with_ref == 220

    max_event = _max_event_bytes(fresh_engine, execution_id)
    at_quarter = next(rss for done, rss in samples if done >= 55)
    peak = max([rss for _, rss in samples] + [end])
    print(f"\n220 x 256 KB loop: max event row {max_event} bytes; worker RSS KiB "
          f"baseline {baseline}, at 25% {at_quarter}, peak {peak}, end {end}; "
          f"its python children {children_end} KiB at the end")
    assert max_event < 4096
    assert end - at_quarter < 50 * 1024, (at_quarter, end)
    assert peak - at_quarter < 50 * 1024, (at_quarter, peak)
