"""Python snippet execution, and the executor process that runs snippets for isolated steps.

Stdlib only, and run by file path with `python -P python_child.py` so a fresh executor starts
without importing the engine (noetl_pg.tools imports httpx, duckdb and psycopg; this file
imports none of them) and with a `sys.path` that never holds this directory (`-P`): a step's
`import http.client` or `import duckdb` must find the real modules, not the engine's tool
modules of the same name.

An executor is two processes in a process group of their own (the worker starts the guard
with `process_group=0`, so the group id is the guard's pid; not a session of its own, which
would give it a scheduler autogroup of its own and, measured, slower round trips under
load):
- the **guard** (the process the worker started) drops root privileges if asked
  (`--uid/--gid`), forks the runner, then waits for one of two things: the runner's end
  (it then exits the same way, code or signal, so the worker reports it) or end-of-file on
  the `--lifeline` pipe, whose only write end the worker holds: the worker died (even by
  SIGKILL), and the guard kills the whole process group, itself, the runner and anything
  the step spawned. The guard runs no user code, so it always answers.
- the **runner** (the guard's child) dies with the guard (PR_SET_PDEATHSIG on Linux) and
  answers requests: a JSON array of requests per line on stdin, each `{code, input, libs,
  filename, context}` (the worker sends those it has together: one encoding and one
  decoding per line, not per request), answered in order, one JSON reply per line on
  stdout, `{ok: true, value}` or `{ok: false, error, syntax_error}`, both with
  `stdout`/`stderr` when the snippet wrote any. File descriptors
  0-2 of the runner are /dev/null and two temporary files: `print`, `sys.stderr`,
  C extensions and subprocesses write there, never into the reply pipe; after each request
  the files are read back (bounded by `--log-bytes` per stream: the head and the tail are
  kept, the middle replaced by a marker naming the bytes dropped) and emptied. A stream
  longer than that also comes whole, as `stdout_full`/`stderr_full` (at most
  `--log-max-bytes`, head and tail again beyond), for the worker to keep by reference.

A snippet's failure names its line: the code is compiled under the filename it is sent with
(`<step NAME>`), its source is registered with `linecache`, and the error message carries
the line of the innermost snippet frame, the traceback (snippet frames and what they
called) goes to the captured stderr.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import linecache
import os
import select
import signal
import stat
import sys
import tempfile
import traceback
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, BinaryIO

_FUNCTION_NAME = "__noetl_snippet__"
DEFAULT_FILENAME = "<python step>"
# prctl(2) options (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
# Exit code of an executor that could not start (EX_SOFTWARE): its reply says why.
STARTUP_FAILED = 70
# A reply as JSON, values JSON cannot hold as `str`: one encoder for every request
# (json.dumps with options builds one per call).
_REPLY_JSON = json.JSONEncoder(default=str)


class SnippetSyntaxError(Exception):
    """The snippet does not parse; the message names the line."""


class SnippetFailed(Exception):
    """The snippet raised: `message` names the exception and its line, `trace` is the
    formatted traceback of the snippet's frames (and what they called)."""

    def __init__(self, message: str, trace: str) -> None:
        super().__init__(message)
        self.message = message
        self.trace = trace


@lru_cache(maxsize=1024)
def compile_snippet(code: str, filename: str = DEFAULT_FILENAME) -> tuple[Any, bool, list[str]]:
    """Compile code under `filename`; top-level `return` is allowed by wrapping the body in a
    function (its statements keep their line numbers). Returns (code object, wrapped, the
    source lines for linecache)."""
    try:
        tree = ast.parse(code, filename=filename, mode="exec")
    except SyntaxError as exc:
        raise SnippetSyntaxError(
            f"python code has a syntax error at line {exc.lineno}: {exc.msg}"
        ) from None
    has_top_level_return = any(isinstance(node, ast.Return) for node in tree.body)
    if has_top_level_return:
        wrapper = ast.parse(f"def {_FUNCTION_NAME}():\n    pass\n").body[0]
        assert isinstance(wrapper, ast.FunctionDef)
        wrapper.body = tree.body
        tree.body = [wrapper]
        ast.fix_missing_locations(tree)
    return compile(tree, filename, "exec"), has_top_level_return, code.splitlines(True)


