"""The HTTP API against a real `noetl server` on 127.0.0.1 (its own database and worker).

Each test checks what the engine stored (through SQL) against what the API answered.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_harness import Server, wait_status

from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

HEAVY_PATH = "tests/fixtures/playbooks/batch_execution/heavy_payload_pipeline_in_step_parallel"

# A stand-in for NoETL's heavy-payload fixture at its catalog path, using every field of the
# README's request (no network: details_api_url is only carried along).
HEAVY_PLAYBOOK = f"""
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: heavy_payload_pipeline_in_step_parallel
  path: {HEAVY_PATH}
workload:
  execution_mode: chunked_optimal
  seed_rows: 10
  batch_size: 5
  max_batches: 2
  payload_kb_per_item: 1
  details_api_url: http://127.0.0.1:9/unused
workflow:
  - step: seed
    tool:
      kind: python
      input:
        rows: "{{{{ workload.seed_rows }}}}"
        size: "{{{{ workload.batch_size }}}}"
        cap: "{{{{ workload.max_batches }}}}"
        mode: "{{{{ workload.execution_mode }}}}"
        url: "{{{{ workload.details_api_url }}}}"
      code: |
        starts = range(0, rows, size)
        batches = [list(range(s, min(s + size, rows))) for s in starts][:cap]
        result = {{"batches": batches, "mode": mode, "url": url}}
    next: {{arcs: [{{step: process}}]}}
  - step: process
    loop:
      in: "{{{{ seed.batches }}}}"
      iterator: batch
      spec: {{mode: parallel, max_in_flight: 2}}
    tool:
      kind: python
      input: {{batch: "{{{{ batch }}}}", kb: "{{{{ workload.payload_kb_per_item }}}}"}}
      code: |
        result = {{"items": len(batch), "bytes": len(batch) * kb * 1024}}
    next: {{arcs: [{{step: summarize}}]}}
  - step: summarize
    tool:
      kind: python
      input: {{rows: "{{{{ process.results }}}}", mode: "{{{{ seed.mode }}}}"}}
      code: |
        result = {{"items": sum(r["items"] for r in rows),
                   "bytes": sum(r["bytes"] for r in rows), "mode": mode}}
"""

# The body of the README's smoke-test curl, byte for byte.
README_BODY = """{
    "path": "tests/fixtures/playbooks/batch_execution/heavy_payload_pipeline_in_step_parallel",
    "payload": {
      "execution_mode": "chunked_optimal",
      "seed_rows": 120,
      "batch_size": 30,
      "max_batches": 4,
      "payload_kb_per_item": 220,
      "details_api_url": "https://httpbin.org/anything/heavy-item-detail"
    }
  }"""

SLOW_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: slow, path: PATH}
workflow:
  - step: wait
    tool: {kind: python, code: "import time\\ntime.sleep(30)\\nresult = {}"}
"""

FAILING_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: failing, path: PATH}
workflow:
  - step: ok
    tool: {kind: noop}
    next: {arcs: [{step: boom}]}
  - step: boom
    tool: {kind: python, code: "raise ValueError('boom at step two')"}
