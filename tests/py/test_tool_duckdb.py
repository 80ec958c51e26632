"""The duckdb tool: several statements, params, Parquet/CSV files, errors, timeouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.duckdb import DuckdbTool


@pytest.fixture
def context() -> ToolContext:
    return ToolContext(execution_id=1, step="duck", command_id=1, attempt=1, dsn="")


def run(config: dict, context: ToolContext) -> dict:
    return DuckdbTool().run(config, context)


def test_memory_script_result_shape(context: ToolContext) -> None:
    result = run(
        {
            "query": """
                create table t (id integer, name varchar, price decimal(6, 2), day date);
                insert into t values (1, 'a;b', 1.50, '2024-01-02'), (2, 'c', 2.00, null);
                select * from t order by id;
            """
        },
        context,
    )
    assert result["columns"] == ["id", "name", "price", "day"]
    assert result["rows"] == [
        {"id": 1, "name": "a;b", "price": 1.5, "day": "2024-01-02"},
        {"id": 2, "name": "c", "price": 2, "day": None},
    ]
    assert result["row_count"] == 2
    assert result["command_1"]["row_count"] == 2
    assert result["command_1"]["rows"] == []
    json.dumps(result)


def test_params_mapping_and_list(context: ToolContext) -> None:
    evil = "x'; drop table t; --"
    named = run(
        {"command": "select 1 as one; select $name as name, $n + 1 as next",
         "params": {"name": evil, "n": 41}},
        context,
    )
    assert named["rows"] == [{"name": evil, "next": 42}]
    assert named["command_0"]["rows"] == [{"one": 1}]
    positional = run({"command": "select ? || ? as joined", "params": ["a", "b"]}, context)
    assert positional["rows"] == [{"joined": "ab"}]


def test_parquet_and_csv_written_then_read(context: ToolContext, tmp_path: Path) -> None:
    parquet = tmp_path / "orders.parquet"
    csv = tmp_path / "orders.csv"
    written = run(
        {
            "command": f"""
                copy (select range as id, range * 10 as amount from range(5))
                    to '{parquet}' (format parquet);
                copy (select * from read_parquet('{parquet}')) to '{csv}' (header);
            """
        },
        context,
    )
    assert written["row_count"] == 5
    read = run(
        {"query": f"select sum(amount) as total from read_parquet('{parquet}');"
                  f" select count(*) as n from read_csv('{csv}')"},
        context,
    )
    assert read["command_0"]["rows"] == [{"total": 100}]
    assert read["rows"] == [{"n": 5}]


def test_file_database_persists_between_calls(context: ToolContext, tmp_path: Path) -> None:
    database = str(tmp_path / "state.duckdb")
    script = "create table kv (k varchar); insert into kv values ('x')"
    run({"database": database, "command": script}, context)
    result = run({"database": database, "query": "select k from kv"}, context)
    assert result["rows"] == [{"k": "x"}]


def test_failure_names_statement_and_rolls_back(context: ToolContext, tmp_path: Path) -> None:
    database = str(tmp_path / "tx.duckdb")
    run({"database": database, "command": "create table n (i integer)"}, context)
    with pytest.raises(ToolError) as caught:
        run(
            {"database": database,
             "command": "insert into n values (1); select * from missing_table"},
            context,
        )
    assert caught.value.output["statement_index"] == 1
    assert "statement 1" in caught.value.message
    assert run({"database": database, "query": "select count(*) as c from n"}, context)[
        "rows"
    ] == [{"c": 0}]


def test_timeout_interrupts(context: ToolContext) -> None:
    with pytest.raises(ToolTimeout):
        run(
            {"query": "select count(*) from range(100000000000) a", "timeout": 0.3},
            context,
        )


def test_parse_error_and_missing_query(context: ToolContext) -> None:
    with pytest.raises(ToolError, match="parse"):
        run({"query": "selec 1"}, context)
    with pytest.raises(ToolError, match="command"):
        run({"database": ":memory:"}, context)
