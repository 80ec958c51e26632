"""Executor processes for `kind: python` (process isolation): start, call, kill, pool.

An executor is a guard and a runner process (`python_child.py`) in a process group of their
own:
- it cannot outlive the worker: the worker holds the only write end of a "lifeline" pipe;
  when the worker dies, even by SIGKILL, the guard reads end-of-file and kills the process
  group (the runner and whatever the step spawned); the runner also dies with the guard
  (PR_SET_PDEATHSIG). A timeout or cancel kills the same group.
- it cannot reach the engine: its environment has no `NOETL_*`, `PG*`, `*DSN*` or
  `DATABASE_URL` variable, and when the worker runs as root it runs as an unprivileged
  user (`NOETL_EXECUTOR_USER`, default `noetl-exec`, created as a system user on first
  use when missing), so it cannot read the worker's /proc/<pid>/environ or memory, nor
  root's files; having dropped root it is not dumpable, so concurrent steps cannot read
  each other's either. `NOETL_EXECUTOR_USER=root` opts out (steps then run as root). A
  worker not running as root cannot switch users: its executors run as its own user.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noetl_pg import settings
from noetl_pg.errors import ToolError

log = logging.getLogger(__name__)

CHILD_SCRIPT = Path(__file__).resolve().with_name("python_child.py")
EXECUTOR_USER_ENV = "NOETL_EXECUTOR_USER"
DEFAULT_EXECUTOR_USER = "noetl-exec"
# An executor is replaced after this many calls, bounding what a leaky snippet can hold.
MAX_CALLS_PER_EXECUTOR = 10_000
# How often a waiting call looks at its cancel flag.
CANCEL_CHECK_SECONDS = 0.1
# How long an executor whose reply pipe closed may take to exit before it is killed.
EXIT_GRACE_SECONDS = 1.0
# Requests as JSON, values JSON cannot hold as `str`: one encoder for every call
# (json.dumps with options builds one per call).
_REQUEST_JSON = json.JSONEncoder(default=str)

_user_lock = threading.Lock()


class ExecutorDied(Exception):
    """The executor process ended while running a snippet."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(returncode)
        self.returncode = returncode


class ExecutorTimeout(Exception):
    """The executor did not answer within the time budget."""


class ExecutorCancelled(Exception):
    """The execution was cancelled while the executor ran its snippet."""


@dataclass(frozen=True)
class ExecutorUser:
    """The OS account executors run as."""

    name: str
    uid: int
    gid: int
    home: str


def _is_engine_variable(name: str) -> bool:
    """Variables that reach the engine's database or secrets (never given to a step)."""
    upper = name.upper()
    return upper.startswith(("NOETL_", "PG")) or "DSN" in upper or upper == "DATABASE_URL"


def executor_environment(user: ExecutorUser | None) -> dict[str, str]:
    """The worker's environment minus what reaches the engine; HOME/USER of `user`."""
    env = {name: value for name, value in os.environ.items() if not _is_engine_variable(name)}
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    return env


