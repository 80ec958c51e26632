"""No executor outlives its worker, and a timeout or cancel stops everything a step started.

Default settings throughout (executors run as `noetl-exec` when the suite runs as root).
Steps write to files under a directory the executor user can reach; a file that stops
growing is the proof that its writer is gone, independently of process bookkeeping.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from engine_harness import Engine
from pyexec_support import (
    alive,
    default_executors,
    noetl_worker,
    shared_dir,
    size,
    tool_context,
    wait_until,
)

from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.tools.python import PythonTool
from noetl_pg.tools.python_executor import Executor, ExecutorDied

# The step starts a shell that appends to grandchild.log, records both pids, then appends
# to child.log forever.
ENDLESS = """
import os, subprocess, time
shell = subprocess.Popen(["/bin/sh", "-c",
                          f"while :; do echo g >> {dir}/grandchild.log; sleep 0.05; done"])
with open(f"{dir}/pids.tmp", "w") as out:
    json.dump({"child": os.getpid(), "grandchild": shell.pid}, out)
os.replace(f"{dir}/pids.tmp", f"{dir}/pids")
while True:
    with open(f"{dir}/child.log", "a") as out:
        out.write("c\\n")
    time.sleep(0.05)
"""

ENDLESS_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: endless, path: test/pyexec_endless}
workflow:
  - step: endless
    tool:
      kind: python
      libs: {json: json}
      input: {dir: "{{ dir }}"}
      code: |
""" + "".join(f"        {line}\n" for line in ENDLESS.strip().splitlines())


def _pids(directory: Path) -> dict[str, int]:
    pids = wait_until(lambda: (directory / "pids").exists() and
                      json.loads((directory / "pids").read_text()), 30, "the step's pids")
    assert isinstance(pids, dict)
    return {name: int(pid) for name, pid in pids.items()}


def _assert_stopped(directory: Path, pids: dict[str, int], within: float) -> None:
    """Both processes gone within `within` seconds, and neither file grows after that."""
    started = time.monotonic()
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), within,
               f"{pids} to die")
    gone_after = time.monotonic() - started
    sizes = {name: size(directory / f"{name}.log") for name in pids}
    time.sleep(0.5)
    assert {name: size(directory / f"{name}.log") for name in pids} == sizes
    assert all(sizes.values()), sizes  # both writers had run
    assert gone_after <= within


def test_sigkill_of_the_worker_kills_its_executor_and_the_steps_children(
    fresh_engine: Engine, tmp_path: Path,
) -> None:
    with shared_dir() as directory, noetl_worker(fresh_engine.dsn, tmp_path / "w.log") as proc:
        fresh_engine.start(fresh_engine.register(ENDLESS_PLAYBOOK), {"dir": str(directory)})
        pids = _pids(directory)
        wait_until(lambda: size(directory / "child.log") > 0 and
                   size(directory / "grandchild.log") > 0, 10, "both writers")
        assert all(alive(pid) for pid in pids.values())
        proc.kill()
        proc.wait(10)
        _assert_stopped(directory, pids, within=1.0)


def test_timeout_kills_the_steps_children(monkeypatch: pytest.MonkeyPatch) -> None:
    with default_executors(monkeypatch) as resources, shared_dir() as directory:
        config = {"code": ENDLESS, "input": {"dir": str(directory)}, "libs": {"json": "json"}}
        with pytest.raises(ToolTimeout, match="timed out after 2s"):
            PythonTool().run(config, tool_context(resources, timeout=2))
        pids = _pids(directory)
        _assert_stopped(directory, pids, within=1.0)


def test_cancel_kills_the_steps_children(monkeypatch: pytest.MonkeyPatch) -> None:
    with default_executors(monkeypatch) as resources, shared_dir() as directory:
        config = {"code": ENDLESS, "input": {"dir": str(directory)}, "libs": {"json": "json"}}
        cancelled = threading.Event()

        def cancel_when_running() -> None:
            _pids(directory)
            wait_until(lambda: size(directory / "child.log") > 0
                       and size(directory / "grandchild.log") > 0, 10, "both writers")
            cancelled.set()

        canceller = threading.Thread(target=cancel_when_running)
        canceller.start()
        with pytest.raises(ToolError, match="execution was cancelled"):
            PythonTool().run(config, tool_context(resources, timeout=60, cancelled=cancelled))
        canceller.join()
        _assert_stopped(directory, _pids(directory), within=1.0)


def test_a_crashed_step_leaves_nothing_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner ends (os._exit) with a child still writing: the worker kills the group."""
    code = ENDLESS.replace("while True:", "while not os.path.exists(f'{dir}/grandchild.log'):\n"
                           "    time.sleep(0.01)\nos._exit(4)\nwhile True:")
    with default_executors(monkeypatch) as resources, shared_dir() as directory:
        config = {"code": code, "input": {"dir": str(directory)}, "libs": {"json": "json"}}
        with pytest.raises(ToolError, match="exited with code 4"):
            PythonTool().run(config, tool_context(resources))
        pids = _pids(directory)
        wait_until(lambda: not any(alive(pid) for pid in pids.values()), 1.0, "the group")
        grown = size(directory / "grandchild.log")
        time.sleep(0.3)
        assert size(directory / "grandchild.log") == grown > 0
        assert PythonTool().run({"code": "result = 'next'"}, tool_context(resources)) == "next"


def test_the_runner_dies_with_its_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """PR_SET_PDEATHSIG: killing the guard alone (say, by the OOM killer) ends the runner."""
    with default_executors(monkeypatch):
        executor = Executor()
        try:
            reply = executor.call({"code": "import os\nresult = os.getpid()", "input": {},
                                   "libs": {}}, timeout=30)
            runner = int(reply["value"])
            assert alive(runner) and runner != executor.process.pid
            os.kill(executor.process.pid, signal.SIGKILL)
            wait_until(lambda: not alive(runner), 1.0, "the runner to die")
        finally:
            executor.kill()


def test_a_runner_that_closes_its_reply_pipe_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker sees end-of-file while the runner lives on: it does not wait for ever."""
    code = "import os\nos.closerange(3, 65536)\nwhile True:\n    pass"
    with default_executors(monkeypatch) as resources:
        started = time.monotonic()
        with pytest.raises(ToolError, match="killed by signal 9"):
            PythonTool().run({"code": code}, tool_context(resources, timeout=60))
        assert time.monotonic() - started < 30
        assert PythonTool().run({"code": "result = 'next'"}, tool_context(resources)) == "next"


def test_sigterm_to_the_guard_takes_the_group_along(monkeypatch: pytest.MonkeyPatch) -> None:
    with default_executors(monkeypatch), shared_dir() as directory:
        executor = Executor()
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                executor.call({"code": ENDLESS, "input": {"dir": str(directory)},
                               "libs": {"json": "json"}}, timeout=30)
            except ExecutorDied as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        try:
            caller.start()
            pids = _pids(directory)
            wait_until(lambda: size(directory / "child.log") > 0
                       and size(directory / "grandchild.log") > 0, 10, "both writers")
            os.kill(executor.process.pid, signal.SIGTERM)
            _assert_stopped(directory, pids, within=1.0)
            caller.join(10)
            assert [type(exc) for exc in outcome] == [ExecutorDied]
        finally:
            executor.kill()