def run_snippet(code: str, inputs: Mapping[str, Any], libs: Mapping[str, Any],
                filename: str = DEFAULT_FILENAME, context: Any = None) -> Any:
    """Execute `code` with `inputs` and return its value: `result`, a top-level `return`,
    or `main(**input)`; None when the code provides none of them. An exception raised by the
    snippet (or a module of `libs` failing to import) becomes SnippetFailed."""
    compiled, wrapped, lines = compile_snippet(code, filename)
    # Tracebacks show the snippet's lines; a mtime of None keeps checkcache from evicting it.
    linecache.cache[filename] = (len(code), None, lines, filename)
    namespace: dict[str, Any] = {"__name__": "__noetl__", **inputs}
    namespace["input_data"] = dict(inputs)
    namespace["args"] = dict(inputs)
    namespace["input"] = dict(inputs)
    # NoETL's `context` global: the execution's JSON context (noetl_pg.namespace.python_context).
    namespace["context"] = context if context is not None else {}
    try:
        for alias, module in libs.items():
            namespace[alias] = _import(module)
        exec(compiled, namespace)
        if wrapped:
            return namespace[_FUNCTION_NAME]()
        if "result" in namespace:
            return namespace["result"]
        main = namespace.get("main")
        if callable(main):
            return main(**inputs)
        return None
    except Exception as exc:  # the snippet's own failure is the step's error
        raise describe_failure(exc, filename) from exc


def describe_failure(exc: BaseException, filename: str) -> SnippetFailed:
    """`KeyError: 'a' (line 3: value = data['a'])`, with the traceback from the first
    snippet frame on (this module's frames are not the user's business)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    line = None
    walk = tb
    while walk is not None:
        if walk.tb_frame.f_code.co_filename == filename:
            line = walk.tb_lineno
        walk = walk.tb_next
    text = str(exc)
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if line is not None:
        source = linecache.getline(filename, line).strip()
        message += f" (line {line}: {source})" if source else f" (line {line})"
    trace = "".join(traceback.format_exception(type(exc), exc, tb))
    return SnippetFailed(message, trace)


def _import(module: Any) -> Any:
    """`libs` values: a module name, or NoETL's `{from: package, import: name}`."""
    if isinstance(module, Mapping):
        package = importlib.import_module(str(module["from"]))
        name = str(module["import"])
        if hasattr(package, name):
            return getattr(package, name)
        return importlib.import_module(f"{module['from']}.{name}")
    return importlib.import_module(module)


def _reply(request: Mapping[str, Any]) -> dict[str, Any]:
    try:
        value = run_snippet(request["code"], request.get("input") or {},
                            request.get("libs") or {},
                            request.get("filename") or DEFAULT_FILENAME, request.get("context"))
    except SnippetSyntaxError as exc:
        return {"ok": False, "error": str(exc), "syntax_error": True}
    except SnippetFailed as exc:
        sys.stderr.write(exc.trace)
        return {"ok": False, "error": exc.message, "syntax_error": False}
    return {"ok": True, "value": value}