"""


@pytest.fixture(scope="module")
def server_dsn() -> Iterator[str]:
    database = create_database("noetl_server_api")
    migrate(database)
    yield database
    drop_database(database)


@pytest.fixture(scope="module")
def server(server_dsn: str) -> Iterator[Server]:
    running = Server(server_dsn)
    yield running
    running.stop()


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def sql(dsn: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(statement, params or None).fetchall()


def register(api: httpx.Client, text: str) -> dict[str, Any]:
    response = api.post("/api/catalog/register", json={"content": text})
    assert response.status_code == 200, response.text
    return dict(response.json())


def unique(text: str) -> tuple[str, str]:
    path = f"tests/server/{uuid.uuid4().hex[:8]}"
    return path, text.replace("PATH", path)


def test_readme_curl_runs_the_heavy_payload_pipeline(api: httpx.Client, server_dsn: str) -> None:
    register(api, HEAVY_PLAYBOOK)
    # Exactly the README's request: same path, headers and body; only the host differs.
    started = api.post("/api/execute", content=README_BODY,
                       headers={"Content-Type": "application/json"})
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["status"] == "started" and body["commands_generated"] == 1
    execution_id = body["execution_id"]
    assert isinstance(execution_id, str)

    status = wait_status(api, execution_id)
    # The README's loop reads these four fields.
    assert {"execution_id", "completed", "failed", "current_step"} <= status.keys()
    assert status["completed"] is True and status["failed"] is False
    assert status["completed_steps"] == ["seed", "process", "summarize"]
    assert status["loops"][0]["total"] == 4 and status["loops"][0]["done"] == 4

    stored = sql(server_dsn, "select status, result, workload from noetl.execution "
                             "where execution_id = %s", int(execution_id))[0]
    assert stored[0] == "COMPLETED"
    assert stored[1] == {"items": 120, "bytes": 120 * 220 * 1024, "mode": "chunked_optimal"}
    assert stored[2]["details_api_url"] == "https://httpbin.org/anything/heavy-item-detail"
    iterations = sql(server_dsn, "select count(*) from noetl.command where execution_id = %s "
                                 "and step_name = 'process' and iter_index is not null "
                                 "and status = 'done'", int(execution_id))[0][0]
    assert iterations == 4


def test_register_plain_and_base64_add_versions(api: httpx.Client, server_dsn: str) -> None:
    path, text = unique(FAILING_PLAYBOOK)
    first = register(api, text)
    # NoETL's CLI sends base64; as in NoETL, every registration adds a version, the same
    # text included (only `noetl run FILE` reuses the version of unchanged text).
    again = api.post("/api/catalog/register",
                     json={"content": base64.b64encode(text.encode()).decode(),
                           "resource_type": "Playbook"}).json()
    assert again["version"] == 2 and again["catalog_id"] != first["catalog_id"]
    changed = text.replace("boom at step two", "boom at step 2")
    second = api.post("/api/catalog/register",
                      json={"content": base64.b64encode(changed.encode()).decode()}).json()
    assert (first["path"], first["version"], first["kind"]) == (path, 1, "Playbook")
    assert second["version"] == 3 and second["message"] == \
        f"Resource '{path}' version '3' registered."
    rows = sql(server_dsn, "select catalog_id::text, version from noetl.catalog "
                           "where path = %s order by version", path)
    assert rows == [(first["catalog_id"], 1), (again["catalog_id"], 2),
                    (second["catalog_id"], 3)]

    listed = api.post("/api/catalog/list", json={"path": path}).json()["entries"]
    assert [entry["version"] for entry in listed] == [3, 2, 1]
    assert listed[0]["content"] == changed and listed[2]["content"] == text
    latest = api.post("/api/catalog/resource", json={"path": path, "version": "latest"})
    assert latest.json()["version"] == 3
    by_id = api.post("/api/catalog/resource", json={"catalog_id": first["catalog_id"]}).json()
    assert (by_id["path"], by_id["version"]) == (path, 1)
    assert api.post("/api/catalog/resource", json={"path": path, "version": 9}).status_code \
        == 404


def test_bad_playbook_is_refused_naming_step_and_field(api: httpx.Client,
                                                       server_dsn: str) -> None:
    before = sql(server_dsn, "select count(*) from noetl.catalog")[0][0]
    bad = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: bad, path: tests/server/bad}
workflow:
  - step: first
    tool: {kind: ftp}
"""
    response = api.post("/api/catalog/register", json={"content": bad})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "step 'first'" in detail and "unknown tool kind 'ftp'" in detail
    assert "Traceback" not in detail
    assert sql(server_dsn, "select count(*) from noetl.catalog")[0][0] == before


def test_execute_errors_are_client_errors(api: httpx.Client) -> None:
    missing = api.post("/api/execute", json={"path": "tests/server/not-registered"})
    assert missing.status_code == 404
    assert "not registered" in missing.json()["detail"]
    assert api.post("/api/execute", json={}).status_code == 422
    assert api.post("/api/execute", json={"path": "x", "payload": [1]}).status_code == 422
    unknown = api.post("/api/execute", json={"path": "x", "colour": "red"})
    assert unknown.status_code == 422 and "colour" in unknown.text
    assert api.get("/api/executions/999999999").status_code == 404


