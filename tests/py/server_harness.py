"""A real `noetl server` process on 127.0.0.1 (a free port) for the server tests.

The server runs as `python -m noetl_pg.cli server` in its own process group, with an
in-process worker and projector, against a test database; `stop()` ends that process only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
CREDENTIAL_KEY = "server-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def noetl_env(dsn: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("NOETL_SERVER_URL", "NOETL_SERVER_TOKEN")}
    env.update(NOETL_DSN=dsn, NOETL_CREDENTIAL_KEY=CREDENTIAL_KEY,
               NOETL_SERVER_AUTH_CACHE_SECONDS="0", **extra)
    return env


def noetl(dsn: str, *args: str, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `noetl` CLI in a subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "noetl_pg.cli", *args], cwd=REPO_ROOT,
                          env=env or noetl_env(dsn), capture_output=True, text=True,
                          timeout=timeout, check=False)


class Server:
    """One server process; `url` is its base URL, `client()` an httpx client for it."""

    def __init__(self, dsn: str, *, worker_slots: int = 4, host: str = "127.0.0.1") -> None:
        self.dsn = dsn
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.log = REPO_ROOT / ".cache" / f"server-{self.port}.log"
        self.log.parent.mkdir(exist_ok=True)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "noetl_pg.cli", "server", "--host", host,
                 "--port", str(self.port), "--worker-slots", str(worker_slots)],
                cwd=REPO_ROOT, env=noetl_env(dsn), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: "
                                   f"{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy: {self.log.read_text()}")

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def wait_status(client: httpx.Client, execution_id: str, *, timeout: float = 60,
                projected: bool = True) -> dict[str, Any]:
    """Poll /status until the run finishes (and, if `projected`, the projection shows it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/executions/{execution_id}/status").json()
        if (status["completed"] or status["failed"]) and (status["projected"] or not projected):
            return status
        time.sleep(0.1)
    raise TimeoutError(f"execution {execution_id} did not finish in {timeout}s")
