"""A python step's stdout/stderr are captured (bounded) and its errors name the snippet line."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from engine_harness import Engine
from pyexec_support import default_executors, tool_context

from noetl_pg.errors import ToolError
from noetl_pg.tools.python import PythonTool


@pytest.fixture
def resources(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with default_executors(monkeypatch) as shared:
        yield shared


def run(code: str, resources: dict[str, Any], sink: list[Mapping[str, str]] | None = None,
        mode: str = "process", step: str = "s") -> Any:
    context = tool_context(resources, step=step,
                           log_sink=sink.append if sink is not None else None)
    return PythonTool().run({"code": textwrap.dedent(code), "spec": {"isolation": mode}},
                            context)


def test_stdout_and_stderr_are_captured_per_call(resources: dict[str, Any]) -> None:
    sink: list[Mapping[str, str]] = []
    code = """
        import os, sys
        print("from print", flush=True)
        os.system("echo from a subprocess")
        sys.stderr.write("to stderr\\n")
        result = 1
    """
    assert run(code, resources, sink) == 1
    assert sink == [{"stdout": "from print\nfrom a subprocess\n", "stderr": "to stderr\n"}]
    assert run("result = 2", resources, sink) == 2  # nothing written: nothing sent
    assert run("print('again')\nresult = 3", resources, sink) == 3
    assert sink[1:] == [{"stdout": "again\n"}]  # the earlier call's output is not repeated


def test_output_is_bounded_head_and_tail_kept(
    resources: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOETL_PYTHON_LOG_BYTES", "1000")
    sink: list[Mapping[str, str]] = []
    run("print('HEAD' + 'a' * 5000 + 'TAIL')\nresult = None", resources, sink)
    (logs,) = sink
    stdout = logs["stdout"]
    written = len("HEAD") + 5000 + len("TAIL\n")
    assert stdout.startswith("HEAD" + "a" * 496)
    assert stdout.endswith("a" * 495 + "TAIL\n")
    assert f"\n[... {written - 1000} bytes dropped; noetl logs --full prints them ...]\n" \
        in stdout
    assert len(stdout) < 1100
    assert logs["stdout_full"] == "HEAD" + "a" * 5000 + "TAIL\n"  # the whole, for the store
    assert "stderr_full" not in logs


def test_the_whole_stream_is_bounded_too(
    resources: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOETL_PYTHON_LOG_BYTES", "100")
    monkeypatch.setenv("NOETL_PYTHON_LOG_MAX_BYTES", "2000")
    sink: list[Mapping[str, str]] = []
    run("print('HEAD' + 'a' * 5000 + 'TAIL')\nresult = None", resources, sink)
    (logs,) = sink
    whole = logs["stdout_full"]
    assert whole.startswith("HEAD" + "a" * 996) and whole.endswith("a" * 995 + "TAIL\n")
    assert f"\n[... {5009 - 2000} bytes dropped ...]\n" in whole


def test_error_names_the_snippet_line_and_keeps_the_traceback(resources: dict[str, Any]) -> None:
    sink: list[Mapping[str, str]] = []
    code = """
        data = {"b": 1}
        print("before the failure")
        value = data["a"]
        result = value
    """
    with pytest.raises(ToolError) as caught:
        run(code, resources, sink, step="lookup")
    assert caught.value.message == "KeyError: 'a' (line 4: value = data[\"a\"])"
    logs = caught.value.output["logs"]
    assert logs["stdout"] == "before the failure\n"
    assert 'File "<step lookup>", line 4, in <module>' in logs["stderr"]
    assert logs["stderr"].rstrip().endswith("KeyError: 'a'")
    assert "python_child" not in logs["stderr"]  # the engine's frames are not shown
    assert sink == [logs]


def test_the_innermost_snippet_line_is_named(resources: dict[str, Any], mode: str) -> None:
    code = """
        import json

        def parse(text):
            return json.loads(text)

        def main(**input):
            return parse("{broken")
    """
    with pytest.raises(ToolError) as caught:
        run(code, resources, mode=mode)
    assert caught.value.message.startswith("JSONDecodeError: ")
    assert caught.value.message.endswith("(line 5: return json.loads(text))")
    trace = caught.value.output["logs"]["stderr"]
    assert trace.index('File "<step s>", line 8, in main') \
        < trace.index('File "<step s>", line 5, in parse')


def test_top_level_return_keeps_line_numbers(resources: dict[str, Any], mode: str) -> None:
    with pytest.raises(ToolError, match=r"^ZeroDivisionError: division by zero "
                                        r"\(line 3: x = 1 / 0\)$"):
        run("y = 1\nif y:\n    x = 1 / 0\nreturn x", resources, mode=mode)


@pytest.fixture(params=["process", "inline"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


FAILING = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: failing, path: test/pyexec_failing}
workflow:
  - step: compute
    tool:
      kind: python
      code: |
        totals = {}
        print("computing")
        result = totals["missing"]
"""


def test_a_failed_step_stores_its_line_and_logs(engine: Engine) -> None:
    row = engine.run(FAILING)
    assert row["status"] == "FAILED"
    assert "KeyError: 'missing' (line 3: result = totals[\"missing\"])" in row["error"]
    (event,) = [event for event in engine.events(row["execution_id"])
                if event["event_type"] == "call.error"]
    logs = event["result"]["logs"]
    assert logs["stdout"] == "computing\n"
    assert 'File "<step compute>", line 3, in <module>' in logs["stderr"]