def test_execute_by_catalog_id_and_workload_alias(api: httpx.Client, server_dsn: str) -> None:
    path, text = unique(HEAVY_PLAYBOOK.replace(HEAVY_PATH, "PATH"))
    registered = register(api, text)
    response = api.post("/api/execute", json={"catalog_id": int(registered["catalog_id"]),
                                              "workload": {"seed_rows": 3, "batch_size": 2}})
    execution_id = response.json()["execution_id"]
    wait_status(api, execution_id)
    stored = sql(server_dsn, "select path, result from noetl.execution "
                             "where execution_id = %s", int(execution_id))[0]
    assert stored == (path, {"items": 3, "bytes": 3 * 1024, "mode": "chunked_optimal"})
    # As in NoETL, the detail leaves the (possibly large) result out unless asked.
    assert api.get(f"/api/executions/{execution_id}").json()["result"] is None
    with_result = api.get(f"/api/executions/{execution_id}", params={"include_result": "true"})
    assert with_result.json()["result"] == stored[1]


def test_failed_execution_reports_step_and_error(api: httpx.Client) -> None:
    path, text = unique(FAILING_PLAYBOOK)
    register(api, text)
    execution_id = api.post("/api/execute", json={"path": path}).json()["execution_id"]
    status = wait_status(api, execution_id)
    assert status["failed"] is True and status["completed"] is False
    assert status["failed_step"] == "boom" and "boom at step two" in status["error"]
    detail = api.get(f"/api/executions/{execution_id}").json()
    assert detail["status"] == "FAILED" and detail["progress"] == 100
    steps = {step["name"]: step for step in detail["steps"]}
    assert steps["ok"]["status"] == "done" and steps["boom"]["status"] == "failed"
    assert "boom at step two" in steps["boom"]["error"]
    graph = api.get(f"/api/executions/{execution_id}/graph").json()
    assert {(n["name"], n["status"]) for n in graph["nodes"]} == {("ok", "done"),
                                                                   ("boom", "failed")}
    assert graph["edges"] == [{"source": "ok", "target": "boom", "when": None}]


def test_events_cursor_pages_cover_every_event_once(api: httpx.Client,
                                                    server_dsn: str) -> None:
    path, text = unique(HEAVY_PLAYBOOK.replace(HEAVY_PATH, "PATH"))
    register(api, text)
    execution_id = api.post("/api/execute", json={
        "path": path, "payload": {"seed_rows": 12, "batch_size": 1, "max_batches": 12},
    }).json()["execution_id"]
    wait_status(api, execution_id)
    stored = [row[0] for row in sql(server_dsn, "select event_id from noetl.event where "
                                    "execution_id = %s order by event_id desc",
                                    int(execution_id))]
    assert len(stored) > 30

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"page_size": 10}
        if cursor is not None:
            params["before_event_id"] = cursor
        page = api.get(f"/api/executions/{execution_id}/events", params=params).json()
        seen += [event["event_id"] for event in page["events"]]
        assert page["pagination"]["total_events"] == len(stored)
        cursor = page["pagination"]["next_before_event_id"]
        if cursor is None:
            break
    assert seen == stored

    # NoETL's page numbers reach the same events; since_event_id returns the newer ones.
    third = api.get(f"/api/executions/{execution_id}/events",
                    params={"page": 3, "page_size": 10}).json()
    assert [event["event_id"] for event in third["events"]] == stored[20:30]
    newer = api.get(f"/api/executions/{execution_id}/events",
                    params={"since_event_id": stored[5]}).json()
    assert [event["event_id"] for event in newer["events"]] == stored[:5]
    loops = api.get(f"/api/executions/{execution_id}",
                    params={"include_events": "false"}).json()["loops"]
    assert loops[0]["step"] == "process" and loops[0]["done"] == 12
    assert loops[0]["completed"] is True and loops[0]["rate_per_second"] > 0


