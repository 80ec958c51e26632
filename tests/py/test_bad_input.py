"""Bad input gets a clear error naming the playbook, step and field, and changes nothing.

Each case runs against a database of its own holding one good playbook; the rows of every
noetl table are counted before and after, and must not change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from engine_harness import Engine

from noetl_pg import db
from noetl_pg.catalog import register_text
from noetl_pg.errors import NoetlError

NOETL = str(Path(sys.executable).parent / "noetl")

GOOD = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: good, path: bad/good}
workflow:
  - step: first
    tool: {kind: noop}
    next: second
  - step: second
    tool: {kind: python, code: "result = 1"}
"""


def _register(text: str, source: str = "bad/case") -> Callable[[psycopg.Connection[Any]], Any]:
    return lambda conn: register_text(conn, text, source=source)


def _start(path: str, payload: Any, version: int | None = None, *,
           payload_limit: int | None = None) -> Callable[[psycopg.Connection[Any]], Any]:
    def start(conn: psycopg.Connection[Any]) -> Any:
        if payload_limit is not None:
            conn.execute("update noetl.engine_limit set value = %s"
                         " where name = 'max_payload_bytes'", (payload_limit,))
        return conn.execute("select noetl.start_execution(%s, %s::jsonb, %s)",
                            (path, json.dumps(payload), version)).fetchone()
    return start


def _spec(conn: psycopg.Connection[Any], spec: dict[str, Any]) -> Any:
    return conn.execute("select * from noetl.register_playbook('bad/raw', 'yaml', %s::jsonb)",
                        (json.dumps(spec),)).fetchone()


DUPLICATE_SPEC = {"workflow": [
    {"step": "a", "plan": {"kind": "noop"}}, {"step": "a", "plan": {"kind": "noop"}}]}


@dataclass(frozen=True)
class Case:
    name: str
    action: Callable[[psycopg.Connection[Any]], Any]
    expected: tuple[str, ...]


CASES = [
    Case("malformed yaml", _register("workflow:\n  - step: a\n    tool: {kind: noop\n"),
         ("playbook 'bad/case'", "line 4, column 1", "malformed YAML")),
    Case("unknown arc target",
         _register(GOOD.replace("next: second", "next: secnd")),
         ("playbook 'bad/case'", "step 'first'", "field 'next.arcs.step'", "line 5",
          "unknown step 'secnd'")),
    Case("duplicate step names",
         _register(GOOD.replace("step: second", "step: first")),
         ("playbook 'bad/case'", "step 'first'", "field 'step'", "line 8",
          "duplicate step name")),
    Case("missing tool",
         _register(GOOD.replace('    tool: {kind: python, code: "result = 1"}\n', "")),
         ("playbook 'bad/case'", "step 'second'", "field 'tool'", "step has no tool")),
    Case("unknown tool kind",
         _register(GOOD.replace("kind: noop", "kind: ftp")),
         ("playbook 'bad/case'", "step 'first'", "field 'tool", "unknown tool kind 'ftp'")),
    Case("not a mapping", _register("- just\n- a list\n"),
         ("playbook 'bad/case'", "must be a YAML mapping")),
    Case("empty workflow", _register("metadata: {path: x}\nworkflow: []\n"),
         ("playbook 'bad/case'", "field 'workflow'")),
    Case("playbook over the size limit",
         _register(GOOD + "# " + "x" * 2_000_000 + "\n"),
         ("playbook 'bad/case'", "over the limit of 1048576")),
    Case("duplicate step names in a raw spec (SQL door)",
         lambda conn: _spec(conn, DUPLICATE_SPEC),
         ("playbook bad/raw", 'duplicate step name "a"')),
    Case("payload not an object", _start("bad/good", [1, 2]),
         ("playbook bad/good", "payload must be a JSON object, got array")),
    Case("payload a string", _start("bad/good", "text"),
         ("payload must be a JSON object, got string",)),
    Case("unknown path", _start("bad/nope", {}), ('playbook "bad/nope" is not registered',)),
    Case("unknown version", _start("bad/good", {}, 7),
         ('playbook "bad/good" has no version 7',)),
    Case("payload over the size limit", _start("bad/good", {"x": "y" * 200}, payload_limit=100),
         ("playbook bad/good", "over the limit of 100 bytes")),
    Case("quotes and SQL in the path", _start("bad/x'; drop table noetl.event; --", {}),
         ("""playbook "bad/x'; drop table noetl.event; --" is not registered""",)),
]


