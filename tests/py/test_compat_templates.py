"""NoETL compatibility of the template namespace, end to end on a real worker.

Each playbook is written as a NoETL user writes it and asserts which steps ran, how often
and with what output: result keys before dict methods (`{{ start.items }}`), `job.*`,
steps that have not run as none, `output` and `error` in arc conditions after success
and failure (http included), the pipeline envelope (`results.<task>`, `_prev`), loop
aliases (`loop_index`), a task's own `set` after it ran, and a templated
`loop.spec.max_in_flight`.
"""

from __future__ import annotations

import json
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from engine_harness import Engine

from noetl_pg.errors import TemplateError
from noetl_pg.templating import ResultView, error_view, render_string


def _doc(body: str) -> str:
    return "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: t, path: compat/tpl}\n" \
        + textwrap.dedent(body)


def _ran(engine: Engine, execution_id: int) -> Counter[str]:
    return Counter(event["node_name"] for event in engine.events(execution_id)
                   if event["event_type"] in ("call.done", "call.error")
                   and event["node_name"])


def _iterations(engine: Engine, execution_id: int, step: str) -> int:
    return int(engine.sql("select count(*) as n from noetl.command where execution_id = %s "
                          "and step_name = %s and loop_id is not null and status = 'done'",
                          execution_id, step)[0]["n"])


# --- pure rendering ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["items", "keys", "values", "get", "update", "count", "index",
                                 "pop", "copy"])
def test_result_keys_win_over_dict_methods(key: str) -> None:
    start = ResultView({key: [1, 2]})
    assert render_string(f"{{{{ start.{key} }}}}", {"start": start}) == [1, 2]
    nested = {"start": ResultView({"data": {key: "deep"}})}
    assert render_string(f"{{{{ start.data.{key} }}}}", nested) == "deep"


def test_methods_still_work_when_no_key_shadows_them() -> None:
    assert render_string("{{ start.get('a', 0) + 1 }}", {"start": ResultView({"a": 4})}) == 5
    assert render_string("{{ start.data }}", {"start": ResultView({"a": 1})}) == {"a": 1}


def test_error_object_reads_as_its_message_inside_text() -> None:
    error = error_view("http GET /x returned 429", {"http": {"status": 429}})
    assert render_string("failed: {{ error }}", {"error": error}) == \
        "failed: http GET /x returned 429"
    assert render_string("{{ error.retryable and error.code == 'HTTP_429' }}",
                         {"error": error}) is True


def test_a_name_that_is_nothing_stays_an_error() -> None:
    with pytest.raises(TemplateError, match="nosuch"):
        render_string("{{ nosuch.x }}", {"a": None})


# --- end to end ----------------------------------------------------------------------


def test_loop_over_an_earlier_steps_items(engine: Engine) -> None:
    """`{{ start.items }}` is the data; it used to render dict.items."""
    row = engine.run(_doc("""\
        workflow:
          - step: start
            tool: {kind: python, code: "result = {'items': [2, 3, 5], 'keys': ['k']}"}
            next: square
          - step: square
            loop: {in: "{{ start.items }}", iterator: n}
            tool:
              kind: python
              input: {n: "{{ n }}", k: "{{ start.keys[0] }}"}
              code: "result = {'sq': n * n, 'k': k}"
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert [r["sq"] for r in row["result"]["results"]] == [4, 9, 25]
    assert {r["k"] for r in row["result"]["results"]} == {"k"}
    assert _iterations(engine, row["execution_id"], "square") == 3


def test_job_namespace(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workflow:
          - step: who
            tool:
              kind: python
              input:
                job_id: "{{ job.execution_id }}"
                uuid: "{{ job.uuid }}"
                bare: "{{ execution_id }}"
                label: "run-{{ job.uuid }}"
              code: "result = {'job_id': job_id, 'uuid': uuid, 'bare': bare, 'label': label}"
        """))
    assert row["status"] == "COMPLETED", row["error"]
    execution_id = row["execution_id"]
    assert row["result"] == {"job_id": execution_id, "uuid": str(execution_id),
                             "bare": execution_id, "label": f"run-{execution_id}"}