def test_executions_list_filters_and_pages(api: httpx.Client, server_dsn: str) -> None:
    path, text = unique(FAILING_PLAYBOOK)
    register(api, text)
    ids = [api.post("/api/execute", json={"path": path}).json()["execution_id"]
           for _ in range(3)]
    for execution_id in ids:
        wait_status(api, execution_id)
    listed = api.get("/api/executions", params={"path": path}).json()
    assert [row["execution_id"] for row in listed] == ids[::-1]
    assert all(row["status"] == "FAILED" and row["duration_seconds"] is not None
               for row in listed)
    assert api.get("/api/executions", params={"path": path, "status": "COMPLETED"}).json() \
        == []
    first = api.get("/api/executions", params={"path": path, "page_size": 2}).json()
    rest = api.get("/api/executions", params={
        "path": path, "page_size": 2, "before_execution_id": first[-1]["execution_id"]}).json()
    second_page = api.get("/api/executions", params={"path": path, "page_size": 2,
                                                     "page": 2}).json()
    assert [r["execution_id"] for r in first + rest] == ids[::-1]
    assert second_page == rest or [r["execution_id"] for r in second_page] == [ids[0]]
    total = sql(server_dsn, "select count(*) from noetl.execution where status = 'FAILED' "
                            "and path = %s", path)[0][0]
    assert total == 3


def test_cancel_running_execution(api: httpx.Client, server_dsn: str) -> None:
    path, text = unique(SLOW_PLAYBOOK)
    register(api, text)
    execution_id = api.post("/api/execute", json={"path": path}).json()["execution_id"]
    response = api.post(f"/api/executions/{execution_id}/cancel",
                        json={"reason": "test says stop", "cascade": True})
    assert response.json() == {"status": "cancelled", "execution_id": execution_id,
                               "cancelled_executions": [execution_id],
                               "message": "Cancelled 1 execution(s)"}
    stored = sql(server_dsn, "select status, error from noetl.execution "
                             "where execution_id = %s", int(execution_id))[0]
    assert stored == ("CANCELLED", "test says stop")
    again = api.post(f"/api/executions/{execution_id}/cancel").json()
    assert again["status"] == "already_completed"
    assert api.post(f"/api/executions/{execution_id}/cancel",
                    json={"cascade": False}).status_code == 422
    assert api.post("/api/executions/987654321/cancel").status_code == 404
    status = api.get(f"/api/executions/{execution_id}/status").json()
    assert status["status"] == "CANCELLED" and status["completed"] is True


def test_credentials_never_return_secrets(api: httpx.Client, server_dsn: str) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    name = "pg-" + uuid.uuid4().hex[:6]
    created = api.post("/api/credentials", json={
        "name": name, "type": "postgres",
        "data": {"db_host": "db.local", "db_port": 5432, "db_password": secret}})
    assert created.status_code == 200, created.text
    assert created.json()["public_fields"] == {"db_host": "db.local", "db_port": 5432}
    assert created.json()["has_secret"] is True
    listed = api.get("/api/credentials", params={"type": "postgres"})
    one = api.get(f"/api/credentials/{name}")
    for response in (created, listed, one):
        assert secret not in response.text
    assert name in [item["name"] for item in listed.json()["items"]]
    assert one.json()["type"] == "postgres"
    assert api.get(f"/api/credentials/{name}", params={"include_data": "true"}).status_code \
        == 403
    stored = sql(server_dsn, "select public_data, secret_data from noetl.credential "
                             "where name = %s", name)[0]
    assert "db_password" not in stored[0] and secret.encode() not in bytes(stored[1])
    # A bad request is refused without echoing the body (it may hold a secret).
    echoed = api.post("/api/credentials", json={"name": name, "data": {"db_password": secret},
                                                "colour": "red"})
    assert echoed.status_code == 422 and "colour" in echoed.text
    assert secret not in echoed.text
    refused = api.post("/api/credentials", json={"name": "x", "type": "snowflake", "data": {}})
    assert refused.status_code == 422 and "type must be one of" in refused.text
    assert api.get("/api/credentials/no-such-credential").status_code == 404

    deleted = api.delete(f"/api/credentials/{name}")
    assert deleted.status_code == 200
    assert deleted.json() == {"message": "Credential deleted successfully", "id": name,
                              "name": name}
    assert sql(server_dsn, "select count(*) from noetl.credential where name = %s",
               name)[0][0] == 0
    assert api.get(f"/api/credentials/{name}").status_code == 404
    gone = api.delete(f"/api/credentials/{name}")
    assert gone.status_code == 404 and name in gone.json()["detail"]


