"""Helpers of the executor isolation tests (test_pyexec_*.py): default settings, a directory
the executor user can write, process liveness, a `noetl worker` subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.python import worker_pool
from noetl_pg.tools.python_executor import EXECUTOR_USER_ENV

NOETL = str(Path(sys.executable).parent / "noetl")


@contextlib.contextmanager
def default_executors(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Worker resources whose executors start with the default settings (conftest.py runs
    executors as the suite's user; these tests must not)."""
    monkeypatch.delenv(EXECUTOR_USER_ENV, raising=False)
    resources: dict[str, Any] = {}
    try:
        yield resources
    finally:
        if resources:
            worker_pool(resources).close()


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that the executor user can write (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="noetl-pyexec-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tool_context(resources: dict[str, Any], step: str = "s", timeout: float | None = None,
                 **fields: Any) -> ToolContext:
    return ToolContext(execution_id=1, step=step, command_id=1, attempt=1, dsn="",
                       worker_resources=resources, timeout_seconds=timeout, **fields)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


@contextlib.contextmanager
def noetl_worker(dsn: str, log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `noetl worker` subprocess with the default executor settings; killed at the end."""
    environment = {name: value for name, value in os.environ.items()
                   if name != EXECUTOR_USER_ENV}
    environment.update(NOETL_DSN=dsn, **env)
    with log.open("wb") as out:
        proc = subprocess.Popen([NOETL, "worker", "--concurrency", "2"], env=environment,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