@pytest.mark.parametrize(("go", "expected"), [("a", "from a"), ("b", "from b")])
def test_a_step_that_did_not_run_is_none(engine: Engine, go: str, expected: str) -> None:
    row = engine.run(_doc("""\
        workload: {go: a}
        workflow:
          - step: start
            tool: {kind: noop}
            next:
              spec: {mode: exclusive}
              arcs:
                - {step: a, when: "{{ go == 'a' }}"}
                - {step: b}
          - step: a
            tool: {kind: python, code: "result = {'x': 'from a'}"}
            next: merge
          - step: b
            tool: {kind: python, code: "result = {'x': 'from b'}"}
            next: merge
          - step: merge
            tool:
              kind: python
              input:
                picked: "{{ a.x if a else b.x }}"
                a_ran: "{{ a is not none }}"
              code: "result = {'picked': picked, 'a_ran': a_ran}"
        """), {"go": go})
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"picked": expected, "a_ran": go == "a"}
    assert _ran(engine, row["execution_id"]) == {"start": 1, go: 1, "merge": 1}


def test_an_unknown_name_fails_the_step_naming_it(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workflow:
          - step: s
            tool: {kind: python, input: {v: "{{ not_a_step.x }}"}, code: "result = v"}
        """))
    assert row["status"] == "FAILED"
    assert row["failed_step"] == "s"
    assert "not_a_step" in row["error"]


def test_output_in_arc_when_after_success(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workflow:
          - step: calc
            tool: {kind: python, code: "result = {'n': 3}"}
            next:
              spec: {mode: exclusive}
              arcs:
                - step: many
                  when: "{{ output.status == 'ok' and output.data.n > 2 }}"
                  set: {ctx.n: "{{ output.data.n }}"}
                - step: few
          - step: many
            tool: {kind: python, input: {n: "{{ ctx.n }}"}, code: "result = {'many': n}"}
          - step: few
            tool: {kind: noop}
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"many": 3}
    assert _ran(engine, row["execution_id"]) == {"calc": 1, "many": 1}


def test_output_error_object_in_arc_after_failure(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workflow:
          - step: boom
            tool: {kind: python, code: "raise ValueError('bad row 7')"}
            next:
              arcs:
                - step: report
                  when: "{{ output.status == 'error' and output.error.kind == 'tool_error' }}"
                  set:
                    ctx.text: "boom failed: {{ output.error }}"
                    ctx.retryable: "{{ output.error.retryable }}"
                    ctx.message: "{{ error }}"
          - step: report
            tool:
              kind: python
              input: {text: "{{ ctx.text }}", retryable: "{{ ctx.retryable }}",
                      message: "{{ ctx.message }}"}
              code: "result = {'text': text, 'retryable': retryable, 'message': message}"
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["text"].startswith("boom failed: ")
    assert "bad row 7" in row["result"]["text"]
    assert row["result"]["retryable"] is False
    assert "bad row 7" in row["result"]["message"]
    assert _ran(engine, row["execution_id"]) == {"boom": 1, "report": 1}


class _StatusHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        status = int(self.path.rsplit("/", 1)[-1])
        body = json.dumps({"status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Probe", "yes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


HTTP_ROUTES = """\
    workload: {base: "", code: 200}
    workflow:
      - step: probe
        tool: {kind: http, method: GET, url: "{{ base }}/status/{{ code }}"}
        next:
          spec: {mode: exclusive}
          arcs:
            - step: ok
              when: "{{ output.http.status == 200 and output.http.headers['x-probe'] == 'yes' }}"
            - step: busy
              when: "{{ output.http.status == 503 and output.error.retryable }}"
              set: {ctx.code: "{{ output.error.code }}"}
            - step: missing
              when: "{{ output.http.status == 404 and not output.error.retryable }}"
      - step: ok
        tool: {kind: python, input: {s: "{{ probe.status_code }}"}, code: "result = {'ok': s}"}
      - step: busy
        tool: {kind: python, input: {c: "{{ ctx.code }}"}, code: "result = {'busy': c}"}
      - step: missing
        tool: {kind: python, code: "result = {'missing': True}"}
"""


@pytest.mark.parametrize(("code", "target", "result"), [
    (200, "ok", {"ok": 200}),
    (503, "busy", {"busy": "HTTP_503"}),
    (404, "missing", {"missing": True}),
])
def test_output_http_on_every_http_outcome(engine: Engine, http_base: str, code: int,
                                           target: str, result: dict[str, Any]) -> None:
    row = engine.run(_doc(HTTP_ROUTES), {"base": http_base, "code": code})
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == result
    assert _ran(engine, row["execution_id"]) == {"probe": 1, target: 1}


def test_pipeline_envelope_results_and_prev(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workflow:
          - step: pipe
            tool:
              - name: fetch
                kind: python
                code: "result = {'rows': [1, 2, 3]}"
              - name: total
                kind: python
                input: {rows: "{{ _prev.rows }}", again: "{{ results.fetch.rows }}"}
                code: "result = {'sum': sum(rows), 'same': rows == again}"
              - name: report
                kind: python
                input: {s: "{{ results.total.sum }}", prev: "{{ _prev.sum }}",
                        task: "{{ _task }}", attempt: "{{ _attempt }}"}
                code: "result = {'s': s, 'prev': prev, 'task': task, 'attempt': attempt}"
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"s": 6, "prev": 6, "task": "total", "attempt": 1}


def test_task_set_renders_after_the_task_with_output(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workflow:
          - step: pipe
            tool:
              - name: fetch
                kind: python
                code: "result = {'count': 4}"
                set:
                  ctx.fetched: "{{ output.data.count }}"
                  iter.status: "{{ output.status }}"
              - name: use
                kind: python
                input: {fetched: "{{ ctx.fetched }}", status: "{{ iter.status }}"}
                code: "result = {'fetched': fetched, 'status': status}"
            next: after
          - step: after
            tool: {kind: python, input: {f: "{{ ctx.fetched }}"}, code: "result = {'f': f}"}
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"f": 4}
    pipe = engine.sql("select result from noetl.step_result where execution_id = %s "
                      "and step_name = 'pipe'", row["execution_id"])[0]["result"]
    assert pipe == {"fetched": 4, "status": "ok"}


def test_loop_aliases(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workload: {names: [ann, bob, cy]}
        workflow:
          - step: each
            loop: {in: "{{ names }}", iterator: name}
            tool:
              kind: python
              input:
                i: "{{ loop_index }}"
                same: "{{ iter._index == loop.index }}"
                last: "{{ loop.last }}"
                name: "{{ iter.name }}"
              code: "result = {'i': i, 'same': same, 'last': last, 'name': name}"
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == [
        {"i": 0, "same": True, "last": False, "name": "ann"},
        {"i": 1, "same": True, "last": False, "name": "bob"},
        {"i": 2, "same": True, "last": True, "name": "cy"},
    ]


def test_templated_max_in_flight_is_rendered_when_the_loop_starts(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workload: {width: 3}
        workflow:
          - step: start
            tool: {kind: python, code: "result = {'items': list(range(7))}"}
            next: fan
          - step: fan
            loop:
              in: "{{ start.items }}"
              iterator: x
              spec: {mode: parallel, max_in_flight: "{{ width }}"}
            tool: {kind: python, input: {x: "{{ x }}"}, code: "result = x * 10"}
        """), {"width": 3})
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == [x * 10 for x in range(7)]
    loop = engine.sql("select mode, max_in_flight from noetl.loop where execution_id = %s",
                      row["execution_id"])
    assert loop == [{"mode": "parallel", "max_in_flight": 3}]