def test_schedules_over_http(api: httpx.Client, server_dsn: str) -> None:
    path, text = unique(FAILING_PLAYBOOK)
    register(api, text)
    created = api.post("/api/schedules", json={
        "path": path, "cron": "0 6 * * *", "timezone": "Europe/Paris",
        "payload": {"who": "http"}})
    assert created.status_code == 200, created.text
    schedule = created.json()
    schedule_id = schedule["schedule_id"]
    assert (schedule["path"], schedule["payload"], schedule["missed_policy"],
            schedule["paused"], schedule["runs"]) == (path, {"who": "http"}, "skip", False, 0)
    next_run = datetime.fromisoformat(schedule["next_run_at"])
    assert next_run > datetime.now(UTC) and next_run.astimezone(UTC).hour in (4, 5)
    listed = api.get("/api/schedules").json()
    assert [s["cron"] for s in listed if s["schedule_id"] == schedule_id] == ["0 6 * * *"]

    bad = api.post("/api/schedules", json={"path": path, "cron": "61 * * * *"})
    assert bad.status_code == 422 and "cron expression '61 * * * *'" in bad.text
    assert api.post("/api/schedules", json={"path": path, "cron": "* * * * *",
                                            "colour": "red"}).status_code == 422
    assert api.post("/api/schedules", json={"path": path, "cron": "* * * * *",
                                            "missed_policy": "never"}).status_code == 422

    assert api.post(f"/api/schedules/{schedule_id}/pause").json() == {
        "schedule_id": schedule_id, "state": "paused"}
    assert sql(server_dsn, "select paused from noetl.schedule where schedule_id = %s",
               schedule_id) == [(True,)]
    assert api.post(f"/api/schedules/{schedule_id}/resume").json()["state"] == "active"
    assert sql(server_dsn, "select paused from noetl.schedule where schedule_id = %s",
               schedule_id) == [(False,)]
    assert api.post("/api/schedules/987654/pause").status_code == 404
    assert api.delete(f"/api/schedules/{schedule_id}").json() == {
        "schedule_id": schedule_id, "state": "deleted"}
    assert sql(server_dsn, "select count(*) from noetl.schedule where schedule_id = %s",
               schedule_id) == [(0,)]
    assert api.delete(f"/api/schedules/{schedule_id}").status_code == 404


def test_workers_queue_and_health(api: httpx.Client) -> None:
    assert api.get("/api/health").json() == {"status": "ok"}
    workers = api.get("/api/workers").json()
    alive = [worker for worker in workers if worker["alive"]]
    assert len(alive) == 1 and alive[0]["slots"] == 4
    assert 0 <= alive[0]["free_slots"] <= 4
    assert alive[0]["heartbeat_age_seconds"] < 30
    assert isinstance(api.get("/api/queue").json(), list)


def test_metrics_match_the_database(api: httpx.Client, server_dsn: str) -> None:
    path, text = unique(FAILING_PLAYBOOK)
    register(api, text)
    wait_status(api, api.post("/api/execute", json={"path": path}).json()["execution_id"])
    # Claims and run times come from what the worker published at its last heartbeat.
    deadline = time.monotonic() + 12
    while True:
        response = api.get("/metrics")
        families = {family.name: family
                    for family in text_string_to_metric_families(response.text)}
        kinds = {s.labels["kind"] for s in families["noetl_claims_per_second"].samples}
        if {"python", "noop"} <= kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert response.headers["content-type"].startswith("text/plain")
    by_status = {sample.labels["status"]: sample.value
                 for sample in families["noetl_executions"].samples}
    stored = dict(sql(server_dsn, "select status, count(*) from noetl.execution "
                                  "group by status"))
    for status in ("RUNNING", "COMPLETED", "FAILED", "CANCELLED"):
        assert by_status[status] == stored.get(status, 0)
    assert families["noetl_workers_alive"].samples[0].value == 1
    claims = {s.labels["kind"]: s.value for s in families["noetl_claims_per_second"].samples}
    assert claims["python"] > 0 and claims["noop"] > 0
    done = {s.labels["kind"]: s.value for s in families["noetl_completions_per_second"].samples}
    assert done["noop"] > 0 and "python" in done  # the python step failed: not a completion
    assert families["noetl_projection_lag_seconds"].samples[0].value >= 0
    histogram = {(s.name, s.labels.get("kind"), s.labels.get("le")): s.value
                 for s in families["noetl_step_duration_seconds"].samples}
    assert histogram[("noetl_step_duration_seconds_count", "python", None)] >= 1
    assert histogram[("noetl_step_duration_seconds_bucket", "python", "+Inf")] == \
        histogram[("noetl_step_duration_seconds_count", "python", None)]
    assert "noetl_queue_depth" in families


