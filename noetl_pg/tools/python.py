"""`kind: python`: run a snippet of Python code, by default in an isolated subprocess.

The code may set `result`, `return` at top level, or define `def main(**input)`. `input`
(alias `args`) is injected: each key as a global, and as the dicts `input_data` and `args`.
`libs: {alias: module}` imports modules under aliases. A returned dict with
`status: error` is a tool error, as is any exception. Compiled code is cached by source
text, so a loop of 10,000 iterations compiles once (in each executor process).

Isolation (`spec.isolation`, else env `NOETL_PYTHON_ISOLATION`, else **process**):
- `process` (the default): the snippet runs in a warm executor taken from a per-worker
  pool (python_executor.py; the processes are python_child.py's guard and runner, speaking
  JSON lines over pipes). A crash, `os._exit`, a segfault or an infinite loop cannot take
  the worker down: the step fails with "python step exited with code N" or "python step
  timed out after Ns", the executor's whole process group is killed and a fresh executor
  is started in the background. Executors die with their worker (even a SIGKILLed one),
  run with an environment scrubbed of the engine's variables and, under a root worker, as
  the unprivileged `NOETL_EXECUTOR_USER` (default `noetl-exec`). Input and result travel
  as JSON (values JSON cannot hold are converted with `str`). The snippet's stdout and
  stderr (print, C extensions, subprocesses) are captured, at most `NOETL_PYTHON_LOG_BYTES`
  (64 KiB) per stream and call (head and tail kept), and handed to `ToolContext.log_sink`
  as `{"stdout": ..., "stderr": ...}`, with `stdout_full`/`stderr_full` (the whole stream,
  up to `NOETL_PYTHON_LOG_MAX_BYTES`) when a stream was cut; a failed step also carries
  the bounded ones in its ToolError output as `logs`. Cost: see docs/tools.md (a pipe
  round trip plus JSON, tens of microseconds; a cold executor tens of milliseconds).
- `inline`: the snippet runs in the worker thread itself. Fastest, shares the worker's
  memory, modules, environment and user, but a crash kills the worker, the timeout is not
  enforced (a Python thread cannot be stopped) and output is not captured. For trusted,
  short, hot-loop snippets.

Errors name the snippet's line in both modes: the code is compiled as `<step NAME>`, so
`KeyError: 'a'` becomes `KeyError: 'a' (line 3: value = data['a'])`, and the traceback
(the snippet's frames on) is the `stderr` of the captured logs.

Timeout: `spec.timeout` (seconds or `{read: N}`), else env `NOETL_PYTHON_TIMEOUT`
(seconds; 0 disables), else 600 s; enforced in `process` mode.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

from noetl_pg import settings
from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.tools.base import ToolBatch, ToolContext
from noetl_pg.tools.python_child import SnippetFailed, SnippetSyntaxError, run_snippet
from noetl_pg.tools.python_executor import (
    ExecutorCancelled,
    ExecutorDied,
    ExecutorPool,
    ExecutorTimeout,
)

ISOLATION_MODES = ("process", "inline")
# What an executor captures of a step's output, in ToolContext.log_sink and on failure in
# the ToolError output as `logs`.
LOG_STREAMS = ("stdout", "stderr")
# The config key the executor puts the `context` global under (no playbook can write it:
# registration refuses unknown keys).
CONTEXT_KEY = "_noetl_context"

_pool_lock = threading.Lock()


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
        or settings.current().python_isolation
    if mode not in ISOLATION_MODES:
        raise ToolError(f"python isolation must be one of {', '.join(ISOLATION_MODES)}, "
                        f"got {mode!r}")
    return str(mode)


def timeout_seconds(context: ToolContext) -> float | None:
    if context.timeout_seconds is not None:
        return context.timeout_seconds if context.timeout_seconds > 0 else None
    seconds = settings.current().python_timeout
    return seconds if seconds > 0 else None


class PythonTool:
    """Run a snippet inline or in an executor subprocess; see the module docstring."""

    kind: ClassVar[str] = "python"
    # `script` is read into `code` at registration (noetl_pg.scripts).
    config_keys: ClassVar[frozenset[str]] = frozenset({"code", "libs", "isolation", "script"})
    spec_keys: ClassVar[frozenset[str]] = frozenset({"isolation"})
    script_field: ClassVar[str] = "code"
    context_key: ClassVar[str] = CONTEXT_KEY

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        if isolation_mode(config) == "inline":
            code, inputs, libs = _snippet(config)
            return check_result(_run_inline(code, inputs, libs, f"<step {context.step}>",
                                            config.get(CONTEXT_KEY)))
        batch = self.start_batch([(config, context)])
        try:
            return batch.result(0)
        finally:
            batch.close()

    def batch_key(self, config: Mapping[str, Any], context: ToolContext) -> Hashable | None:
        """Isolated calls of one execution share a batch (a cancel stops it whole); an
        inline call, or one whose isolation is invalid (run says why), runs alone."""
        try:
            isolated = isolation_mode(config) == "process"
        except ToolError:
            return None
        return context.execution_id if isolated else None

    def start_batch(
        self, calls: Sequence[tuple[Mapping[str, Any], ToolContext]]
    ) -> ToolBatch:
        return _ProcessBatch(calls)


class _ProcessBatch:
    """Isolated calls sent ahead to one executor (python_executor.ExecutorBatch); a call
    that cannot be sent (no `code`) fails alone."""

    def __init__(self, calls: Sequence[tuple[Mapping[str, Any], ToolContext]]) -> None:
        self._contexts = [context for _, context in calls]
        # call index -> its request's index in the executor batch, or the call's error
        self._requests: list[int | ToolError] = []
        requests: list[dict[str, Any]] = []
        for config, context in calls:
            try:
                code, inputs, libs = _snippet(config)
            except ToolError as exc:
                self._requests.append(exc)
                continue
            self._requests.append(len(requests))
            requests.append({"code": code, "input": inputs, "libs": libs,
                             "filename": f"<step {context.step}>",
                             "context": config.get(CONTEXT_KEY)})
        pool = worker_pool(self._contexts[0].worker_resources) if requests else None
        self._batch = pool.batch(requests) if pool is not None else None

    def result(self, index: int) -> Any:
        request = self._requests[index]
        if isinstance(request, ToolError):
            raise request
        assert self._batch is not None
        context = self._contexts[index]
        timeout = timeout_seconds(context)
        try:
            reply = self._batch.reply(request, timeout, context.cancelled)
        except ExecutorTimeout:
            raise ToolTimeout(f"python step timed out after {timeout:g}s") from None
        except ExecutorCancelled:
            raise ToolError("python step stopped: the execution was cancelled") from None
        except ExecutorDied as exc:
            code_text = exc.returncode
            if code_text is not None and code_text < 0:
                raise ToolError(f"python step was killed by signal {-code_text}") from None
            raise ToolError(f"python step exited with code {code_text}") from None
        logs = {name: reply[name] for name in LOG_STREAMS if reply.get(name)}
        if logs and context.log_sink is not None:
            whole = {f"{name}_full": reply[f"{name}_full"] for name in LOG_STREAMS
                     if reply.get(f"{name}_full") is not None}
            context.log_sink({**logs, **whole})
        if not reply.get("ok"):
            raise ToolError(str(reply.get("error")), output={"logs": logs} if logs else None)
        return check_result(reply.get("value"))

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()


def _snippet(config: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The code, input and libs of a python call."""
    code = config.get("code")
    if not isinstance(code, str) or not code.strip():
        raise ToolError("python tool needs `code`")
    return (code, dict(config.get("input") or config.get("args") or {}),
            dict(config.get("libs") or {}))


def _run_inline(code: str, inputs: dict[str, Any], libs: dict[str, Any], filename: str,
                context: Any = None) -> Any:
    try:
        return run_snippet(code, inputs, libs, filename, context)
    except SnippetSyntaxError as exc:
        raise ToolError(str(exc)) from None
    except SnippetFailed as exc:
        raise ToolError(exc.message, output={"logs": {"stderr": exc.trace}}) from exc
    except SystemExit as exc:  # inline, exit() must not end the worker's slot thread
        raise ToolError(f"python step called exit({exc.code})") from None