@pytest.mark.parametrize("width", ["0", "wide", "-2"])
def test_a_bad_templated_max_in_flight_fails_naming_the_field(engine: Engine,
                                                              width: str) -> None:
    row = engine.run(_doc("""\
        workload: {width: 1}
        workflow:
          - step: fan
            loop:
              in: "{{ [1, 2] }}"
              iterator: x
              spec: {mode: parallel, max_in_flight: "{{ width }}"}
            tool: {kind: noop}
        """), {"width": width})
    assert row["status"] == "FAILED"
    assert "loop.spec.max_in_flight" in row["error"]
    assert _iterations(engine, row["execution_id"], "fan") == 0


def test_older_case_with_output_and_error_routes(engine: Engine) -> None:
    """A retry-free NoETL error handler in the older form: case on call.error with the
    error object's message carried to the handler."""
    row = engine.run(_doc("""\
        workflow:
          - step: load
            tool: {kind: python, code: "raise KeyError('customer_id')"}
            case:
              - when: "{{ event.name == 'call.error' and output.status == 'error' }}"
                then:
                  - set: {ctx.failure: "load: {{ output.error }}"}
                  - next: [{step: alert}]
          - step: alert
            tool: {kind: python, input: {f: "{{ ctx.failure }}"}, code: "result = f"}
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"].startswith("load: ") and "customer_id" in row["result"]
