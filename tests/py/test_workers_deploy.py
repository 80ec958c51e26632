"""workers/: the systemd unit and the Kubernetes Deployment run what they name.

Each file is parsed, and the command line it names (ExecStart; the container's command and
args, and its probes) runs against a database of the test's own: the worker migrates it,
claims and finishes an execution's commands, the probe answers 0 while it heartbeats and
1 once it stopped on SIGTERM. The install root the files name (/opt/noetl) is this
checkout; `noetl` is the one of this virtualenv.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from noetl_pg import db
from noetl_pg.testdb import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ROOT / "workers"
INSTALL_ROOT = "/opt/noetl"
BIN = Path(sys.executable).parent


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: section -> its (key, value) lines in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: not a unit line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def _one(lines: list[tuple[str, str]], key: str) -> str:
    values = [value for name, value in lines if name == key]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def _installed(path: str) -> str:
    """A path under the install root the files name, in this checkout."""
    assert path.startswith(INSTALL_ROOT + "/"), path
    return str(ROOT / path.removeprefix(INSTALL_ROOT + "/"))


def _k8s_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command, args and probe commands."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), text)


@pytest.fixture
def blank_dsn() -> Iterator[str]:
    """A database with no schema yet: the deployed worker migrates it."""
    database = create_database("noetl_deploy")
    yield database
    db.close_pools(database)
    drop_database(database)


def _base_env(dsn: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOETL_")}
    env.update(NOETL_DSN=dsn, PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
               NOETL_WORKER_HEARTBEAT_SECONDS="1",
               NOETL_EXECUTOR_USER=os.environ.get("NOETL_EXECUTOR_USER", ""))
    if not env["NOETL_EXECUTOR_USER"]:
        del env["NOETL_EXECUTOR_USER"]
    return env


def _probe(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, "--json"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _wait_ready(command: list[str], env: dict[str, str], worker: subprocess.Popen[str]) -> dict:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise AssertionError(f"worker exited: {worker.stderr.read() if worker.stderr else ''}")
        answer = _probe(command, env)
        if answer.returncode == 0:
            report: dict = json.loads(answer.stdout)
            return report
        time.sleep(0.5)
    raise AssertionError(f"probe never answered 0: {answer.stderr}")


def _run_playbook(env: dict[str, str]) -> tuple[int, dict]:
    started = subprocess.run([str(BIN / "noetl"), "start", "examples/hello_world.yaml", "--json"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                             check=True)
    execution_id = int(json.loads(started.stdout)["execution_id"])
    deadline = time.monotonic() + 60
    with db.connection(env["NOETL_DSN"]) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("select status, result from noetl.execution "
                               "where execution_id = %s", (execution_id,)).fetchone()
            if row and row["status"] != "RUNNING":
                return execution_id, row
            time.sleep(0.2)
    raise AssertionError(f"execution {execution_id} did not finish")


def _serve_and_check(command: list[str], probe: list[str], env: dict[str, str],
                     worker_id: str) -> None:
    worker = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        report = _wait_ready(probe, env, worker)
        assert report["worker_id"] == worker_id and report["running"] is True
        assert report["heartbeat_age_seconds"] <= report["max_age_seconds"]
        execution_id, row = _run_playbook(env)
        assert row["status"] == "COMPLETED"
        assert row["result"] == {"greeting": "Hello, World!", "length": 13}
        with db.connection(env["NOETL_DSN"]) as conn:
            claims = conn.execute(
                "select node_name, meta ->> 'worker_id' as worker_id from noetl.event "
                "where execution_id = %s and (event_type = 'command.claimed' or "
                # a command created claimed: its command.issued names the worker
                "(event_type = 'command.issued' and meta ? 'worker_id')) "
                "order by event_id", (execution_id,)).fetchall()
        assert [(c["node_name"], c["worker_id"]) for c in claims] == [
            ("greet", worker_id), ("measure", worker_id)]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        stopped = _probe(probe, env)
        assert stopped.returncode == 1
        assert json.loads(stopped.stdout) == {"error": f"worker {worker_id} has stopped"}
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_systemd_unit_runs_a_worker(blank_dsn: str) -> None:
    unit = parse_unit(WORKERS / "systemd" / "noetl-worker.service")
    service = unit["Service"]
    assert _one(service, "KillSignal") == "SIGTERM"
    assert int(_one(service, "TimeoutStopSec")) > 300  # the default claim timeout
    assert _one(service, "Restart") == "on-failure"
    assert _one(unit["Install"], "WantedBy") == "multi-user.target"
    environment = dict(value.split("=", 1) for name, value in service
                       if name == "Environment")
    host = socket.gethostname()
    # %H is the host name: the worker's stable id.
    assert environment["NOETL_WORKER_ID"] == "%H"
    env = _base_env(blank_dsn) | {"NOETL_WORKER_ID": host}
    command = [_installed(part) if part.startswith(INSTALL_ROOT) else part
               for part in shlex.split(_one(service, "ExecStart"))]
    assert Path(command[0]).is_file() and os.access(command[0], os.X_OK)
    _serve_and_check(command, [str(BIN / "noetl"), "worker", "probe"], env, host)


def test_kubernetes_deployment_runs_a_worker_and_its_probes(blank_dsn: str) -> None:
    manifest = yaml.safe_load((WORKERS / "k8s" / "deployment.yaml").read_text())
    assert manifest["kind"] == "Deployment"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 300
    (container,) = pod["containers"]
    assert manifest["spec"]["selector"]["matchLabels"].items() <= \
        manifest["spec"]["template"]["metadata"]["labels"].items()
    values = {item["name"]: item for item in container["env"]}
    assert values["NOETL_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pod_name = f"noetl-worker-{os.getpid()}"
    env = _base_env(blank_dsn) | {"NOETL_WORKER_ID": pod_name}
    env |= {name: item["value"] for name, item in values.items() if "value" in item}
    env["NOETL_WORKER_HEARTBEAT_SECONDS"] = "1"  # 5 s in the manifest; the test is short
    command = [_installed(container["command"][0]), *container["command"][1:],
               *[_k8s_expand(arg, env) for arg in container.get("args", [])]]
    liveness = container["livenessProbe"]["exec"]["command"]
    readiness = container["readinessProbe"]["exec"]["command"]
    for probe in (liveness, readiness):
        assert probe[:3] == ["noetl", "worker", "probe"]
    probe = [str(BIN / "noetl"), *[_k8s_expand(arg, env) for arg in liveness[1:]]]
    _serve_and_check(command, probe, env, pod_name)


def test_entrypoint_refuses_to_start_without_a_database() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOETL_")}
    started = subprocess.run([str(WORKERS / "entrypoint.sh")], env=env, capture_output=True,
                             text=True, timeout=30)
    assert started.returncode == 2
    assert started.stderr.strip() == "noetl worker: NOETL_DSN must name the engine database"
