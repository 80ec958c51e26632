"""`kind: python`: run a snippet of Python code, by default in an isolated subprocess.

The code may set `result`, `return` at top level, or define `def main(**input)`. `input`
(alias `args`) is injected: each key as a global, and as the dicts `input_data` and `args`.
`libs: {alias: module}` imports modules under aliases. A returned dict with
`status: error` is a tool error, as is any exception. Compiled code is cached by source
text, so a loop of 10,000 iterations compiles once (in each executor process).

Isolation (`spec.isolation`, else env `NOETL_PYTHON_ISOLATION`, else **process**):
- `process` (the default): the snippet runs in a warm executor subprocess taken from a
  per-worker pool (`python_child.py`, a long-lived child speaking JSON lines over pipes).
  A crash, `os._exit`, a segfault or an infinite loop cannot take the worker down: the
  step fails with "python step exited with code N" or "python step timed out after Ns",
  the executor is killed and a fresh one is started in the background. Input and result
  travel as JSON (values JSON cannot hold are converted with `str`); the snippet's
  `print` output is discarded; the environment is the worker's minus
  `NOETL_CREDENTIAL_KEY`. Cost (bench/python_isolation.py, 2 shared cores): one pipe
  round trip plus JSON, median ~0.05 ms per call (p90 0.1-0.2 ms) against ~0.001 ms
  inline; a cold executor starts in 30-100 ms (warm executors make this rare). Both are
  small next to the ~1 ms of database work per step, hence the safe default.
- `inline`: the snippet runs in the worker thread itself. Fastest, shares the worker's
  memory and modules, but a crash kills the worker and the timeout is not enforced (a
  Python thread cannot be stopped). For trusted, short, hot-loop snippets.

Timeout: `spec.timeout` (seconds or `{read: N}`), else env `NOETL_PYTHON_TIMEOUT`
(seconds; 0 disables), else 600 s; enforced in `process` mode.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.python_child import SnippetSyntaxError, run_snippet

ISOLATION_ENV = "NOETL_PYTHON_ISOLATION"
TIMEOUT_ENV = "NOETL_PYTHON_TIMEOUT"
ISOLATION_MODES = ("process", "inline")
DEFAULT_ISOLATION = "process"
DEFAULT_TIMEOUT_SECONDS = 600.0
# An executor is replaced after this many calls, bounding what a leaky snippet can hold.
MAX_CALLS_PER_EXECUTOR = 10_000
CHILD_SCRIPT = Path(__file__).resolve().with_name("python_child.py")
HIDDEN_ENV = ("NOETL_CREDENTIAL_KEY",)

_pool_lock = threading.Lock()


class ExecutorDied(Exception):
    """The executor process ended while running a snippet."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(returncode)
        self.returncode = returncode


class ExecutorTimeout(Exception):
    """The executor did not answer within the time budget."""


class ExecutorCancelled(Exception):
    """The execution was cancelled while the executor ran its snippet."""


# How often a waiting call looks at its cancel flag.
CANCEL_CHECK_SECONDS = 0.1


