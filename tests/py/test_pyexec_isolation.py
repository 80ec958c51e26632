"""A python step sees a clean Python (stdlib, duckdb, httpx) and cannot reach the engine.

Default settings: when the suite runs as root, executors run as `noetl-exec` (created on
first use), with no NOETL_*/PG*/DSN variable in their environment.
"""

from __future__ import annotations

import json
import os
import pwd
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from engine_harness import Engine
from pyexec_support import default_executors, noetl_worker, tool_context

from noetl_pg.tools.python import PythonTool
from noetl_pg.tools.python_executor import DEFAULT_EXECUTOR_USER, Executor

TOOLS_DIR = str(Path(PythonTool.__module__.replace(".", "/")).parent)


class _Echo(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    _Echo.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


CLIENTS = """
import http.client, json, sys, urllib.request
import duckdb, httpx, requests
with urllib.request.urlopen(f"http://127.0.0.1:{port}/urllib") as response:
    via_urllib = json.loads(response.read())
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
connection.request("GET", "/http.client")
via_http_client = json.loads(connection.getresponse().read())
via_httpx = httpx.get(f"http://127.0.0.1:{port}/httpx", timeout=10).json()
via_requests = requests.get(f"http://127.0.0.1:{port}/requests", timeout=10).json()
result = {
    "urllib": via_urllib, "http.client": via_http_client, "httpx": via_httpx,
    "requests": via_requests,
    "duckdb": duckdb.sql("select 40 + 2").fetchall()[0][0],
    "files": {name: sys.modules[name].__file__ for name in ("http", "duckdb", "json")},
    "path": sys.path,
}
"""


def test_step_imports_stdlib_duckdb_httpx_and_calls_a_local_server(
    monkeypatch: pytest.MonkeyPatch, http_port: int,
) -> None:
    with default_executors(monkeypatch) as resources:
        result = PythonTool().run({"code": CLIENTS, "input": {"port": http_port}},
                                  tool_context(resources))
    assert isinstance(result, dict)
    assert result["urllib"] == {"path": "/urllib"}
    assert result["http.client"] == {"path": "/http.client"}
    assert result["httpx"] == {"path": "/httpx"}
    assert result["requests"] == {"path": "/requests"}
    assert result["duckdb"] == 42
    assert _Echo.seen == ["/urllib", "/http.client", "/httpx", "/requests"]
    for name, file in result["files"].items():  # the real modules, not the tool modules
        assert not file.endswith(f"noetl_pg/tools/{name}.py"), (name, file)
        assert "noetl_pg/tools" not in file, (name, file)
    assert not any(entry.rstrip("/").endswith(TOOLS_DIR) for entry in result["path"])


def test_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"NOETL_DSN": "host=db password=s3cret", "NOETL_CREDENTIAL_KEY": "k3y",
                        "PGPASSWORD": "pgs3cret", "DATABASE_URL": "postgres://x:y@db/z",
                        "WAREHOUSE_DSN": "dsn-s3cret", "PLAIN_SETTING": "kept"}.items():
        monkeypatch.setenv(name, value)
    with default_executors(monkeypatch) as resources:
        seen = PythonTool().run({"code": "import os\nresult = dict(os.environ)"},
                                tool_context(resources))
    assert isinstance(seen, dict)
    assert seen["PLAIN_SETTING"] == "kept"
    assert not [name for name in seen if name.startswith(("NOETL_", "PG")) or "DSN" in name
                or name == "DATABASE_URL"]
    assert "s3cret" not in json.dumps(seen) and "k3y" not in json.dumps(seen)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs a root worker")
def test_a_root_worker_runs_steps_as_the_executor_user(monkeypatch: pytest.MonkeyPatch) -> None:
    with default_executors(monkeypatch) as resources:
        ids = PythonTool().run({"code": "import os\nresult = [os.getuid(), os.getgid(), "
                                        "os.getgroups(), os.environ['HOME']]"},
                               tool_context(resources))
    user = pwd.getpwnam(DEFAULT_EXECUTOR_USER)
    assert ids == [user.pw_uid, user.pw_gid, [], user.pw_dir]


ATTACK = """
import json, os

def read(path):
    try:
        with open(path, "rb") as source:
            return source.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"denied: {type(exc).__name__}"

guard = os.getppid()
with open(f"/proc/{guard}/stat") as stat:
    worker = int(stat.read().rsplit(")", 1)[1].split()[1])
result = {
    "uid": os.getuid(),
    "engine_env": {name: value for name, value in os.environ.items()
                   if name.startswith(("NOETL", "PG")) or "DSN" in name},
    "dsn": os.environ.get("NOETL_DSN"),
    "parent_environ": read(f"/proc/{guard}/environ"),
    "worker_pid": worker,
    "worker_environ": read(f"/proc/{worker}/environ"),
    "worker_mem": read(f"/proc/{worker}/mem"),
    "key_file": read(key_file),
}
"""

