"""The embedded server serves more than one command: `noetl db start` keeps it up, a
`noetl run` in another process joins it and leaves it running (same postmaster), the data
directory is NOETL_EMBEDDED_DIR (not the current directory), `noetl db stop` stops it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NOETL = str(Path(sys.executable).parent / "noetl")
REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _noetl(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NOETL, *args, "--json"], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=240)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the server's own unprivileged user (when tests run as root) can enter."""
    folder = Path(tempfile.mkdtemp(prefix="noetl-embedded-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_db_start_keeps_one_server_for_several_commands(open_dir: Path) -> None:
    tmp_path = open_dir
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOETL_")}
    env["NOETL_EMBEDDED_DIR"] = str(tmp_path / "data")
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    started = _noetl(env, elsewhere, "db", "start")
    try:
        assert started.returncode == 0, started.stderr
        first = json.loads(started.stdout)
        assert first["data_dir"] == str(tmp_path / "data" / "default")
        assert first["pid"] > 0 and first["already_running"] is False
        ran = _noetl(env, elsewhere, "run", str(REPO_ROOT / "examples" / "hello_world.yaml"))
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["result"]["length"] == 13
        status = _noetl(env, elsewhere, "db", "status")
        assert status.returncode == 0
        assert json.loads(status.stdout) | {"data_dir": None} == {
            "running": True, "pid": first["pid"], "data_dir": None, "schema_up_to_date": True}
        again = json.loads(_noetl(env, elsewhere, "db", "start").stdout)
        assert (again["already_running"], again["pid"]) == (True, first["pid"])
        assert not (elsewhere / ".pgdata").exists()
    finally:
        stopped = _noetl(env, elsewhere, "db", "stop")
    assert json.loads(stopped.stdout)["stopped"] is True
    gone = _noetl(env, elsewhere, "db", "status")
    assert gone.returncode == 1 and json.loads(gone.stdout)["running"] is False
