"""The postgres tool against the test server, and its statement splitter."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from noetl_pg.credentials import MappingCredentialResolver
from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.postgres import PostgresTool, SqlStatement, json_safe, split_sql

PASSWORD = "pg-pass-W0rd-xyz"


# --- splitter -----------------------------------------------------------------------------


def texts(sql: str) -> list[str]:
    return [s.text for s in split_sql(sql)]


def test_split_plain_statements_and_drops_empty_ones() -> None:
    assert texts("select 1; select 2;;  ;\n") == ["select 1", "select 2"]
    assert texts("-- only a comment;\n/* and; another */") == []


def test_split_ignores_semicolons_in_literals_identifiers_and_comments() -> None:
    sql = (
        "select 'a;b''c;' as \"x;y\"; "
        "select E'\\';' ; "
        "create function f() returns int language sql as $$ select 1; $$; "
        "do $body$ begin perform 1; end $body$; "
        "select 1 /* c; /* nested; */ still; */ + 1; "
        "select 2 -- trailing; comment\n + 2"
    )
    assert texts(sql) == [
        "select 'a;b''c;' as \"x;y\"",
        "select E'\\';'",
        "create function f() returns int language sql as $$ select 1; $$",
        "do $body$ begin perform 1; end $body$",
        "select 1 /* c; /* nested; */ still; */ + 1",
        "select 2 -- trailing; comment\n + 2",
    ]


def test_split_positional_dollar_is_not_a_quote() -> None:
    assert texts("select $1; select a$b$c from t; select 3") == [
        "select $1",
        "select a$b$c from t",
        "select 3",
    ]


def test_split_detects_placeholders_outside_literals() -> None:
    assert split_sql("select %s; select '%s'; select %(n)s; select 5 %% 2; select 1 -- %s") == [
        SqlStatement("select %s", True),
        SqlStatement("select '%s'", False),
        SqlStatement("select %(n)s", True),
        SqlStatement("select 5 %% 2", False),
        SqlStatement("select 1 -- %s", False),
    ]


def test_json_safe_values() -> None:
    assert json_safe(decimal.Decimal("12.50")) == 12.5
    assert json_safe(decimal.Decimal("10.000")) == 10
    assert json_safe(decimal.Decimal("12345678901234567890.123456789")) == (
        "12345678901234567890.123456789"
    )
    assert json_safe(decimal.Decimal("NaN")) == "NaN"
    assert json_safe(dt.date(2024, 1, 2)) == "2024-01-02"
    assert json_safe(dt.timedelta(minutes=1)) == 60.0
    assert json_safe(b"\x00\xff") == "AP8="
    assert json_safe(float("inf")) == "inf"
    u = uuid.uuid4()
    assert json_safe({"k": [u, (1, 2)]}) == {"k": [str(u), [1, 2]]}


# --- the tool -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resources() -> Iterator[dict]:
    shared: dict = {}
    yield shared
    for resource in shared.values():
        resource.close()


@pytest.fixture
def context(dsn: str, resources: dict) -> ToolContext:
    params = conninfo_to_dict(dsn)
    credentials = MappingCredentialResolver(
        {
            # The test server trusts local connections: the password is carried, not checked.
            "pg": {
                "db_host": params.get("host"),
                "db_port": params.get("port"),
                "db_user": params.get("user"),
                "db_password": PASSWORD,
                "db_name": params["dbname"],
            },
            "pg_dsn": {"dsn": dsn, "password": PASSWORD},
            "nowhere": {"db_host": "127.0.0.1", "db_port": 1, "db_name": "x",
                        "db_password": PASSWORD},
        }
    )
    return ToolContext(
        execution_id=1, step="sql", command_id=1, attempt=1, dsn=dsn, credentials=credentials,
        worker_resources=resources,
    )


def run(config: dict, context: ToolContext) -> dict:
    return PostgresTool().run(config, context)


def test_several_statements_last_result_and_each_command(context: ToolContext) -> None:
    result = run(
        {
            "auth": "pg",
            "command": """
                create temporary table t_people (id int, name text, born date, score numeric);
                insert into t_people values (1, 'ann', '1990-05-01', 1.5), (2, 'bo;b', null, 2);
                select * from t_people order by id;
            """,
        },
        context,
    )
    assert result["columns"] == ["id", "name", "born", "score"]
    assert result["rows"] == [
        {"id": 1, "name": "ann", "born": "1990-05-01", "score": 1.5},
        {"id": 2, "name": "bo;b", "born": None, "score": 2},
    ]
    assert result["row_count"] == 2
    assert result["command_1"]["row_count"] == 2
    assert result["command_1"]["status"] == "INSERT 0 2"
    assert result["command_0"]["rows"] == []
    assert result["command_2"]["rows"] == result["rows"]
    json.dumps(result)


def test_params_are_bound_not_spliced(context: ToolContext) -> None:
    evil = "x'); drop table noetl.credential; --"
    result = run(
        {
            "auth": {"credential": "pg_dsn"},
            "query": "select 'literal %' as pct; select %(name)s as name, %(n)s::int + 1 as next",
            "params": {"name": evil, "n": 41},
        },
        context,
    )
    assert result["rows"] == [{"name": evil, "next": 42}]
    assert result["command_0"]["rows"] == [{"pct": "literal %"}]
    listed = run({"auth": "pg", "query": "select %s::text || %s as joined", "params": ["a", "b"]},
                 context)
    assert listed["rows"] == [{"joined": "ab"}]


def test_json_safe_result_types(context: ToolContext) -> None:
    result = run(
        {
            "auth": "pg",
            "query": "select gen_random_uuid() as u, '\\x00ff'::bytea as b, now() as ts,"
            " 1.25::numeric as d, '1 hour'::interval as i, '{\"a\": [1]}'::jsonb as j",
        },
        context,
    )
    row = result["rows"][0]
    uuid.UUID(row["u"])
    assert row["b"] == "AP8="
    dt.datetime.fromisoformat(row["ts"])
    assert (row["d"], row["i"], row["j"]) == (1.25, 3600.0, {"a": [1]})
    json.dumps(result)


def test_failing_statement_rolls_back_everything(context: ToolContext, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table if not exists public.tool_pg_rollback (id int primary key)")
    with pytest.raises(ToolError) as caught:
        run(
            {
                "auth": "pg",
                "command": "insert into public.tool_pg_rollback values (1);"
                " insert into public.tool_pg_rollback values (1);",
            },
            context,
        )
    error = caught.value
    assert error.output["sqlstate"] == "23505"
    assert error.output["statement_index"] == 1
    assert "statement 1" in error.message and "23505" in error.message
    assert PASSWORD not in str(error) and PASSWORD not in json.dumps(error.output)
    with psycopg.connect(dsn) as conn:
        count = conn.execute("select count(*) from public.tool_pg_rollback").fetchone()
    assert count == (0,)


def test_syntax_error_names_statement(context: ToolContext) -> None:
    with pytest.raises(ToolError) as caught:
        run({"auth": "pg", "command": "select 1; selec 2"}, context)
    assert caught.value.output["sqlstate"] == "42601"
    assert caught.value.output["statement_index"] == 1


def test_statement_timeout_is_tool_timeout(context: ToolContext) -> None:
    with pytest.raises(ToolTimeout) as caught:
        run({"auth": "pg", "command": "select pg_sleep(5)", "timeout": 0.2}, context)
    assert caught.value.output["sqlstate"] == "57014"
    assert caught.value.kind == "timeout"


def test_one_pool_per_connection(context: ToolContext, resources: dict) -> None:
    run({"auth": "pg", "command": "select 1"}, context)
    run({"auth": "pg", "command": "select 2"}, context)
    pools = resources["postgres"]._pools
    assert len([info for info in pools if PASSWORD in info]) == 2  # "pg" and "pg_dsn"


def test_unreachable_server_error_hides_password(context: ToolContext) -> None:
    with pytest.raises(ToolError) as caught:
        run({"auth": "nowhere", "command": "select 1"}, context)
    assert "cannot connect" in caught.value.message
    assert PASSWORD not in str(caught.value)


def test_missing_auth_or_command(context: ToolContext) -> None:
    with pytest.raises(ToolError, match="auth"):
        run({"command": "select 1"}, context)
    with pytest.raises(ToolError, match="command"):
        run({"auth": "pg"}, context)


def test_error_carries_sqlstate_line_and_column_of_its_statement(context: ToolContext) -> None:
    with pytest.raises(ToolError) as caught:
        run({"auth": "pg", "command": "select 1;\nselect 2,\n  nosuchcolumn + 1"}, context)
    output = caught.value.output
    assert (output["sqlstate"], output["statement_index"]) == ("42703", 1)
    assert (output["line"], output["column"]) == (2, 3)
    assert "postgres statement 1 (line 2, column 3) failed [SQLSTATE 42703]" in (
        caught.value.message)