def test_metrics_add_up_the_workers_published_statistics(api: httpx.Client,
                                                        server_dsn: str) -> None:
    """/metrics reads the window figures from the live workers' rows, not noetl.command:
    two made-up workers' rows are summed; a stopped worker's row is not."""
    buckets = [0] * 15
    buckets[3] = 2  # 2 runs between 25 and 50 ms
    stats = json.dumps({"window_seconds": 15, "kinds": {"made_up": {
        "claims": 30, "completions": 15, "finished": 2, "finished_seconds": 0.07,
        "buckets": buckets}}})
    names = [f"made-up-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    try:
        for name, stopped in zip(names, ("null", "null", "now()"), strict=True):
            sql(server_dsn, "insert into noetl.worker (worker_id, slots, stats, stopped_at) "
                            f"values (%s, 2, %s, {stopped}) returning worker_id", name, stats)
        families = {family.name: family
                    for family in text_string_to_metric_families(api.get("/metrics").text)}
        claims = {s.labels["kind"]: s.value for s in families["noetl_claims_per_second"].samples}
        done = {s.labels["kind"]: s.value
                for s in families["noetl_completions_per_second"].samples}
        assert (claims["made_up"], done["made_up"]) == (60 / 15, 30 / 15)
        histogram = {(s.name, s.labels.get("le")): s.value
                     for s in families["noetl_step_duration_seconds"].samples
                     if s.labels.get("kind") == "made_up"}
        assert histogram[("noetl_step_duration_seconds_bucket", "0.025")] == 0
        assert histogram[("noetl_step_duration_seconds_bucket", "0.05")] == 4
        assert histogram[("noetl_step_duration_seconds_bucket", "+Inf")] == 4
        assert histogram[("noetl_step_duration_seconds_sum", None)] == pytest.approx(0.14)
        assert families["noetl_workers_alive"].samples[0].value == 3
        assert families["noetl_worker_slots"].samples[0].value == 4 + 2 + 2
    finally:
        sql(server_dsn, "delete from noetl.worker where worker_id = any(%s) returning 1", names)


def test_openapi_spec_lists_noetl_paths(api: httpx.Client) -> None:
    spec = api.get("/api/openapi.json").json()
    expected = {
        ("post", "/api/catalog/register"), ("post", "/api/catalog/list"),
        ("post", "/api/catalog/resource"), ("post", "/api/execute"),
        ("get", "/api/executions"), ("get", "/api/executions/{execution_id}"),
        ("get", "/api/executions/{execution_id}/status"),
        ("get", "/api/executions/{execution_id}/events"),
        ("post", "/api/executions/{execution_id}/cancel"), ("get", "/api/credentials"),
        ("post", "/api/credentials"), ("delete", "/api/credentials/{identifier}"),
        ("get", "/api/health"), ("get", "/api/workers"),
        ("get", "/api/queue"), ("get", "/metrics"), ("get", "/api/schedules"),
        ("post", "/api/schedules"), ("post", "/api/schedules/{schedule_id}/pause"),
        ("post", "/api/schedules/{schedule_id}/resume"),
        ("delete", "/api/schedules/{schedule_id}"),
    }
    present = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert expected <= present
    assert json.dumps(spec["components"]["securitySchemes"]).count("bearer") >= 1