class Capture:
    """One output stream of the runner (fd 1 or 2) pointed at a temporary file, read back
    and emptied after each request."""

    def __init__(self, fd: int, limit: int, whole_limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.whole_limit = max(whole_limit, limit)
        with tempfile.TemporaryFile() as spool:
            os.dup2(spool.fileno(), fd)

    def _read(self, size: int, limit: int, marker: str) -> str:
        if size <= limit:
            return os.pread(self.fd, size, 0).decode("utf-8", "replace")
        head = limit // 2
        tail = limit - head
        return (os.pread(self.fd, head, 0).decode("utf-8", "replace")
                + f"\n[... {size - limit} bytes dropped{marker} ...]\n"
                + os.pread(self.fd, tail, size - tail).decode("utf-8", "replace"))

    def take(self) -> tuple[str, str | None]:
        """What was written since the last call: at most `limit` bytes of it, and when it
        is longer, the whole (at most `whole_limit` bytes), else None."""
        size = os.fstat(self.fd).st_size
        if size == 0:  # most snippets write nothing: one system call per stream and request
            return "", None
        text = self._read(size, self.limit, "; noetl logs --full prints them")
        whole = self._read(size, self.whole_limit, "") if size > self.limit else None
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        return text, whole


def serve(log_bytes: int, log_max_bytes: int) -> None:
    """Answer requests until stdin closes (see the module docstring)."""
    requests: BinaryIO = os.fdopen(os.dup(0), "rb")
    replies: BinaryIO = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    outputs = {"stdout": Capture(1, log_bytes, log_max_bytes),
               "stderr": Capture(2, log_bytes, log_max_bytes)}
    stdout, stderr = sys.stdout, sys.stderr
    for line in requests:
        for request in json.loads(line):
            replies.write(_answer(request, outputs, stdout, stderr))


def _answer(request: Mapping[str, Any], outputs: dict[str, Capture], stdout: Any,
            stderr: Any) -> bytes:
    """Run one request: its reply line, with what the snippet wrote on each stream."""
    reply = _reply(request)
    sys.stdout, sys.stderr = stdout, stderr  # in case the snippet replaced them
    for stream in (stdout, stderr):
        with contextlib.suppress(OSError, ValueError):  # e.g. closed by the snippet
            stream.flush()
    for name, capture in outputs.items():
        text, whole = capture.take()
        if text:
            reply[name] = text
        if whole is not None:
            reply[f"{name}_full"] = whole
    try:
        data = _REPLY_JSON.encode(reply)
    except ValueError as exc:  # e.g. a circular structure
        data = json.dumps({"ok": False, "error": f"result is not JSON: {exc}",
                           "syntax_error": False})
    return data.encode() + b"\n"


# --- the guard: privileges, parent death, process group ---------------------------------


def _allows(info: os.stat_result, uid: int, gid: int, user: int, group: int, other: int) -> bool:
    """Whether permission bits let (uid, gid) do what `user`/`group`/`other` stand for."""
    if info.st_uid == uid:
        return bool(info.st_mode & user)
    if info.st_gid == gid:
        return bool(info.st_mode & group)
    return bool(info.st_mode & other)


def _reroute(entry: str, uid: int, gid: int, anchors: dict[str, int]) -> str:
    """`entry` (a sys.path directory) as a path the unprivileged (uid, gid) can import from.

    A directory below one it cannot search (a Python installed under /root, mode 0700) is
    reached through `/proc/self/fd/N/...`, N an O_PATH descriptor opened while still root:
    the kernel follows that link without checking the directories above N, so the user reads
    the installation (and only what lies under N) without root's home being opened to it.
    An entry that needs no detour, or cannot be helped, is returned unchanged."""
    if not os.path.isabs(entry) or not os.path.isdir(entry):
        return entry
    parts = os.path.normpath(entry).split(os.sep)[1:]
    chain = [os.sep + os.sep.join(parts[:depth]) for depth in range(len(parts) + 1)]
    searchable = [_allows(os.stat(path), uid, gid, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
                  for path in chain]
    blocked = [index for index, ok in enumerate(searchable) if not ok]
    if not blocked or blocked[-1] == len(chain) - 1:
        return entry
    if not _allows(os.stat(entry), uid, gid, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
        return entry
    anchor = chain[blocked[-1] + 1]
    if anchor not in anchors:
        anchors[anchor] = os.open(anchor, os.O_PATH | os.O_DIRECTORY)
    rest = os.path.relpath(entry, anchor)
    return f"/proc/self/fd/{anchors[anchor]}" + ("" if rest == "." else f"/{rest}")


def drop_privileges(uid: int, gid: int) -> None:
    """Become (uid, gid) for good (real, effective and saved ids; no supplementary groups),
    keeping the interpreter's import path reachable (see `_reroute`)."""
    anchors: dict[str, int] = {}
    sys.path[:] = [_reroute(entry, uid, gid, anchors) for entry in sys.path]
    for module in list(sys.modules.values()):  # packages already imported find submodules
        search = getattr(module, "__path__", None)  # through their own __path__
        if isinstance(search, list):
            search[:] = [_reroute(entry, uid, gid, anchors) for entry in search]
    sys.path_importer_cache.clear()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def die_with_parent() -> None:
    """SIGKILL this process when its parent (the guard) ends; Linux only."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _exit_like(status: int) -> None:
    """End the guard as the runner ended: the same exit code, or the same signal."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)


def guard(lifeline: int, runner: int) -> None:
    """Wait for the runner's end or the worker's death (see the module docstring)."""
    for fd in (0, 1):  # the pipes belong to the runner: its death must reach the worker
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, fd)
        os.close(devnull)
    # Stopped by hand (SIGTERM, SIGINT): take the group along, as on the worker's death.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: os.killpg(0, signal.SIGKILL))
    runner_fd = os.pidfd_open(runner)
    while True:
        ready, _, _ = select.select([lifeline, runner_fd], [], [])
        if lifeline in ready and not os.read(lifeline, 1):
            os.killpg(0, signal.SIGKILL)
        if runner_fd in ready:
            _, status = os.waitpid(runner, 0)
            _exit_like(status)


def _options(argv: list[str]) -> dict[str, int]:
    names = argv[0::2]
    values = argv[1::2]
    if len(names) != len(values) or not all(name.startswith("--") for name in names):
        raise ValueError(f"usage: python_child.py --lifeline FD --log-bytes N "
                         f"[--log-max-bytes N] [--uid UID --gid GID], got {argv}")
    pairs = zip(names, values, strict=True)
    return {name[2:].replace("-", "_"): int(value) for name, value in pairs}


def main(argv: list[str]) -> None:
    try:
        options = _options(argv)
        if "uid" in options:
            drop_privileges(options["uid"], options["gid"])
        guard_pid = os.getpid()
        runner = os.fork()
    except Exception as exc:
        # The first reply the worker reads explains why this executor cannot serve.
        os.write(1, json.dumps({"ok": False, "syntax_error": False,
                                "error": f"python executor could not start: {exc}"}).encode()
                 + b"\n")
        os._exit(STARTUP_FAILED)
    if runner == 0:
        die_with_parent()
        if os.getppid() != guard_pid:  # the guard died before prctl took effect
            os._exit(1)
        os.close(options["lifeline"])
        serve(options["log_bytes"], options.get("log_max_bytes", options["log_bytes"]))
    else:
        guard(options["lifeline"], runner)


if __name__ == "__main__":
    main(sys.argv[1:])
