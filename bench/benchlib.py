"""What the benches share: `noetl worker` processes, their memory, and the result files.

Not a bench (`make bench` runs the scripts it names). Every bench writes
bench/results/<name>.json with `write_result`: its own details plus `figures`, a list of
    {"name", "value", "unit", "per_unit_s", "note"}
where `per_unit_s` is the seconds one unit of work took (an item, a step, a child
execution, a request), or None. bench/collect.py renders every file's figures into
bench/results.md, each beside the bare queue's and the floor's seconds per unit
(bench/bare_queue.py) as a ratio.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NOETL = [sys.executable, "-m", "noetl_pg.cli"]
STARTED = time.monotonic()  # when the bench's process imported this module


def load_example(relative: str) -> ModuleType:
    """An example's driver script (e.g. examples/regression/run.py) as a module."""
    path = ROOT / relative
    name = relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def figure(name: str, value: float, unit: str, per_unit_s: float | None = None,
           note: str = "") -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "per_unit_s": per_unit_s, "note": note}


def write_result(name: str, figures: list[dict[str, Any]], details: dict[str, Any]) -> Path:
    """bench/results/<name>.json: `figures` for the collector, `details` for a reader."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"bench": name, "script": Path(sys.argv[0]).name,
                                "figures": figures,
                                "wall_seconds": time.monotonic() - STARTED,
                                "load_average_end": os.getloadavg()[0], **details},
                               indent=2, default=str) + "\n")
    print(f"wrote {path.relative_to(ROOT)}", flush=True)
    return path


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the worker's python executors)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


class RssSampler:
    """Samples a process's RSS (and its process tree's) every `interval` seconds while
    running; `figures()` gives start (when sampling began), peak and end in MiB."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[int, int]] = []  # (process KiB, tree KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        own = rss_kib(self.pid)
        tree = own + sum(rss_kib(child) for child in descendants(self.pid))
        self.samples.append((own, tree))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def figures(self) -> dict[str, float]:
        own = [sample[0] / 1024 for sample in self.samples]
        tree = [sample[1] / 1024 for sample in self.samples]
        return {"rss_start_mib": own[0], "rss_peak_mib": max(own), "rss_end_mib": own[-1],
                "tree_rss_start_mib": tree[0], "tree_rss_peak_mib": max(tree),
                "tree_rss_end_mib": tree[-1], "peak_over_start": max(own) / own[0]}


class NoetlWorker:
    """One `noetl worker [flags]` process on `dsn` (no flags: what a user gets), started
    and registered on entry, stopped with SIGTERM on exit."""

    def __init__(self, dsn: str, flags: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.flags = flags or []
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NoetlWorker:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("update noetl.worker set stopped_at = now() where stopped_at is null")
            self.process = subprocess.Popen(
                [*NOETL, "worker", *self.flags],
                env={**os.environ, **self.env, "NOETL_DSN": self.dsn},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 120
            while conn.execute("select count(*) from noetl.worker "
                               "where stopped_at is null").fetchone()[0] < 1:  # type: ignore[index]
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("noetl worker did not register")
                time.sleep(0.05)
        time.sleep(0.5)  # every slot connected and idle
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_finished(dsn: str, execution_id: int, timeout: float = 1800) -> dict[str, Any]:
    """Poll until the execution leaves RUNNING; its status, error and server-side seconds."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "select status, error, extract(epoch from finished_at - started_at) "
                "from noetl.execution where execution_id = %s", (execution_id,)).fetchone()
            assert row is not None
            if row[0] != "RUNNING":
                return {"status": row[0], "error": row[1], "seconds": float(row[2] or 0)}
            if time.monotonic() > deadline:
                raise RuntimeError(f"execution {execution_id} did not finish in {timeout}s")
            time.sleep(0.1)


def start_execution(dsn: str, path: str, payload: dict[str, Any] | None = None) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select noetl.start_execution(%s, %s)",
                           (path, Jsonb(payload or {}))).fetchone()
    assert row is not None
    return int(row[0])


def largest_event(dsn: str, execution_id: int) -> dict[str, int]:
    """Event count and largest event row (bytes) of an execution and its children."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select count(*), coalesce(max(pg_column_size(e.*)), 0) from noetl.event as e "
            "where e.execution_id = %s or e.execution_id in (select x.execution_id "
            "from noetl.execution as x where x.parent_execution_id = %s)",
            (execution_id, execution_id)).fetchone()
    assert row is not None
    return {"events": int(row[0]), "largest_event_bytes": int(row[1])}
