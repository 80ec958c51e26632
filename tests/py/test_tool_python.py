"""`kind: python`: snippet forms, inputs, libs, and process isolation (crash, timeout)."""

from __future__ import annotations

import dataclasses
import os
import textwrap
import time
from collections.abc import Iterator

import pytest
from engine_harness import Engine

from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.python import PythonTool, worker_pool


@pytest.fixture(scope="module")
def resources() -> Iterator[dict]:
    shared: dict = {}
    yield shared
    worker_pool(shared).close()


@pytest.fixture(params=["process", "inline"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def context(resources: dict, timeout: float | None = None) -> ToolContext:
    return ToolContext(execution_id=1, step="s", command_id=1, attempt=1, dsn="",
                       worker_resources=resources, timeout_seconds=timeout)


def run(code: str, resources: dict, mode: str = "process", timeout: float | None = None,
        **config: object) -> object:
    return PythonTool().run({"code": textwrap.dedent(code), "spec": {"isolation": mode},
                             **config}, context(resources, timeout))


@pytest.mark.parametrize(("code", "expected"), [
    ("result = x + 1", 3),
    ("return {'x': x}", {"x": 2}),
    ("def main(**input):\n    return input['x'] * 10", 20),
    ("result = args['x'] + input_data['x']", 4),
    ("y = 1", None),
])
def test_snippet_forms(resources: dict, mode: str, code: str, expected: object) -> None:
    assert run(code, resources, mode, input={"x": 2}) == expected


def test_args_alias_and_libs(resources: dict, mode: str) -> None:
    assert run("result = m.sqrt(x)", resources, mode, args={"x": 16},
               libs={"m": "math"}) == 4.0


def test_errors(resources: dict, mode: str) -> None:
    with pytest.raises(ToolError, match="ZeroDivisionError"):
        run("result = 1 / 0", resources, mode)
    with pytest.raises(ToolError, match="syntax error at line 1"):
        run("result = (", resources, mode)
    with pytest.raises(ToolError, match="boom") as caught:
        run("result = {'status': 'error', 'message': 'boom'}", resources, mode)
    assert caught.value.output == {"data": {"status": "error", "message": "boom"}}


def test_print_does_not_corrupt_the_reply(resources: dict) -> None:
    assert run("print('noise'); result = 7", resources) == 7


def test_non_json_values_become_strings(resources: dict) -> None:
    assert run("import datetime\nresult = datetime.date(2024, 1, 2)", resources) == "2024-01-02"


def test_os_exit_fails_cleanly_and_pool_recovers(resources: dict) -> None:
    with pytest.raises(ToolError, match="python step exited with code 1"):
        run("import os\nos._exit(1)", resources)
    with pytest.raises(ToolError, match="python step exited with code 3"):
        run("import sys\nsys.exit(3)", resources)
    assert run("result = 'alive'", resources) == "alive"


def test_inline_exit_does_not_end_the_thread(resources: dict) -> None:
    with pytest.raises(ToolError, match=r"called exit\(2\)"):
        run("import sys\nsys.exit(2)", resources, "inline")


def test_infinite_loop_times_out(resources: dict) -> None:
    started = time.monotonic()
    with pytest.raises(ToolTimeout, match=r"python step timed out after 0\.5s"):
        run("while True:\n    pass", resources, timeout=0.5)
    assert time.monotonic() - started < 3
    assert run("result = 1", resources) == 1


def test_env_selects_inline(resources: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_PYTHON_ISOLATION", "inline")
    ctx = context(resources)
    assert PythonTool().run({"code": "import os\nresult = os.getpid()"}, ctx) == os.getpid()
    monkeypatch.setenv("NOETL_PYTHON_ISOLATION", "process")
    assert PythonTool().run({"code": "import os\nresult = os.getpid()"}, ctx) != os.getpid()


def test_credential_key_is_hidden_from_executors(
    resources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_KEY", "k3y-value")
    pool = worker_pool(resources)
    pool.close()
    resources.clear()
    assert run("import os\nresult = os.environ.get('NOETL_CREDENTIAL_KEY')", resources) is None
    assert dataclasses.is_dataclass(context(resources))


CRASHING = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: crash, path: test/python_crash}
workflow:
  - step: crash
    tool: {kind: python, code: "import os\\nos._exit(1)"}
"""

LOOPING = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: forever, path: test/python_forever}
workflow:
  - step: spin
    tool:
      kind: python
      code: "while True:\\n    pass"
      spec: {timeout: {read: 1}}
"""

FINE = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: fine, path: test/python_fine}
workflow:
  - step: ok
    tool: {kind: python, code: "import os\\nresult = {'pid': os.getpid()}"}
"""


def test_crash_and_timeout_fail_the_step_and_the_worker_keeps_serving(
    fresh_engine: Engine,
) -> None:
    with fresh_engine.worker(slots=1) as worker:
        crashed = fresh_engine.run(CRASHING)
        assert crashed["status"] == "FAILED"
        assert "python step exited with code 1" in crashed["error"]
        spun = fresh_engine.run(LOOPING)
        assert spun["status"] == "FAILED"
        assert "python step timed out after 1s" in spun["error"]
        fine = fresh_engine.run(FINE)
        assert fine["status"] == "COMPLETED", fine["error"]
        assert fine["result"]["pid"] != os.getpid()
        claimed_by = {r["claimed_by"] for r in fresh_engine.sql(
            "select claimed_by from noetl.command where claimed_by is not null")}
        assert claimed_by <= {worker.worker_id}