class Executor:
    """One warm executor subprocess. Used by one thread at a time (the pool hands it out)."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV}
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD_SCRIPT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            bufsize=0, env=env, close_fds=True,
        )
        self.calls = 0

    def call(
        self, request: Mapping[str, Any], timeout: float | None,
        cancelled: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Send one request and wait for its reply; raises ExecutorDied / ExecutorTimeout /
        ExecutorCancelled (when `cancelled` is set while it waits)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.calls += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.process.stdin.write(json.dumps(request, default=str).encode() + b"\n")
        except (BrokenPipeError, OSError):
            raise ExecutorDied(self.process.wait()) from None
        fd = self.process.stdout.fileno()
        reply = bytearray()
        while not reply.endswith(b"\n"):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ExecutorTimeout()
            wait = remaining
            if cancelled is not None:
                wait = CANCEL_CHECK_SECONDS if wait is None else min(wait, CANCEL_CHECK_SECONDS)
            ready, _, _ = select.select([fd], [], [], wait)
            if cancelled is not None and cancelled.is_set():
                raise ExecutorCancelled()
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ExecutorTimeout()
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise ExecutorDied(self.process.wait())
            reply += chunk
        result: dict[str, Any] = json.loads(reply)
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


class ExecutorPool:
    """Warm executors shared by a worker's slots; broken ones are replaced in the background.

    `acquire` hands out an idle executor or starts one; `release` keeps at most
    `max_idle` warm. `close()` (worker shutdown) kills them all.
    """

    def __init__(self, max_idle: int = 8, warm: int = 1) -> None:
        self._idle: list[Executor] = []
        self._lock = threading.Lock()
        self._max_idle = max_idle
        self._closed = False
        for _ in range(warm):
            self._replace_in_background()

    def run(
        self, request: Mapping[str, Any], timeout: float | None,
        cancelled: threading.Event | None = None,
    ) -> dict[str, Any]:
        executor = self._acquire()
        try:
            reply = executor.call(request, timeout, cancelled)
        except (ExecutorDied, ExecutorTimeout, ExecutorCancelled):
            executor.kill()
            self._replace_in_background()
            raise
        self._release(executor)
        return reply

    def _acquire(self) -> Executor:
        with self._lock:
            while self._idle:
                executor = self._idle.pop()
                if executor.process.poll() is None:
                    return executor
                executor.kill()
        return Executor()

    def _release(self, executor: Executor) -> None:
        with self._lock:
            if (not self._closed and len(self._idle) < self._max_idle
                    and executor.calls < MAX_CALLS_PER_EXECUTOR):
                self._idle.append(executor)
                return
        executor.kill()

    def _replace_in_background(self) -> None:
        threading.Thread(target=lambda: self._release(Executor()), daemon=True,
                         name="noetl-python-executor").start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for executor in idle:
            executor.kill()


def worker_pool(resources: dict[str, Any]) -> ExecutorPool:
    """The worker's executor pool, created once even when several slots ask at once."""
    pool = resources.get(PythonTool.kind)
    if pool is None:
        with _pool_lock:
            pool = resources.get(PythonTool.kind)
            if pool is None:
                pool = ExecutorPool()
                resources[PythonTool.kind] = pool
    return pool


def check_result(value: Any) -> Any:
    if isinstance(value, dict) and value.get("status") == "error":
        message = value.get("message") or value.get("error") or "python step returned an error"
        raise ToolError(str(message), output={"data": value})
    return value


def isolation_mode(config: Mapping[str, Any]) -> str:
    mode = (config.get("spec") or {}).get("isolation") or config.get("isolation") \
        or os.environ.get(ISOLATION_ENV) or DEFAULT_ISOLATION
    if mode not in ISOLATION_MODES:
        raise ToolError(f"python isolation must be one of {', '.join(ISOLATION_MODES)}, "
                        f"got {mode!r}")
    return str(mode)


def timeout_seconds(context: ToolContext) -> float | None:
    if context.timeout_seconds is not None:
        return context.timeout_seconds if context.timeout_seconds > 0 else None
    raw = os.environ.get(TIMEOUT_ENV)
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            raise ToolError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
        return seconds if seconds > 0 else None
    return DEFAULT_TIMEOUT_SECONDS


class PythonTool:
    """Run a snippet inline or in an executor subprocess; see the module docstring."""

    kind: ClassVar[str] = "python"
    config_keys: ClassVar[frozenset[str]] = frozenset({"code", "libs", "isolation"})
    spec_keys: ClassVar[frozenset[str]] = frozenset({"isolation"})

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        code = config.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ToolError("python tool needs `code`")
        inputs = dict(config.get("input") or config.get("args") or {})
        libs = dict(config.get("libs") or {})
        if isolation_mode(config) == "inline":
            return check_result(_run_inline(code, inputs, libs))
        timeout = timeout_seconds(context)
        request = {"code": code, "input": inputs, "libs": libs}
        try:
            reply = worker_pool(context.worker_resources).run(request, timeout,
                                                              context.cancelled)
        except ExecutorTimeout:
            raise ToolTimeout(f"python step timed out after {timeout:g}s") from None
        except ExecutorCancelled:
            raise ToolError("python step stopped: the execution was cancelled") from None
        except ExecutorDied as exc:
            code_text = exc.returncode
            if code_text is not None and code_text < 0:
                raise ToolError(f"python step was killed by signal {-code_text}") from None
            raise ToolError(f"python step exited with code {code_text}") from None
        if not reply.get("ok"):
            raise ToolError(str(reply.get("error")))
        return check_result(reply.get("value"))


def _run_inline(code: str, inputs: dict[str, Any], libs: dict[str, str]) -> Any:
    try:
        return run_snippet(code, inputs, libs)
    except SnippetSyntaxError as exc:
        raise ToolError(str(exc)) from None
    except SystemExit as exc:  # inline, exit() must not end the worker's slot thread
        raise ToolError(f"python step called exit({exc.code})") from None
    except Exception as exc:
        raise ToolError(f"{type(exc).__name__}: {exc}") from exc
