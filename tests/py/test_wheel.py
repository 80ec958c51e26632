"""The built wheel is a product: installed in a fresh venv outside the checkout, it carries
its SQL, runs a playbook on the embedded server, refuses to migrate without migration files,
and names the extra a playbook needs when that extra is not installed.

One wheel build and one venv per module (pip's cache is warm, so the install takes seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

from noetl_pg.testdb import create_database, drop_database

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_ITEMS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "noetl_pg", "sql")

pytestmark = pytest.mark.slow


def _clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NOETL_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout (the build leaves no trace in it)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for item in SOURCE_ITEMS:
        origin = REPO_ROOT / item
        if origin.is_dir():
            shutil.copytree(origin, source / item,
                            ignore=shutil.ignore_patterns("__pycache__", "_sql"))
        else:
            shutil.copy(origin, source / item)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(work / "dist"), str(source)],
        check=True, env=_clean_env(),
    )
    (built,) = (work / "dist").glob("noetl_pg-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the wheel installed (no extras)."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    subprocess.run([str(root / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True,
                   env=_clean_env())
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory that is not the checkout."""
    assert REPO_ROOT not in tmp_path.parents
    return tmp_path


def _noetl(venv: Path, *args: str, cwd: Path, env: dict[str, str],
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "noetl"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_wheel_holds_every_sql_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {f"noetl_pg/_sql/{path.relative_to(REPO_ROOT / 'sql')}"
                for path in (REPO_ROOT / "sql").glob("*/*.sql")}
    assert expected, "the checkout has no SQL files"
    assert expected <= names, sorted(expected - names)


def test_installed_wheel_runs_an_example_on_the_embedded_server(venv: Path,
                                                                 outside: Path) -> None:
    shutil.copy(REPO_ROOT / "examples" / "hello_world.yaml", outside / "hello.yaml")
    env = _clean_env(NOETL_EMBEDDED_DIR=str(outside / "pgdata"))
    done = _noetl(venv, "run", "hello.yaml", "--json", cwd=outside, env=env)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["status"] == "COMPLETED"
    assert row["result"] == {"greeting": "Hello, World!", "length": 13}
    assert (outside / "pgdata").is_dir()


def test_duckdb_step_without_the_extra_names_the_extra(venv: Path, outside: Path) -> None:
    (outside / "duck.yaml").write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata:\n  name: duck\n  path: t/duck\n"
        "workflow:\n  - step: q\n    tool:\n      kind: duckdb\n      command: select 1\n"
    )
    env = _clean_env(NOETL_EMBEDDED_DIR=str(outside / "pgdata"))
    done = _noetl(venv, "run", "duck.yaml", "--json", cwd=outside, env=env)
    assert done.returncode == 1, done.stderr
    row = json.loads(done.stdout)
    assert row["status"] == "FAILED"
    assert "pip install 'noetl-pg[duckdb]'" in row["error"]


def test_migrate_refuses_when_the_install_has_no_migrations(venv: Path, outside: Path) -> None:
    (site,) = (venv / "lib").glob("python*/site-packages")
    broken = outside / "broken-venv"
    # A copy of the installed package with its migrations removed (the venv stays intact).
    shutil.copytree(site / "noetl_pg", broken / "noetl_pg")
    for migration in (broken / "noetl_pg" / "_sql" / "migrations").glob("*.sql"):
        migration.unlink()
    database = create_database("noetl_wheel")
    try:
        env = _clean_env(NOETL_DSN=database, PYTHONPATH=str(broken))
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "noetl_pg.cli", "db",
                               "migrate"], cwd=outside, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0
        assert "no migration files" in done.stderr
        assert "Traceback" not in done.stderr
        with psycopg.connect(database) as conn:
            schema = conn.execute(
                "select 1 from pg_namespace where nspname = 'noetl'").fetchone()
        assert schema is None
    finally:
        drop_database(database)