def _create_default_user() -> pwd.struct_passwd:
    """Add the default executor account (a system user with no home and no login shell)."""
    with _user_lock:
        try:
            return pwd.getpwnam(DEFAULT_EXECUTOR_USER)
        except KeyError:
            pass
        command = ["useradd", "--system", "--user-group", "--no-create-home",
                   "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                   DEFAULT_EXECUTOR_USER]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except OSError as exc:
            raise ToolError(f"python executor user '{DEFAULT_EXECUTOR_USER}' does not exist and "
                            f"cannot be created ({exc}); create it or set "
                            f"{EXECUTOR_USER_ENV}") from None
        try:  # a concurrent worker may have created it first
            return pwd.getpwnam(DEFAULT_EXECUTOR_USER)
        except KeyError:
            raise ToolError(f"python executor user '{DEFAULT_EXECUTOR_USER}' does not exist and "
                            f"useradd failed: {done.stderr.strip()}; create it or set "
                            f"{EXECUTOR_USER_ENV}") from None


def executor_user() -> ExecutorUser | None:
    """Whom executors run as: None for the worker's own user (see the module docstring)."""
    requested = settings.current().executor_user or ""
    if os.geteuid() != 0:
        own = pwd.getpwuid(os.geteuid()).pw_name
        if requested and requested != own:
            raise ToolError(f"{EXECUTOR_USER_ENV}={requested}: only a worker running as root "
                            f"can run python steps as another user (this one runs as {own})")
        return None
    try:
        entry = pwd.getpwnam(requested or DEFAULT_EXECUTOR_USER)
    except KeyError:
        if requested:
            raise ToolError(f"{EXECUTOR_USER_ENV}={requested}: no such user") from None
        entry = _create_default_user()
    if entry.pw_uid == 0:
        return None
    return ExecutorUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def log_bytes() -> int:
    return settings.current().python_log_bytes


class Executor:
    """One warm executor (guard + runner). Used by one thread at a time (the pool hands it
    out)."""

    def __init__(self) -> None:
        user = executor_user()
        lifeline_read, self._lifeline = os.pipe()
        args = [sys.executable, "-P", str(CHILD_SCRIPT), "--lifeline", str(lifeline_read),
                "--log-bytes", str(log_bytes()),
                "--log-max-bytes", str(settings.current().python_log_max_bytes)]
        if user is not None:
            args += ["--uid", str(user.uid), "--gid", str(user.gid)]
        try:
            self.process = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                bufsize=0, env=executor_environment(user), close_fds=True,
                pass_fds=(lifeline_read,), process_group=0,
            )
        except BaseException:
            os.close(self._lifeline)
            raise
        finally:
            os.close(lifeline_read)
        self.calls = 0
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin_fd = self.process.stdin.fileno()
        self._stdout_fd = self.process.stdout.fileno()
        # Requests are written without blocking (see `send`); replies read ahead of the
        # one asked for wait here. Replies are read without blocking too (see `receive`).
        os.set_blocking(self._stdin_fd, False)
        os.set_blocking(self._stdout_fd, False)
        self._outgoing = bytearray()
        self._incoming = bytearray()

    def call(
        self, request: Mapping[str, Any], timeout: float | None,
        cancelled: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Send one request and wait for its reply; raises ExecutorDied / ExecutorTimeout /
        ExecutorCancelled (when `cancelled` is set while it waits)."""
        self.send([request])
        return self.receive(timeout, cancelled)

    def send(self, requests: Sequence[Mapping[str, Any]]) -> None:
        """Queue requests for the runner, which answers them in order (`receive`): as much
        as the pipe takes is written now, in one system call, the rest while waiting for
        replies (a runner blocked writing replies nobody reads would never read more)."""
        self.calls += len(requests)
        self._outgoing += _REQUEST_JSON.encode(list(requests)).encode() + b"\n"
        self._write()

    def receive(self, timeout: float | None,
                cancelled: threading.Event | None = None) -> dict[str, Any]:
        """The reply to the oldest request not yet answered. The time budget counts from
        this call: a request sent ahead may have started earlier, by at most the time its
        caller spent on the replies before it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        end = self._incoming.find(b"\n")
        while end < 0:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ExecutorTimeout()
            # The runner is usually ahead of the worker: its replies are read at once, and
            # select (a system call more, and another release of the interpreter lock for
            # the other slots to contend for) waits only when none has come yet.
            if self._outgoing:
                self._write()
            chunk = self._read()
            if chunk is None:
                wait = remaining
                if cancelled is not None:
                    wait = (CANCEL_CHECK_SECONDS if wait is None
                            else min(wait, CANCEL_CHECK_SECONDS))
                writable = [self._stdin_fd] if self._outgoing else []
                ready, can_write, _ = select.select([self._stdout_fd], writable, [], wait)
                if can_write:
                    self._write()
                chunk = self._read() if ready else None
            if cancelled is not None and cancelled.is_set():
                raise ExecutorCancelled()
            if chunk is None:
                continue
            if not chunk:
                raise ExecutorDied(self._ended())
            searched = len(self._incoming)
            self._incoming += chunk
            end = self._incoming.find(b"\n", searched)
        # Replies are ASCII (the runner's encoder escapes the rest): decoding them as text
        # skips json.loads' guess at the encoding of bytes.
        result: dict[str, Any] = json.loads(self._incoming[:end].decode())
        del self._incoming[:end + 1]
        return result

    def _read(self) -> bytes | None:
        """What the runner has written so far (b"" at its end), None when nothing yet."""
        try:
            return os.read(self._stdout_fd, 1 << 16)
        except BlockingIOError:
            return None

    def _write(self) -> None:
        """Write what the pipe takes of the queued requests without blocking. A closed
        request pipe means the runner ended, but the replies it wrote before are still to
        be read: the queued requests are dropped (they never reach a runner) and the death
        is reported by `receive` at the first reply missing, not to the caller who happened
        to be writing."""
        try:
            written = os.write(self._stdin_fd, self._outgoing)
        except BlockingIOError:
            return
        except OSError:
            self._outgoing.clear()
            return
        del self._outgoing[:written]

    def _ended(self) -> int | None:
        """The exit status of an executor whose reply pipe closed. The guard exits as soon
        as its runner does; it is waited for without being reaped (its pid, the group id,
        stays reserved, so the group kill cannot reach anyone else's processes), then the
        group is killed: what the step left running, or a runner that closed its pipe and
        lives on (the status is then SIGKILL's)."""
        deadline = time.monotonic() + EXIT_GRACE_SECONDS
        while self.process.returncode is None and time.monotonic() < deadline:
            if os.waitid(os.P_PID, self.process.pid,
                         os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                break
            time.sleep(0.005)
        if self.process.returncode is None:
            self._kill_group()
        return self.process.wait()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """Kill the executor and everything the step started in its process group."""
        if self.process.returncode is None:
            self._kill_group()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1


class ExecutorPool:
    """Warm executors shared by a worker's slots; broken ones are replaced in the background.

    `acquire` hands out an idle executor or starts one; `release` keeps at most
    `max_idle` warm; `discard` kills a broken one and warms a replacement. `close()`
    (worker shutdown) kills them all.
    """

    def __init__(self, max_idle: int = 8, warm: int = 1) -> None:
        self._idle: list[Executor] = []
        self._lock = threading.Lock()
        self._max_idle = max_idle
        self._closed = False
        for _ in range(warm):
            self._replace_in_background()

    def batch(self, requests: Sequence[Mapping[str, Any]]) -> ExecutorBatch:
        """Requests for one executor, sent ahead of their replies (see ExecutorBatch)."""
        return ExecutorBatch(self, requests)

    def acquire(self) -> Executor:
        with self._lock:
            while self._idle:
                executor = self._idle.pop()
                if executor.process.poll() is None:
                    return executor
                executor.kill()
        return Executor()

    def release(self, executor: Executor) -> None:
        with self._lock:
            if (not self._closed and len(self._idle) < self._max_idle
                    and executor.calls < MAX_CALLS_PER_EXECUTOR):
                self._idle.append(executor)
                return
        executor.kill()

    def discard(self, executor: Executor) -> None:
        """A broken, timed-out or cancelled executor: killed and replaced."""
        executor.kill()
        self._replace_in_background()

    def _replace_in_background(self) -> None:
        threading.Thread(target=self._warm_one, daemon=True,
                         name="noetl-python-executor").start()

    def _warm_one(self) -> None:
        try:
            executor = Executor()
        except (ToolError, OSError) as exc:  # the next step starts one itself and reports it
            log.warning("could not start a python executor: %s", exc)
            return
        self.release(executor)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for executor in idle:
            executor.kill()


class ExecutorBatch:
    """Requests answered in order by one executor, sent up to `AHEAD` before the reply
    asked for, so that the runner works while the worker renders and finishes the others:
    more are sent when half of those ahead are answered (a batch of 32 costs a few
    writes), and replies are read several at a time. A batch's loop iterations of one
    python step cost fewer system calls, and fewer hand-offs between the worker's
    threads, than a round trip each.

    `reply(i)` is asked in order. The runner answers sequentially, so when request i dies
    or times out, the requests after it never started: they are sent again to a fresh
    executor. A cancel stops the batch (its requests are of one execution) and nothing
    more is sent: the requests already sent run, as a running call does until the cancel
    is seen (at most `AHEAD` of them, within CANCEL_CHECK_SECONDS).
    """

    # Requests sent ahead of the one whose reply is awaited, at most.
    AHEAD = 16

    def __init__(self, pool: ExecutorPool, requests: Sequence[Mapping[str, Any]]) -> None:
        self._pool = pool
        self._requests = list(requests)
        self._executor: Executor | None = None
        # Requests [_answered, _sent) are with the executor; replies are taken in order.
        self._sent = 0
        self._answered = 0

    def reply(self, index: int, timeout: float | None,
              cancelled: threading.Event | None = None) -> dict[str, Any]:
        """Request `index`'s reply; raises ExecutorDied / ExecutorTimeout /
        ExecutorCancelled for it (the executor is then replaced)."""
        if index != self._answered:
            raise ValueError(f"replies are taken in order: asked {index}, next {self._answered}")
        self._answered += 1
        if cancelled is not None and cancelled.is_set():
            self._drop()
            raise ExecutorCancelled()
        if self._executor is None:  # the first reply, or the previous executor failed
            self._executor = self._pool.acquire()
            self._sent = index
        executor = self._executor
        ahead = min(len(self._requests), index + 1 + self.AHEAD)
        try:
            if self._sent <= index + self.AHEAD // 2 and ahead > self._sent:
                executor.send(self._requests[self._sent:ahead])
                self._sent = ahead
            return executor.receive(timeout, cancelled)
        except (ExecutorDied, ExecutorTimeout, ExecutorCancelled):
            self._drop()
            raise

    def close(self) -> None:
        """Give the executor back, or kill it when requests it holds were not answered."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if self._sent > self._answered:
            self._pool.discard(executor)
        else:
            self._pool.release(executor)

    def _drop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            self._pool.discard(executor)