def _row_counts(dsn: str) -> dict[str, int]:
    with db.connect(dsn) as conn:
        tables = [row["name"] for row in conn.execute(
            "select c.relname as name from pg_class as c "
            "inner join pg_namespace as n on c.relnamespace = n.oid "
            "where n.nspname = 'noetl' and c.relkind in ('r', 'p') and not c.relispartition "
            "order by 1").fetchall()]
        return {table: conn.execute(
            psycopg.sql.SQL("select count(*) as n from noetl.{}").format(
                psycopg.sql.Identifier(table))).fetchone()["n"] for table in tables}


@pytest.fixture
def seeded_dsn(fresh_dsn: str) -> str:
    with db.connect(fresh_dsn) as conn:
        register_text(conn, GOOD, source="bad/good")
    return fresh_dsn


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_named_and_changes_nothing(seeded_dsn: str, case: Case) -> None:
    before = _row_counts(seeded_dsn)
    assert before["catalog"] == 1
    with db.connect(seeded_dsn) as conn, pytest.raises((NoetlError, psycopg.Error)) as caught:
        case.action(conn)
    error = caught.value
    message = (error.diag.message_primary if isinstance(error, psycopg.Error) else str(error))
    for fragment in case.expected:
        assert fragment in (message or ""), f"{fragment!r} not in {message!r}"
    assert _row_counts(seeded_dsn) == before, "a refused input left rows behind"


def test_cli_names_the_problem_and_exits_2(seeded_dsn: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("next: second", "next: secnd"))
    env = {**os.environ, "NOETL_DSN": seeded_dsn}
    before = _row_counts(seeded_dsn)
    registered = subprocess.run([NOETL, "catalog", "register", str(bad)], capture_output=True,
                                text=True, env=env, timeout=60)
    assert registered.returncode == 2
    stderr = " ".join(registered.stderr.split())  # the console wraps long lines
    assert "step 'first'" in stderr and "unknown step 'secnd'" in stderr
    started = subprocess.run([NOETL, "exec", "bad/good", "--payload", "[1]"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert started.returncode == 2 and "JSON object" in started.stderr
    assert _row_counts(seeded_dsn) == before


HOSTILE = "it's \"quoted\"; drop table noetl.command; -- {{ not a template }}"


def test_quotes_and_sql_in_paths_and_payloads_are_plain_data(engine: Engine) -> None:
    """A path and payload values full of quotes and SQL are stored and used verbatim."""
    path = "bad/o'brien\"; select 1; --"
    engine.register(GOOD.replace("bad/good", "x"), path=path)
    playbook = GOOD.replace('code: "result = 1"', 'code: "result = value"').replace(
        "tool: {kind: python,", "tool: {kind: python, input: {value: '{{ text }}'},")
    engine.register(playbook, path=path)
    row = engine.wait(engine.start(path, {"text": HOSTILE, HOSTILE: HOSTILE}))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == HOSTILE
    stored = engine.sql("select path, workload from noetl.execution where execution_id = %s",
                        row["execution_id"])[0]
    assert stored["path"] == path and stored["workload"][HOSTILE] == HOSTILE
    assert engine.sql("select count(*) as n from noetl.command")[0]["n"] > 0


def test_undefined_variable_fails_the_step_naming_it(engine: Engine) -> None:
    playbook = GOOD.replace('code: "result = 1"', 'code: "result = 1", input: '
                            '{v: "{{ missing_thing.field }}"}')
    row = engine.run(playbook)
    assert row["status"] == "FAILED"
    assert row["failed_step"] == "second"
    assert "step 'second'" in row["error"] and "missing_thing" in row["error"]
