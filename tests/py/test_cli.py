"""The `noetl` CLI behaves: --version, --json everywhere, unchanged files reuse their version,
commands check the schema instead of re-creating it, Ctrl-C and --timeout end a run cleanly,
unknown ids exit 2, filters are validated, catalog get/list, credential get/delete,
validate and query. Commands run in-process (click's runner: this box is slow to start
Python) against a database of their own; Ctrl-C and --timeout run as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from engine_harness import Engine

from noetl_pg.cli import main

NOETL = str(Path(sys.executable).parent / "noetl")
REPO_ROOT = Path(__file__).resolve().parents[2]

SLEEPER = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: sleeper, path: cli/sleeper}
workflow:
  - step: nap
    tool: {kind: python, code: "import time\\ntime.sleep(60)\\nresult = 1"}
"""


def _env(dsn: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "NOETL_DSN": dsn, "NOETL_CREDENTIAL_KEY": "cli-test-key", **extra}


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


def _noetl(dsn: str, *args: str) -> Done:
    """`noetl ARGS` in this process, from the repository root."""
    previous = Path.cwd()
    os.chdir(REPO_ROOT)
    try:
        result = CliRunner().invoke(main, list(args), env=_env(dsn))
    finally:
        os.chdir(previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Done(result.exit_code, result.stdout, result.stderr)


def _process(dsn: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NOETL, *args], env=_env(dsn), cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=timeout)


def _json(done: Done | subprocess.CompletedProcess[str]) -> Any:
    """The single JSON document on stdout (json.loads fails on anything else)."""
    return json.loads(done.stdout)


