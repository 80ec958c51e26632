"""Settings: every NOETL_* variable is declared once in noetl_pg/settings.py, read there only,
and checked at start: a bad value is one line naming the variable and what it expects
(exit 2), never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from noetl_pg import settings
from noetl_pg.credential_crypto import key_from_env
from noetl_pg.worker import Worker

REPO_ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"NOETL_[A-Z0-9_]*[A-Z0-9]")


def _declared() -> set[str]:
    return {settings.variable(name) for name in settings.Settings.model_fields}


@pytest.mark.parametrize(("variable", "value", "expects"), [
    ("NOETL_WORKER_HEARTBEAT_SECONDS", "soon", "a number of seconds > 0"),
    ("NOETL_PORT", "70000", "a port number from 1 to 65535"),
    ("NOETL_PYTHON_ISOLATION", "thread", "process or inline"),
    ("NOETL_SERVER_URL", "localhost:8082", "a URL such as http://127.0.0.1:8082"),
    ("NOETL_MAX_PLAYBOOK_STEPS", "0", "a whole number > 0"),
])
def test_a_bad_value_stops_the_cli_at_start_with_one_line(variable: str, value: str,
                                                          expects: str) -> None:
    env = {key: val for key, val in os.environ.items() if not key.startswith("NOETL_")}
    env[variable] = value
    done = subprocess.run([sys.executable, "-m", "noetl_pg.cli", "status", "1"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {variable}={value!r}: expects {expects}"]


def test_a_secret_in_a_bad_value_is_not_echoed() -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.from_mapping({"NOETL_CREDENTIAL_KEY": "k3y", "NOETL_PORT": "x"})
    assert "k3y" not in str(caught.value)
    assert str(caught.value) == "NOETL_PORT='x': expects a port number from 1 to 65535"


def test_values_are_typed_and_empty_means_unset() -> None:
    configured = settings.from_mapping({
        "NOETL_PYTHON_TIMEOUT": " 12.5 ", "NOETL_SHARD_COUNT": "3", "NOETL_DSN": "",
        "NOETL_EMBEDDED_DIR": "/tmp/x", "OTHER": "ignored", "NOETL_UNKNOWN": "ignored"})
    assert (configured.python_timeout, configured.shard_count, configured.dsn) == (12.5, 3, None)
    assert configured.embedded_dir == Path("/tmp/x")
    assert settings.from_mapping({}).port == 8082


def test_current_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_WORKER_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("NOETL_MAX_RECLAIMS", "0")
    worker = Worker("dbname=unused")
    assert (worker.heartbeat_interval, worker.max_reclaims) == (0.5, 0)
    monkeypatch.setenv("NOETL_MAX_RECLAIMS", "two")
    with pytest.raises(settings.SettingsError, match=r"^NOETL_MAX_RECLAIMS='two': expects"):
        Worker("dbname=unused")


def test_a_given_mapping_is_all_from_mapping_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_KEY", "from-the-process")
    assert settings.from_mapping({}).credential_key is None
    assert key_from_env({}) is None
    assert settings.current().credential_key == "from-the-process"


def test_the_environment_is_read_for_noetl_variables_in_settings_only() -> None:
    """No module but settings.py reads os.environ/getenv by a NOETL_* name, and every
    NOETL_* name the package mentions is a declared variable (or a prefix in a message)."""
    readers, undeclared = [], set()
    declared = _declared()
    for source in (REPO_ROOT / "noetl_pg").rglob("*.py"):
        text = source.read_text()
        if source.name != "settings.py" and re.search(
                r"(environ(\.get)?\s*[\[(]|getenv\()\s*[\"']NOETL_|envvar\s*=", text):
            readers.append(source.name)
        for name in VARIABLE.findall(text):
            if name not in declared and not re.search(re.escape(name) + r"_?\*", text):
                undeclared.add(name)
    assert readers == []
    assert sorted(undeclared) == []


def test_config_show_redacts_secrets_and_says_what_was_set() -> None:
    env = {key: val for key, val in os.environ.items() if not key.startswith("NOETL_")}
    env.update(NOETL_DSN="host=db user=u password=s3cret dbname=noetl",
               NOETL_CREDENTIAL_KEY="k3y", NOETL_S3_SECRET_ACCESS_KEY="s3-secret",
               NOETL_SHARD_COUNT="4")
    done = subprocess.run([sys.executable, "-m", "noetl_pg.cli", "config", "show", "--json"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert set(shown) == _declared()
    assert "s3cret" not in done.stdout and "k3y" not in done.stdout
    assert "s3-secret" not in done.stdout
    assert sorted(shown["NOETL_DSN"].split()) == ["dbname=noetl", "host=db", "password=***",
                                                 "user=u"]
    assert (shown["NOETL_CREDENTIAL_KEY"], shown["NOETL_S3_SECRET_ACCESS_KEY"]) == ("***", "***")
    assert (shown["NOETL_SHARD_COUNT"], shown["NOETL_PORT"], shown["NOETL_SERVER_TOKEN"]) == (
        4, 8082, None)
    human = subprocess.run([sys.executable, "-m", "noetl_pg.cli", "config", "show"], env={
        **env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip()
            for line in human.stdout.splitlines() if line.startswith("│")}
    assert (rows["NOETL_SHARD_COUNT"], rows["NOETL_PORT"]) == ("environment", "default")
