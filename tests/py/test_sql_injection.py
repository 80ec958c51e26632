"""Templated SQL cannot be injected: values never change a statement's structure.

A corpus of hostile strings goes through payloads (and `--set`) into postgres and duckdb
steps; every one is stored verbatim as data, a `victim` table keeps its rows, and values
that cannot be placed safely fail the step with an error naming the step and expression.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner
from engine_harness import Engine

from noetl_pg.cli import main
from noetl_pg.credentials import DatabaseCredentialResolver, put_credential
from noetl_pg.errors import TemplateError
from noetl_pg.sqlrender import SqlTemplateError, render_sql, render_tool_config
from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.duckdb import DuckdbTool

ISSUE_ATTACK = "x'); delete from victim; insert into notes(v) values ('pwned"
CORPUS = [
    ISSUE_ATTACK,
    "'",
    "''",
    "\\'",
    "\\",
    "a\\'); delete from victim; --",
    "'); drop table victim; --",
    "$$; delete from victim; $$",
    "$x$'); delete from victim; --$x$",
    "*/ delete from victim; /*",
    "/* unterminated",
    "-- comment",
    "x\n); delete from victim; --",
    "\r\n; delete from victim",
    "; delete from victim;",
    "\u2019); delete from victim; --",  # unicode right quote
    "\u02bc\uff07); delete from victim; --",  # modifier apostrophe, fullwidth quote
    'x"; delete from victim; --',
    "{{ 7 * 7 }}",
    "%s %(x)s %%",
    "E'\\x27'",
    "\U0001f600 émoji",
    "",
]
NULL_BYTES = ["a\x00b", "\x00'); delete from victim; --"]


def _tables(engine: Engine) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    victim, notes = f"victim_{suffix}", f"notes_{suffix}"
    engine.sql(f"create table {victim} (id int); insert into {victim} select generate_series(1, 5)")
    engine.sql(f"create table {notes} (id serial, kind text, v text)")
    return victim, notes


def _playbook(engine: Engine, command: str, *, loop: bool = True) -> str:
    step: dict[str, Any] = {
        "step": "write",
        "tool": {"kind": "postgres", "auth": {"dsn": engine.dsn}, "command": command},
    }
    if loop:
        step["loop"] = {"in": "{{ evil }}", "iterator": "s"}
    return json.dumps({"metadata": {"name": "sqlinject", "path": "security/sqlinject"},
                       "workload": {"evil": []}, "workflow": [step]})


def test_corpus_in_literals_identifiers_and_comments_is_plain_data(engine: Engine) -> None:
    victim, notes = _tables(engine)
    command = (
        f"insert into {notes}(kind, v) values ('plain', '{{{{ s }}}}');\n"
        f"insert into {notes}(kind, v) values ('escape', E'{{{{ s }}}}');\n"
        f"insert into {notes}(kind, v) values ('json', '[{{{{ s | tojson }}}}]'::jsonb ->> 0);\n"
        "-- {{ s }}\n"
        f"/* {{{{ s }}}} */ insert into {notes}(kind, v) "
        "select 'ident', \"{{ s }}x\" from (select 1 as \"{{ s }}x\") as t;\n"
    )
    path = engine.register(_playbook(engine, command))
    row = engine.wait(engine.start(path, {"evil": CORPUS}))
    assert row["status"] == "COMPLETED", row["error"]
    assert engine.sql(f"select count(*) as n from {victim}")[0]["n"] == 5
    stored = engine.sql(f"select kind, v from {notes} order by id")
    for kind in ("plain", "escape", "json"):
        assert sorted(r["v"] for r in stored if r["kind"] == kind) == sorted(CORPUS), kind
    # Identifiers are truncated to 63 bytes by PostgreSQL; the text is still the value.
    assert len([r for r in stored if r["kind"] == "ident"]) == len(CORPUS)


def test_issue_attack_through_cli_set_leaves_victim_intact(engine: Engine, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    victim, notes = _tables(engine)
    playbook = tmp_path / "notes.yaml"
    playbook.write_text(json.dumps({
        "metadata": {"name": "notes", "path": f"security/notes-{uuid.uuid4().hex[:6]}"},
        "workload": {"name": "nobody"},
        "workflow": [{"step": "note", "tool": {
            "kind": "postgres", "auth": {"dsn": engine.dsn},
            "command": f"insert into {notes}(v) values ('{{{{ name }}}}')"}}],
    }))
    monkeypatch.setenv("NOETL_DSN", engine.dsn)
    result = CliRunner().invoke(main, ["run", str(playbook), "--json", "--set",
                                       f"name={ISSUE_ATTACK}"])
    assert result.exit_code == 0, result.output
    assert engine.sql(f"select count(*) as n from {victim}")[0]["n"] == 5
    assert [r["v"] for r in engine.sql(f"select v from {notes}")] == [ISSUE_ATTACK]


@pytest.mark.parametrize("value", NULL_BYTES)
def test_null_bytes_are_refused_naming_the_expression(value: str) -> None:
    # A payload cannot carry one (jsonb refuses it at start); a python value can.
    for template in ("select '{{ s }}'", "select {{ s | sql_literal }}", "-- {{ s }}"):
        with pytest.raises(SqlTemplateError, match=r"step 'w'.*\{\{ s.*null byte"):
            render_sql(template, {"s": value}, step="w")


@pytest.mark.parametrize("value", [v for v in CORPUS if v and not v.isidentifier()]
                         + ["1 or 1=1", "1; delete", "id--", "-1--"])
def test_bare_position_refuses_non_identifiers(engine: Engine, value: str) -> None:
    victim, _ = _tables(engine)
    path = engine.register(_playbook(
        engine, f"delete from {victim} where id = {{{{ n }}}}", loop=False))
    row = engine.wait(engine.start(path, {"n": value}))
    assert row["status"] == "FAILED", value
    assert "step 'write'" in row["error"] and "{{ n }}" in row["error"]
    assert "bare SQL position" in row["error"]
    assert engine.sql(f"select count(*) as n from {victim}")[0]["n"] == 5


def test_common_patterns_keep_working(engine: Engine) -> None:
    victim, notes = _tables(engine)
    command = (
        f"insert into {{{{ table }}}}(kind, v) select '{{{{ label }}}}', id::text "
        f"from {victim} where id = any(array{{{{ ids }}}}) or id = {{{{ one }}}} "
        "or id = {{ neg }} + 10 or {{ flag }};\n"
        f"insert into {notes}(kind, v) values ({{{{ label | sql_literal }}}}, "
        "{{ missing | default(none) | sql_literal }});\n"
        "select count(*) as n from {{ table.split('.') | sql_identifier }}"
    )
    path = engine.register(_playbook(engine, command, loop=False))
    row = engine.wait(engine.start(path, {"table": f"public.{notes}", "label": "it's",
                                          "ids": [1, 2], "one": "3", "neg": -6, "flag": False}))
    assert row["status"] == "COMPLETED", row["error"]
    stored = engine.sql(f"select kind, v from {notes} order by id")
    assert stored == [{"kind": "it's", "v": v} for v in ("1", "2", "3", "4")] + [
        {"kind": "it's", "v": None}]
    assert row["result"]["rows"] == [{"n": 5}]


def test_dollar_quoted_bodies_refuse_templates() -> None:
    with pytest.raises(SqlTemplateError, match=r"step 'w'.*\{\{ v \}\}.*dollar-quoted"):
        render_sql("do $$ begin perform '{{ v }}'; end $$", {"v": "x"}, step="w")
    with pytest.raises(SqlTemplateError, match=r"\{\{ v \}\}.*'\$'"):
        render_sql("select $a{{ v }}$", {"v": "x"})
    # A dollar quote with no template inside is left alone.
    assert render_sql("select $$'$$, '{{ v }}'", {"v": "'"}) == "select $$'$$, ''''"


def test_renderer_positions() -> None:
    ctx = {"s": "a'b\\c\n*/", "n": -2, "f": 1.5, "inf": float("inf"), "d": {"k": 1}}
    assert render_sql("'{{ s }}' E'{{ s }}' \"{{ s }}\"", ctx) == (
        "'a''b\\c\n*/' E'a''b\\\\c\n*/' \"a'b\\c\n*/\"")
    assert render_sql("-- {{ s }}\nselect /* {{ s }} */ 1", ctx) == (
        "-- a'b\\c */\nselect /* a'b\\c\n* / */ 1")
    assert render_sql("select 1 -{{ n }}, {{ f }}", ctx) == "select 1 -(-2), 1.5"
    assert render_sql("select E'{{ s }}' || e '{{ s }}'", ctx).endswith("e 'a''b\\c\n*/'")
    for bad in ("{{ inf }}", "{{ d }}", "{{ [1, 'a'] }}"):
        with pytest.raises(SqlTemplateError, match="bare SQL position"):
            render_sql(f"select {bad}", ctx)
    with pytest.raises(TemplateError, match="missing"):
        render_sql("select '{{ missing }}'", ctx)
    with pytest.raises(SqlTemplateError, match="standard_conforming_strings"):
        render_sql("set standard_conforming_strings = off; select '{{ s }}'", ctx)


def test_duckdb_corpus_is_plain_data(tmp_path: Path) -> None:
    database = str(tmp_path / "inject.duckdb")
    with duckdb.connect(database) as conn:
        conn.execute("create table victim as select range as id from range(5)")
        conn.execute("create table notes (kind text, v text)")
    tool, context = DuckdbTool(), ToolContext(execution_id=1, step="w", command_id=1,
                                              attempt=1, dsn="")
    raw = {"kind": "duckdb", "database": database, "command": (
        "insert into notes values ('plain', '{{ s }}');"
        "insert into notes values ('escape', E'{{ s }}');"
        "select 1 as \"{{ s }}x\"; -- {{ s }}\n/* {{ s }} */ select 2")}
    for value in CORPUS:
        tool.run(render_tool_config(raw, {"s": value}, step="w"), context)
    for value in [v for v in CORPUS if v and not v.isidentifier()]:
        with pytest.raises(SqlTemplateError, match="bare SQL position"):
            render_tool_config({"kind": "duckdb", "command": "delete from victim where id = "
                                "{{ s }}"}, {"s": value})
    with duckdb.connect(database) as conn:
        assert conn.execute("select count(*) from victim").fetchone() == (5,)
        for kind in ("plain", "escape"):
            rows = conn.execute("select v from notes where kind = ?", [kind]).fetchall()
            assert sorted(r[0] for r in rows) == sorted(CORPUS), kind


# --- auth (issue 12 item 2) -----------------------------------------------------------------


def test_payload_auth_may_name_a_credential_but_not_supply_a_dsn(fresh_engine: Engine) -> None:
    engine = fresh_engine
    _, notes = _tables(engine)
    put_credential(engine.dsn, "injection_target", "postgres", {"dsn": engine.dsn})
    playbook = json.dumps({
        "metadata": {"name": "authpb", "path": "security/auth"},
        "workload": {"pg_auth": {"dsn": engine.dsn}},
        "workflow": [{"step": "w", "tool": {"kind": "postgres", "auth": "{{ pg_auth }}",
                                            "command": f"insert into {notes}(v) values ('x')"}}],
    })
    with engine.worker(credentials=DatabaseCredentialResolver(engine.dsn)):
        _auth_runs(engine, engine.register(playbook), notes)


def _auth_runs(engine: Engine, path: str, notes: str) -> None:
    # The playbook's own workload, and a payload naming a credential, both work.
    assert engine.wait(engine.start(path))["status"] == "COMPLETED"
    named = engine.wait(engine.start(path, {"pg_auth": "injection_target"}))
    assert named["status"] == "COMPLETED", named["error"]
    for evil in ({"dsn": engine.dsn + " application_name=evil"}, engine.dsn,
                 "host=127.0.0.1 dbname=postgres", {"credential": "injection_target",
                                                    "host": "elsewhere"}):
        row = engine.wait(engine.start(path, {"pg_auth": evil}))
        assert row["status"] == "FAILED", evil
        assert "step 'w'" in row["error"] and "only name a registered credential" in row["error"]
    assert engine.sql(f"select count(*) as n from {notes}")[0]["n"] == 2


@pytest.mark.parametrize(("auth", "workload", "field"), [
    ({"db_host": "h", "db_password": "hunter2"}, {}, "tool.auth.db_password"),
    ({"dsn": "postgresql://u:hunter2@h/db"}, {}, "tool.auth.dsn"),
    ({"dsn": "host=h password=hunter2"}, {}, "tool.auth.dsn"),
    ("{{ pg }}", {"pg": {"db_host": "h", "password": "hunter2"}}, "workload.pg.password"),
])
def test_inline_passwords_are_refused_at_registration(
    engine: Engine, auth: Any, workload: dict[str, Any], field: str,
) -> None:
    from noetl_pg.errors import PlaybookError

    playbook = json.dumps({
        "metadata": {"name": "inline", "path": "security/inline"}, "workload": workload,
        "workflow": [{"step": "w", "tool": {"kind": "postgres", "auth": auth,
                                            "command": "select 1"}}]})
    before = engine.sql("select count(*) as n from noetl.catalog")[0]["n"]
    with pytest.raises(PlaybookError, match=rf"step 'w', field '{field}'.*credential add"):
        engine.register(playbook)
    assert engine.sql("select count(*) as n from noetl.catalog")[0]["n"] == before
    # A template or a password-less DSN is fine.
    engine.register(playbook.replace("hunter2", "{{ secret }}"))


# --- `%` in values when params are bound -----------------------------------------------------

PERCENT_VALUES = ["50%", "%", "%%", "%(x)s", "%s", "%(kind)s", "a % b %% c", "%b%t%"]


def test_percent_in_values_beside_params_stays_data(engine: Engine) -> None:
    """psycopg reads every `%` of a statement it binds params to, inside literals too: a
    value's `%` is doubled there, and only there (a statement without a placeholder runs
    unbound)."""
    victim, notes = _tables(engine)
    command = (
        f"insert into {notes}(kind, v) values (%(kind)s, '{{{{ s }}}}');\n"
        f"insert into {notes}(kind, v) select %(kind)s || '-ident', \"{{{{ s }}}}x\"\n"
        "    from (select 1 as \"{{ s }}x\") as t /* {{ s }} */; -- {{ s }}\n"
        f"insert into {notes}(kind, v) values (%(kind)s || '-marked', {{{{ s | sql_literal }}}});\n"
        f"insert into {notes}(kind, v) values ('unbound', '{{{{ s }}}}')"
    )
    playbook = json.loads(_playbook(engine, command))
    playbook["workflow"][0]["tool"]["params"] = {"kind": "bound"}
    path = engine.register(json.dumps(playbook))
    row = engine.wait(engine.start(path, {"evil": PERCENT_VALUES}))
    assert row["status"] == "COMPLETED", row["error"]
    stored = engine.sql(f"select kind, v from {notes} order by id")
    for kind in ("bound", "bound-marked", "unbound"):
        assert sorted(r["v"] for r in stored if r["kind"] == kind) == sorted(PERCENT_VALUES), kind
    # The quoted identifier held the value too (the alias resolved): one row each.
    assert [r["v"] for r in stored if r["kind"] == "bound-ident"] == ["1"] * len(PERCENT_VALUES)
    assert engine.sql(f"select count(*) as n from {victim}")[0]["n"] == 5


def test_bare_value_after_percent_cannot_form_a_placeholder() -> None:
    raw = {"kind": "postgres", "command": "select 10 %{{ n }}, %(a)s", "params": {"a": 1}}
    for value in ("s", "t", True, -2):
        with pytest.raises(SqlTemplateError, match=r"\{\{ n \}\}.*placeholder"):
            render_tool_config(raw, {"n": value}, step="w")
    assert render_tool_config(raw, {"n": 3})["command"] == "select 10 %3, %(a)s"
    # Without params nothing binds: no placeholder can form, the value is an identifier.
    unbound = {"kind": "postgres", "command": "select 10 %{{ n }}"}
    assert render_tool_config(unbound, {"n": "s"})["command"] == "select 10 %s"
