"""Logs per step: what a python step prints is stored per command attempt (noetl.command_log),
`noetl logs ID [--step S] [--follow]` prints it, and `noetl status` shows a failed step's
error with its line and traceback. Real workers run real python steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner
from engine_harness import Engine

from noetl_pg.cli import main

PRINTING = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: printing, path: logs/printing}
workflow:
  - step: talk
    tool:
      kind: python
      code: |
        import sys
        print("hello from talk")
        print("warning: careful", file=sys.stderr)
        result = {"a": 1}
    next: [{step: boom}]
  - step: boom
    tool:
      kind: python
      input: {data: "{{ talk }}"}
      code: |
        print("about to read b")
        value = data["b"]
        result = value
"""


def _cli(dsn: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={**os.environ, "NOETL_DSN": dsn})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_step_output_is_stored_and_shown(fresh_engine: Engine, tmp_path: Path) -> None:
    file = tmp_path / "printing.yaml"
    file.write_text(PRINTING)
    code, out, _ = _cli(fresh_engine.dsn, "run", str(file), "--json")
    row = json.loads(out)
    assert (code, row["status"], row["failed_step"]) == (1, "FAILED", "boom")
    execution_id = str(row["execution_id"])

    stored = fresh_engine.sql(
        "select step_name, attempt, stream, body from noetl.command_log "
        "where execution_id = %s order by log_id", int(execution_id))
    by_stream = {(entry["step_name"], entry["stream"]): entry["body"] for entry in stored}
    assert by_stream[("talk", "stdout")] == "hello from talk\n"
    assert by_stream[("talk", "stderr")] == "warning: careful\n"
    assert by_stream[("boom", "stdout")] == "about to read b\n"
    assert "KeyError" in by_stream[("boom", "stderr")]

    code, out, err = _cli(fresh_engine.dsn, "logs", execution_id)
    assert code == 0
    assert "talk #1 stdout | hello from talk" in out
    assert "talk #1 stderr | warning: careful" in err
    code, out, _ = _cli(fresh_engine.dsn, "logs", execution_id, "--step", "boom", "--json")
    assert [(entry["stream"], entry["step_name"]) for entry in json.loads(out)] == [
        ("stdout", "boom"), ("stderr", "boom")]
    code, out, _ = _cli(fresh_engine.dsn, "logs", execution_id, "--follow", "--step", "talk")
    assert code == 0 and "hello from talk" in out and "about to read b" not in out

    code, out, _ = _cli(fresh_engine.dsn, "status", execution_id)
    assert code == 0
    assert "error in step boom" in out
    assert "line 2" in out and "value = data[\"b\"]" in out.replace("'", '"')
    assert "Traceback" in out

    code, _, err = _cli(fresh_engine.dsn, "logs", "999999")
    assert code == 2 and "execution 999999 does not exist" in err
