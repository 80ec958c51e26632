"""Logs per step: what a python step prints is stored per command attempt (noetl.command_log),
`noetl logs ID [--step S] [--follow]` prints it, and `noetl status` shows a failed step's
error with its line and traceback. Real workers run real python steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner
from engine_harness import Engine

from noetl_pg import db
from noetl_pg.cli import main
from noetl_pg.logs import CommandLogWriter
from noetl_pg.store import ResultStore

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


LONG_OUTPUT = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: chatty, path: logs/chatty}
workflow:
  - step: chatter
    tool:
      kind: python
      code: |
        for number in range(5000):
            print(f"line {number:05d}")
        result = 1
"""


def test_a_stream_past_the_cap_is_kept_whole_by_reference(fresh_engine: Engine,
                                                          tmp_path: Path) -> None:
    file = tmp_path / "chatty.yaml"
    file.write_text(LONG_OUTPUT)
    expected = "".join(f"line {number:05d}\n" for number in range(5000))
    result = CliRunner().invoke(main, ["run", str(file), "--json"], env={
        **os.environ, "NOETL_DSN": fresh_engine.dsn, "NOETL_PYTHON_LOG_BYTES": "1000"})
    assert result.exit_code == 0, result.output
    execution_id = str(json.loads(result.stdout)["execution_id"])

    [row] = fresh_engine.sql("select body, full_ref, full_bytes from noetl.command_log "
                             "where execution_id = %s", int(execution_id))
    assert row["body"].startswith("line 00000\n") and row["body"].endswith("line 04999\n")
    assert "line 02500" not in row["body"]
    assert f"[... {len(expected) - 1000} bytes dropped; noetl logs --full prints them ...]" \
        in row["body"]
    assert row["full_bytes"] == len(expected)
    [ref] = fresh_engine.sql("select bytes_size from noetl.result_ref where ref = %s",
                             row["full_ref"])
    assert ref["bytes_size"] == len(expected)

    code, out, _ = _cli(fresh_engine.dsn, "logs", execution_id)
    assert code == 0 and "line 02500" not in out
    code, out, _ = _cli(fresh_engine.dsn, "logs", execution_id, "--full")
    printed = [line.split(" | ", 1)[1] for line in out.splitlines()]
    assert printed == [f"line {number:05d}" for number in range(5000)]
    code, out, _ = _cli(fresh_engine.dsn, "logs", execution_id, "--full", "--json")
    [entry] = json.loads(out)
    assert (entry["body"], entry["full_bytes"]) == (expected, len(expected))

    fresh_engine.sql("select * from noetl.purge_executions(interval '1 microsecond', false)")
    assert fresh_engine.sql("select count(*) as n from noetl.result_ref")[0]["n"] == 0


def test_the_log_writer_reuses_its_connections(fresh_engine: Engine, tmp_path: Path) -> None:
    """Forty printing commands are stored over the engine's pool (at most its size in
    connections), each command's streams in one statement."""
    file = tmp_path / "printing.yaml"
    file.write_text(PRINTING)
    _, out, _ = _cli(fresh_engine.dsn, "run", str(file), "--json")
    execution_id = json.loads(out)["execution_id"]
    writer = CommandLogWriter(fresh_engine.dsn, ResultStore(fresh_engine.dsn), str.upper)
    for number in range(40):
        writer.write({"execution_id": execution_id, "command_id": 10_000 + number,
                      "attempt": 1, "step_name": "talk", "iter_index": number},
                     {"stdout": f"out {number}\n", "stderr": f"err {number}\n"})
    assert 1 <= db.pool_stats(fresh_engine.dsn)["connections_num"] <= db.POOL_MAX_SIZE
    rows = fresh_engine.sql(
        "select iter_index, stream, body from noetl.command_log "
        "where execution_id = %s and command_id >= 10000 order by log_id", execution_id)
    assert [(r["iter_index"], r["stream"], r["body"]) for r in rows] == [
        (number, stream, f"{label} {number}\n")
        for number in range(40) for stream, label in (("stdout", "OUT"), ("stderr", "ERR"))]