ATTACK_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: attack, path: test/pyexec_attack}
workflow:
  - step: attack
    tool:
      kind: python
      input: {key_file: "{{ key_file }}"}
      code: |
""" + "".join(f"        {line}\n" for line in ATTACK.strip().splitlines())


@pytest.mark.skipif(os.geteuid() != 0, reason="the separate executor user needs a root worker")
@pytest.mark.parametrize("key_source", ["environment", "file"])
def test_a_step_cannot_read_the_workers_secrets(
    fresh_engine: Engine, tmp_path: Path, key_source: str,
) -> None:
    """The attack of issue 12 against a real `noetl worker` with default settings: the step
    looks for the DSN and the credential key in its environment, its parent's and the
    worker's /proc entries, and the key file (NOETL_CREDENTIAL_KEY or, the other way to
    give it, NOETL_CREDENTIAL_KEY_FILE)."""
    key, pg_password = "attack-test-key-6f1d", "attack-test-pgpassword-93ab"
    key_file = tmp_path / "credential.key"
    key_file.write_text(key)
    key_file.chmod(0o600)
    secrets = ({"NOETL_CREDENTIAL_KEY": key} if key_source == "environment"
               else {"NOETL_CREDENTIAL_KEY_FILE": str(key_file)})
    with noetl_worker(fresh_engine.dsn, tmp_path / "w.log", PGPASSWORD=pg_password,
                      **secrets) as proc:
        execution_id = fresh_engine.start(fresh_engine.register(ATTACK_PLAYBOOK),
                                          {"key_file": str(key_file)})
        row = fresh_engine.wait(execution_id, timeout=60)
        worker_pid = proc.pid
    assert row["status"] == "COMPLETED", row["error"]
    found = row["result"]
    assert found["worker_pid"] == worker_pid  # the attack aimed at the right process
    assert found["uid"] == pwd.getpwnam(DEFAULT_EXECUTOR_USER).pw_uid
    assert found["engine_env"] == {} and found["dsn"] is None
    assert found["worker_environ"] == "denied: PermissionError"
    assert found["worker_mem"] == "denied: PermissionError"
    assert found["key_file"] == "denied: PermissionError"
    assert "NOETL_" not in found["parent_environ"]
    everything = json.dumps(found)
    for secret in (key, pg_password, fresh_engine.dsn):
        assert secret not in everything


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs a root worker")
def test_imports_below_a_directory_the_executor_user_cannot_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PYTHONPATH entry (or the interpreter itself) under a 0700 directory of root's stays
    importable, and only what lies below the anchor becomes reachable."""
    with tempfile.TemporaryDirectory(prefix="noetl-pyexec-") as root_only:
        private = Path(root_only)
        private.chmod(0o700)
        (private / "secret.txt").write_text("root's secret")
        library = private / "lib"
        library.mkdir(mode=0o755)
        (library / "hidden_module.py").write_text("ANSWER = 42\n")
        (library / "hidden_module.py").chmod(0o644)
        monkeypatch.setenv("PYTHONPATH", str(library))
        code = """
import os, hidden_module
try:
    open(secret).read()
    leaked = True
except PermissionError:
    leaked = False
result = {"answer": hidden_module.ANSWER, "leaked": leaked, "uid": os.getuid(),
          "file": hidden_module.__file__}
"""
        with default_executors(monkeypatch) as resources:
            found = PythonTool().run(
                {"code": code, "input": {"secret": str(private / "secret.txt")}},
                tool_context(resources))
    assert isinstance(found, dict)
    assert found["answer"] == 42 and found["leaked"] is False
    assert found["uid"] == pwd.getpwnam(DEFAULT_EXECUTOR_USER).pw_uid
    assert found["file"].startswith("/proc/self/fd/")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs a root worker")
def test_steps_cannot_read_each_others_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Executors share the executor user but are not dumpable (they dropped root), so one
    step cannot open another's /proc/<pid>/environ or mem (its inputs, its secrets)."""
    peek = """
def read(path):
    try:
        with open(path, "rb") as source:
            return source.read(64).decode("utf-8", "replace")
    except OSError as exc:
        return f"denied: {type(exc).__name__}"
result = {"environ": read(f"/proc/{other}/environ"), "mem": read(f"/proc/{other}/mem")}
"""
    with default_executors(monkeypatch):
        victim, attacker = Executor(), Executor()
        try:
            other = victim.call({"code": "import os\nresult = os.getpid()", "input": {},
                                 "libs": {}}, timeout=30)["value"]
            reply = attacker.call({"code": peek, "input": {"other": other}, "libs": {}},
                                  timeout=30)
        finally:
            victim.kill()
            attacker.kill()
    assert reply["value"] == {"environ": "denied: PermissionError",
                              "mem": "denied: PermissionError"}
