"""Helpers for tests that run real `noetl worker` processes and kill or stop them."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOETL = str(Path(sys.executable).parent / "noetl")


class Workers:
    """`noetl worker` subprocesses of one test; every one left is killed at the end.

    `heartbeat_seconds` / `claim_timeout_seconds` (strings, as in the environment) set
    NOETL_WORKER_HEARTBEAT_SECONDS and NOETL_COMMAND_HEARTBEAT_TIMEOUT_SECONDS; None keeps
    the defaults. Each worker logs to <log_dir>/<worker_id>.log."""

    def __init__(self, dsn: str, log_dir: Path, *, heartbeat_seconds: str | None = None,
                 claim_timeout_seconds: str | None = None) -> None:
        self.dsn = dsn
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "NOETL_DSN": dsn}
        # Run before the worker command (e.g. `ip netns exec <namespace>`).
        self.prefix: list[str] = []
        if heartbeat_seconds is not None:
            self.env["NOETL_WORKER_HEARTBEAT_SECONDS"] = heartbeat_seconds
        if claim_timeout_seconds is not None:
            self.env["NOETL_COMMAND_HEARTBEAT_TIMEOUT_SECONDS"] = claim_timeout_seconds

    def start(self, worker_id: str, *, kinds: str | None = None, concurrency: int = 4,
              batch_size: int = 4) -> subprocess.Popen[bytes]:
        args = [*self.prefix, NOETL, "worker", "--worker-id", worker_id,
                "--concurrency", str(concurrency), "--batch-size", str(batch_size)]
        if kinds:
            args += ["--kinds", kinds]
        log = (self.log_dir / f"{worker_id}.log").open("ab")
        proc = subprocess.Popen(args, env={**self.env, "TEST_WORKER_NAME": worker_id},
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[worker_id] = proc
        return proc

    def signal(self, worker_id: str, signum: int) -> None:
        self.procs[worker_id].send_signal(signum)
        if signum == signal.SIGKILL:
            self.procs[worker_id].wait(10)

    def stop_all(self, timeout: float = 30) -> None:
        """SIGTERM every worker and wait: each finishes what it holds and disconnects."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            proc.wait(timeout)

    def log(self, worker_id: str) -> str:
        path = self.log_dir / f"{worker_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)


def wait_until(condition: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def line_counts(log: Path) -> collections.Counter[str]:
    return collections.Counter(log.read_text().split()) if log.exists() else collections.Counter()