def test_version_names_the_installed_package(fresh_engine: Engine) -> None:
    done = _process(fresh_engine.dsn, "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"noetl-pg {metadata.version('noetl-pg')}"


def test_run_reuses_the_version_of_an_unchanged_file(fresh_engine: Engine,
                                                     tmp_path: Path) -> None:
    file = tmp_path / "hello.yaml"
    text = (REPO_ROOT / "examples" / "hello_world.yaml").read_text()
    file.write_text(text.replace("examples/hello_world", "cli/hello"))
    for _ in range(2):
        assert _noetl(fresh_engine.dsn, "run", str(file), "--json").returncode == 0
    assert [row["version"] for row in fresh_engine.sql(
        "select version from noetl.catalog where path = 'cli/hello'")] == [1]
    file.write_text(file.read_text().replace("World", "Moon"))
    moon = _json(_noetl(fresh_engine.dsn, "run", str(file), "--json"))
    assert moon["version"] == 2 and moon["result"]["greeting"] == "Hello, Moon!"
    latest = _json(_noetl(fresh_engine.dsn, "catalog", "list", "--json"))
    assert [(row["path"], row["version"], row["versions"]) for row in latest] == [
        ("cli/hello", 2, 2)]
    every = _json(_noetl(fresh_engine.dsn, "--json", "catalog", "list", "--all"))
    assert sorted(row["version"] for row in every) == [1, 2]
    first = _noetl(fresh_engine.dsn, "catalog", "get", "cli/hello", "--version", "1")
    assert first.returncode == 0 and "name: World" in first.stdout
    assert "Moon" in _noetl(fresh_engine.dsn, "catalog", "get", "cli/hello").stdout
    missing = _noetl(fresh_engine.dsn, "catalog", "get", "cli/hello", "--version", "9")
    assert missing.returncode == 2
    assert 'playbook "cli/hello" version 9 is not registered' in missing.stderr


def test_json_on_every_command_is_one_document(fresh_engine: Engine) -> None:
    dsn = fresh_engine.dsn
    run = _json(_noetl(dsn, "run", "examples/hello_world.yaml", "--json"))
    execution_id = str(run["execution_id"])
    started = _json(_noetl(dsn, "start", "examples/hello_world", "--json"))
    assert started["path"] == "examples/hello_world"
    commands = [
        ["db", "migrate"], ["db", "schema"], ["catalog", "register",
                                             "examples/hello_world.yaml"],
        ["catalog", "list"], ["catalog", "get", "examples/hello_world"],
        ["validate", "examples/hello_world.yaml"], ["status", execution_id],
        ["executions"], ["events", execution_id], ["cancel", execution_id],
        ["results", execution_id], ["query", "select 1 as one"],
        ["credential", "add", "c1", "--type", "generic", "--data", '{"user": "u"}'],
        ["credential", "list"], ["credential", "get", "c1"], ["credential", "delete", "c1"],
    ]
    for command in commands:
        done = _noetl(dsn, *command, "--json")
        assert done.returncode == 0, (command, done.stderr)
        _json(done)
    assert _json(_noetl(dsn, "query", "select 1 as one", "--json")) == [{"one": 1}]
    assert _json(_noetl(dsn, "status", execution_id, "--json"))["status"] == "COMPLETED"
    error = _noetl(dsn, "--json", "status", "999999")
    assert error.returncode == 2
    assert _json(error) == {"error": "execution 999999 does not exist"}


def test_unknown_ids_exit_2_and_filters_are_validated(fresh_engine: Engine) -> None:
    for command in (["status", "424242"], ["status", "424242", "--watch"],
                    ["events", "424242"], ["cancel", "424242"], ["results", "424242"],
                    ["results", "cleanup", "424242"]):
        done = _noetl(fresh_engine.dsn, *command)
        assert done.returncode == 2, command
        assert "execution 424242 does not exist" in done.stderr
        assert "Traceback" not in done.stderr
    for command in (["executions", "--status", "DONE"], ["executions", "--limit", "0"],
                    ["run", "examples/hello_world.yaml", "--timeout", "-1"]):
        done = _noetl(fresh_engine.dsn, *command)
        assert done.returncode == 2, command
        assert "Invalid value" in done.stderr
    lower = _noetl(fresh_engine.dsn, "executions", "--status", "completed", "--json")
    assert lower.returncode == 0 and _json(lower) == []


def test_commands_check_the_schema_instead_of_recreating_it(fresh_engine: Engine) -> None:
    functions = ("select count(*) as n, max(xmin::text::bigint) as newest from pg_proc "
                 "where pronamespace = 'noetl'::regnamespace")
    before = fresh_engine.sql(functions)
    assert _noetl(fresh_engine.dsn, "executions").returncode == 0
    assert _noetl(fresh_engine.dsn, "catalog", "list").returncode == 0
    assert fresh_engine.sql(functions) == before
    fresh_engine.sql("update noetl.schema_functions set digest = 'older'")
    behind = _noetl(fresh_engine.dsn, "executions")
    assert behind.returncode == 2
    assert "run `noetl db migrate`" in behind.stderr
    assert fresh_engine.sql("select digest from noetl.schema_functions") == [
        {"digest": "older"}]
    assert _noetl(fresh_engine.dsn, "db", "migrate").returncode == 0
    assert _noetl(fresh_engine.dsn, "executions").returncode == 0


def _wait_until_claimed(engine: Engine, step: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = engine.sql("select execution_id from noetl.command "
                          "where step_name = %s and status = 'claimed'", step)
        if rows:
            return int(rows[0]["execution_id"])
        time.sleep(0.1)
    raise AssertionError(f"step {step} was never claimed")


def test_ctrl_c_on_run_cancels_the_execution_and_exits_130(fresh_engine: Engine,
                                                            tmp_path: Path) -> None:
    file = tmp_path / "sleeper.yaml"
    file.write_text(SLEEPER)
    # As from a terminal: SIGINT at its default disposition. A suite started in the
    # background by a non-interactive shell inherits SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored, so without this the test would measure how it was started.
    process = subprocess.Popen([NOETL, "run", str(file)], env=_env(fresh_engine.dsn),
                               cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        execution_id = _wait_until_claimed(fresh_engine, "nap")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert f"interrupted: execution {execution_id} cancelled" in stderr
    assert "Traceback" not in stderr
    assert fresh_engine.sql("select status from noetl.execution where execution_id = %s",
                            execution_id) == [{"status": "CANCELLED"}]
    assert fresh_engine.sql("select command_id from noetl.command where execution_id = %s "
                            "and status in ('queued', 'claimed')", execution_id) == []


def test_timeout_prints_one_line_and_exits_non_zero(fresh_engine: Engine,
                                                    tmp_path: Path) -> None:
    file = tmp_path / "sleeper.yaml"
    file.write_text(SLEEPER)
    done = _process(fresh_engine.dsn, "run", str(file), "--timeout", "2")
    assert done.returncode == 124
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "did not finish within 2s; cancelled" in lines[0]
    assert "Traceback" not in done.stderr
    assert fresh_engine.sql("select status from noetl.execution") == [
        {"status": "CANCELLED"}]


def test_exec_runs_to_the_end_start_only_starts_and_status_watch_exits_like_run(
    fresh_engine: Engine, tmp_path: Path
) -> None:
    ran = _noetl(fresh_engine.dsn, "exec", "examples/hello_world.yaml", "--json",
                 "--var", "name=Exec")
    assert ran.returncode == 0
    assert _json(ran)["result"]["greeting"] == "Hello, Exec!"
    failing = tmp_path / "fails.yaml"
    failing.write_text("metadata: {path: cli/fails}\nworkflow:\n  - step: boom\n"
                       "    tool: {kind: python, code: \"raise ValueError('no')\"}\n")
    good_id = int(_noetl(fresh_engine.dsn, "start", "examples/hello_world").stdout)
    bad_id = int(_noetl(fresh_engine.dsn, "start", str(failing)).stdout)
    assert fresh_engine.sql("select status from noetl.execution where execution_id = %s",
                            bad_id) == [{"status": "RUNNING"}]
    with fresh_engine.worker(slots=2):
        good = _noetl(fresh_engine.dsn, "status", str(good_id), "--watch", "--json")
        bad = _noetl(fresh_engine.dsn, "status", str(bad_id), "--watch", "--json")
    assert (good.returncode, _json(good)["status"]) == (0, "COMPLETED")
    assert (bad.returncode, _json(bad)["status"]) == (1, "FAILED")


def test_validate_checks_templates_without_registering(fresh_engine: Engine,
                                                       tmp_path: Path) -> None:
    file = tmp_path / "typo.yaml"
    file.write_text("metadata: {path: cli/typo}\nworkload: {name: x}\nworkflow:\n"
                    "  - step: a\n    tool: {kind: python, input: {n: '{{ nmae }}'}, "
                    "code: 'result = n'}\n    next: b\n"
                    "  - step: b\n    tool: {kind: python, input: {v: '{{ a.value }}'}, "
                    "code: 'result = v'}\n")
    done = _noetl(fresh_engine.dsn, "validate", str(file))
    assert done.returncode == 2
    assert "step 'a', field 'tool.input.n': template names 'nmae'" in done.stderr
    assert "'b'" not in done.stderr
    report = _json(_noetl(fresh_engine.dsn, "validate", str(file), "--json"))
    assert report["valid"] is False and report["steps"] == ["a", "b"]
    assert fresh_engine.sql("select count(*) as n from noetl.catalog") == [{"n": 0}]
    fine = _noetl(fresh_engine.dsn, "validate", "examples/loop_pipeline.yaml")
    assert fine.returncode == 0, fine.stderr


@pytest.mark.parametrize("reveal", [False, True])
def test_credential_get_redacts_unless_asked(fresh_engine: Engine, reveal: bool) -> None:
    dsn = fresh_engine.dsn
    assert _noetl(dsn, "credential", "add", "db1", "--type", "postgres", "--data",
                  '{"host": "h1", "password": "s3cr3t-pw"}').returncode == 0
    shown = _noetl(dsn, "credential", "get", "db1", *(["--reveal"] if reveal else []),
                   "--json")
    fields = _json(shown)["fields"]
    assert fields["host"] == "h1"
    assert ("s3cr3t-pw" in shown.stdout) is reveal
    assert _noetl(dsn, "credential", "delete", "db1").returncode == 0
    gone = _noetl(dsn, "credential", "get", "db1")
    assert gone.returncode == 2 and "credential 'db1' does not exist" in gone.stderr


def test_following_a_run_polls_soon_at_first_then_every_poll_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`noetl run` and `status --watch` see a short run end within a few milliseconds: the
    first polls come soon after the start and the wait grows to the poll interval."""
    from noetl_pg.cli import status as cli_status

    running = {"status": "RUNNING", "state": {"status": "RUNNING"}}
    done = {"status": "COMPLETED", "state": {"status": "COMPLETED"}}
    rows = [running] * 10 + [done]
    waits: list[float] = []
    monkeypatch.setattr(cli_status, "fetch_progress", lambda dsn, execution_id: rows.pop(0))
    monkeypatch.setattr(cli_status.time, "sleep", waits.append)
    assert cli_status.follow("unused", 1, show=False, poll=0.2) is done
    assert waits[:3] == pytest.approx([0.01, 0.015, 0.0225])
    assert len(waits) == 10 and max(waits) == 0.2 and waits[-1] == 0.2
    assert waits == sorted(waits)
