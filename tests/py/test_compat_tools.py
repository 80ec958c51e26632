"""NoETL tool forms end to end: postgres concurrency, errors with their cause, credential,
script, transfer and artifact tools, policy writes and playbook tasks in a pipeline."""

from __future__ import annotations

import textwrap
import threading
import time
import uuid
from typing import Any

import psycopg
from engine_harness import Engine


def _events(engine: Engine, execution_id: int, event_type: str,
            step: str | None = None) -> list[dict[str, Any]]:
    return [e for e in engine.events(execution_id)
            if e["event_type"] == event_type and (step is None or e["node_name"] == step)]


def _issued(engine: Engine, execution_id: int) -> dict[str, int]:
    rows = engine.sql(
        "select step_name, count(*) as n from noetl.command where execution_id = %s "
        "and kind not in ('route', 'loop') group by step_name", execution_id)
    return {row["step_name"]: row["n"] for row in rows}


class BackendPeak:
    """Counts, from pg_stat_activity, the most backends running a query that has `tag`."""

    def __init__(self, dsn: str, tag: str) -> None:
        self.peak = 0
        self._dsn, self._tag = dsn, tag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> BackendPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "select count(*) from pg_stat_activity where state = 'active' "
                    "and pid <> pg_backend_pid() and query like %s",
                    (f"%{self._tag}%",)).fetchone()
                assert row is not None
                self.peak = max(self.peak, row[0])
                time.sleep(0.02)


def _sleep_loop(dsn: str, tag: str, width: int) -> str:
    # A fast loop first grows each slot's claim batch (worker.ClaimSizer), the case where
    # one slot used to claim several slow postgres iterations and run them in turn.
    return textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: pgwidth, path: test/compat/pgwidth}}
        workload: {{dsn: "{dsn}"}}
        workflow:
          - step: warm
            loop: {{in: "{{{{ range(40) | list }}}}", iterator: i, mode: async, concurrency: 8}}
            tool: {{kind: noop}}
            next: [{{step: sleep}}]
          - step: sleep
            loop:
              in: "{{{{ range({width}) | list }}}}"
              iterator: i
              spec: {{mode: parallel, max_in_flight: {width}}}
            tool:
              kind: postgres
              auth: {{dsn: "{{{{ workload.dsn }}}}"}}
              command: "select pg_sleep(1.5) as slept /* {tag} */"
        """)


def test_postgres_loop_reaches_max_in_flight_up_to_the_slots(fresh_engine: Engine) -> None:
    tag = f"pgwidth_{uuid.uuid4().hex[:8]}"
    with fresh_engine.worker(slots=6), BackendPeak(fresh_engine.dsn, tag) as watch:
        row = fresh_engine.run(_sleep_loop(fresh_engine.dsn, tag, 6))
    assert row["status"] == "COMPLETED", row["error"]
    assert watch.peak == 6
    assert _issued(fresh_engine, row["execution_id"]) == {"warm": 40, "sleep": 6}
    assert row["result"]["stats"] == {"total": 6, "success": 6, "failed": 0}


def test_postgres_loop_wider_than_the_slots_runs_slots_at_a_time(fresh_engine: Engine) -> None:
    tag = f"pgwidth_{uuid.uuid4().hex[:8]}"
    with fresh_engine.worker(slots=3), BackendPeak(fresh_engine.dsn, tag) as watch:
        row = fresh_engine.run(_sleep_loop(fresh_engine.dsn, tag, 5))
    assert row["status"] == "COMPLETED", row["error"]
    assert watch.peak == 3
    assert len(_events(fresh_engine, row["execution_id"], "call.done", "sleep")) == 5


# --- pipelines and policy ---------------------------------------------------------------

CHILD = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: child, path: test/compat/child}
workload: {n: 1, fail: false}
workflow:
  - step: compute
    tool:
      kind: python
      input: {n: "{{ n }}", fail: "{{ fail }}"}
      code: |
        if fail:
            raise ValueError(f"child asked to fail for {n}")
        result = {"doubled": n * 2}
"""


def _pipeline_parent(child: str, loop: str = "", fail: str = "false") -> str:
    return textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: pipeparent, path: test/compat/pipeparent}}
        workload: {{n: 5}}
        workflow:
          - step: work
            {loop}
            tool:
              - name: prepare
                kind: python
                input: {{n: "{{{{ workload.n }}}}"}}
                code: "result = {{'n': n + 1}}"
              - name: child
                kind: playbook
                path: {child}
                input: {{n: "{{{{ prepare.n }}}}", fail: {fail}}}
              - name: finish
                kind: python
                input: {{before: "{{{{ prepare.n }}}}", got: "{{{{ child }}}}"}}
                code: "result = {{'before': before, 'got': got}}"
        """)


def test_playbook_task_inside_a_pipeline_resumes_after_the_child(engine: Engine) -> None:
    child = engine.register(CHILD)
    row = engine.run(_pipeline_parent(child))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"before": 6, "got": {"doubled": 12}}
    execution_id = row["execution_id"]
    children = engine.sql("select status from noetl.execution where parent_execution_id = %s",
                          execution_id)
    assert children == [{"status": "COMPLETED"}]
    # The command was parked (no slot held), resumed once, and claimed twice.
    assert len(_events(engine, execution_id, "command.resumed", "work")) == 1
    assert len(_events(engine, execution_id, "command.claimed", "work")) == 2
    assert len(_events(engine, execution_id, "call.done", "work")) == 1


def test_playbook_task_in_a_pipeline_per_loop_iteration(engine: Engine) -> None:
    child = engine.register(CHILD)
    loop = 'loop: {in: "{{ [1, 2, 3] }}", iterator: i, mode: async, concurrency: 3}'
    row = engine.run(_pipeline_parent(child, loop))
    assert row["status"] == "COMPLETED", row["error"]
    execution_id = row["execution_id"]
    result = engine.sql("select result from noetl.step_result where execution_id = %s "
                        "and step_name = 'work'", execution_id)[0]["result"]
    assert result["results"] == [{"before": 6, "got": {"doubled": 12}}] * 3
    assert len(_events(engine, execution_id, "command.resumed", "work")) == 3


def test_failed_child_in_a_pipeline_fails_the_step(engine: Engine) -> None:
    child = engine.register(CHILD)
    row = engine.run(_pipeline_parent(child, fail="true"))
    assert row["status"] == "FAILED"
    assert "child asked to fail for 6" in row["error"]
    assert not _events(engine, row["execution_id"], "command.resumed")


POLICY_SET = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: policyset, path: test/compat/policyset}
workflow:
  - step: fetch
    tool:
      - name: first
        kind: python
        code: "result = {'rows': [1, 2, 3]}"
        spec:
          policy:
            rules:
              - when: "{{ output.status == 'ok' }}"
                then:
                  do: continue
                  set:
                    ctx.row_count: "{{ output.data.rows | length }}"
                    iter.seen: "{{ output.data.rows[0] }}"
                    step.source: first
      - name: second
        kind: python
        input: {count: "{{ ctx.row_count }}", seen: "{{ iter.seen }}"}
        code: "result = {'count': count, 'seen': seen}"
    next: [{step: report}]
  - step: report
    tool:
      kind: python
      input: {count: "{{ ctx.row_count }}", source: "{{ fetch.source }}", data: "{{ fetch }}"}
      code: "result = {'count': count, 'source': source, 'data': data}"
"""


def test_policy_then_set_writes_ctx_iter_and_step(engine: Engine) -> None:
    row = engine.run(POLICY_SET)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["count"] == 3
    assert row["result"]["source"] == "first"
    assert row["result"]["data"]["count"] == 3 and row["result"]["data"]["seen"] == 1
    ctx = engine.sql("select ctx from noetl.execution where execution_id = %s",
                     row["execution_id"])[0]["ctx"]
    assert ctx["row_count"] == 3


def test_policy_set_on_error_with_continue_writes_ctx(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: policyerr, path: test/compat/policyerr}
        workflow:
          - step: risky
            tool:
              kind: python
              code: "raise RuntimeError('nope')"
              spec:
                policy:
                  rules:
                    - when: "{{ output.status == 'error' }}"
                      then: {do: continue, set: {ctx.failed_with: "{{ output.error }}"}}
            next: [{step: after}]
          - step: after
            tool: {kind: python, input: {why: "{{ ctx.failed_with }}"}, code: "result = why"}
        """)
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert "nope" in row["result"]


def test_policy_that_cannot_render_after_an_error_keeps_the_cause(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: policybad, path: test/compat/policybad}
        workflow:
          - step: risky
            tool:
              kind: python
              code: "raise RuntimeError('the real cause')"
              spec:
                policy:
                  rules:
                    - when: "{{ output.status == 'error' and nosuchname.x }}"
                      then: {do: retry}
        """)
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert "the real cause" in row["error"]
    assert "policy could not be evaluated" in row["error"] and "nosuchname" in row["error"]
    assert row["error"].index("the real cause") < row["error"].index("nosuchname")


def test_arc_that_cannot_render_after_an_error_keeps_the_cause(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: arcbad, path: test/compat/arcbad}
        workflow:
          - step: risky
            tool: {kind: python, code: "raise RuntimeError('first failure')"}
            next:
              arcs:
                - step: handler
                  when: "{{ nosuchvar.field == 1 }}"
          - step: handler
            tool: {kind: noop}
        """)
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert "first failure" in row["error"]
    assert "arcs could not be evaluated" in row["error"] and "nosuchvar" in row["error"]
    assert row["error"].index("first failure") < row["error"].index("nosuchvar")
    assert _issued(engine, row["execution_id"]) == {"risky": 1}


def test_postgres_step_error_carries_sqlstate_and_position(engine: Engine) -> None:
    source = textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: pgerr, path: test/compat/pgerr}}
        workflow:
          - step: query
            tool:
              kind: postgres
              auth: {{dsn: "{engine.dsn}"}}
              command: |
                select 1;
                select
                  no_such_column from pg_class
        """)
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert "SQLSTATE 42703" in row["error"]
    assert "statement 1 (line 2, column 3)" in row["error"]
    assert "no_such_column" in row["error"]


# --- tool forms -------------------------------------------------------------------------


def _table(dsn: str) -> str:
    name = f"compat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"create table public.{name} (id int primary key, label text)")
    return name


def test_transfer_postgres_to_duckdb_and_back(engine: Engine, tmp_path: Any) -> None:
    source_table, back_table = _table(engine.dsn), _table(engine.dsn)
    with psycopg.connect(engine.dsn, autocommit=True) as conn:
        conn.execute(f"insert into public.{source_table} "
                     "select g, 'row ' || g from generate_series(1, 25) as g")
    duck = tmp_path / "transfer.duckdb"
    source = textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: transfer, path: test/compat/transfer}}
        workload: {{dsn: "{engine.dsn}", duck: "{duck}"}}
        workflow:
          - step: prepare
            tool:
              kind: duckdb
              database: "{{{{ workload.duck }}}}"
              command: "create table copied (id integer, label varchar)"
            next: [{{step: to_duck}}]
          - step: to_duck
            tool:
              kind: transfer
              source: {{tool: postgres, auth: {{dsn: "{{{{ workload.dsn }}}}"}},
                       query: "select id, label from public.{source_table} order by id"}}
              target: {{tool: duckdb, database: "{{{{ workload.duck }}}}", table: copied}}
              chunk_size: 10
            next: [{{step: to_pg}}]
          - step: to_pg
            tool:
              kind: transfer
              source: {{tool: duckdb, database: "{{{{ workload.duck }}}}",
                       query: "select id, upper(label) as label from copied where id <= 5"}}
              target: {{tool: postgres, credential: {{dsn: "{{{{ workload.dsn }}}}"}},
                       table: "public.{back_table}"}}
              mode: replace
        """)
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    to_duck = engine.sql("select result from noetl.step_result where execution_id = %s "
                         "and step_name = 'to_duck'", row["execution_id"])[0]["result"]
    assert (to_duck["rows_transferred"], to_duck["chunks_processed"]) == (25, 3)
    assert to_duck["direction"] == "postgres_to_duckdb" and to_duck["columns"] == ["id", "label"]
    assert row["result"]["rows_transferred"] == 5
    assert row["result"]["direction"] == "duckdb_to_postgres"
    back = engine.sql(f"select id, label from public.{back_table} order by id")
    assert back == [{"id": i, "label": f"ROW {i}"} for i in range(1, 6)]


def test_transfer_refuses_a_bad_table_name_and_writes_nothing(engine: Engine) -> None:
    table = _table(engine.dsn)
    source = textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: transferbad, path: test/compat/transferbad}}
        workflow:
          - step: copy
            tool:
              kind: transfer
              source: {{tool: postgres, auth: {{dsn: "{engine.dsn}"}}, query: "select 1 as id"}}
              target: {{tool: postgres, auth: {{dsn: "{engine.dsn}"}},
                       table: "{table}; drop table {table}"}}
        """)
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert "target.table must be a table name" in row["error"]
    assert engine.sql(f"select count(*) as n from public.{table}") == [{"n": 0}]


def test_transfer_from_snowflake_fails_naming_the_service(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: transfersf, path: test/compat/transfersf}
        workflow:
          - step: copy
            tool:
              kind: transfer
              source: {tool: snowflake, auth: sf, query: "select 1"}
              target: {tool: postgres, auth: pg, table: t}
        """)
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert "source 'snowflake' needs a service" in row["error"]


def test_artifact_put_then_get(engine: Engine, tmp_path: Any) -> None:
    source = textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: artifact, path: test/compat/artifact}}
        workflow:
          - step: put
            tool:
              kind: artifact
              action: put
              uri: "file://{tmp_path}/out/data.json"
              data: {{rows: [1, 2, 3], name: compat}}
            next: [{{step: get}}]
          - step: get
            tool: {{kind: artifact, action: get, uri: "{{{{ put.uri }}}}"}}
            next: [{{step: plain}}]
          - step: plain
            tool:
              kind: artifact
              action: put
              uri: "{tmp_path}/plain.txt"
              data: "just text"
              compress: false
        """)
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    stored = engine.sql("select step_name, result from noetl.step_result "
                        "where execution_id = %s", row["execution_id"])
    results = {r["step_name"]: r["result"] for r in stored}
    assert results["put"]["uri"] == f"artifact://localfs{tmp_path}/out/data.json.gz"
    assert results["put"]["compressed"] is True and len(results["put"]["sha256"]) == 64
    assert results["get"]["data"] == {"rows": [1, 2, 3], "name": "compat"}
    assert results["get"]["status"] == "success"
    assert (tmp_path / "plain.txt").read_text() == "just text"


def test_credential_is_an_alias_of_auth(fresh_engine: Engine) -> None:
    from noetl_pg.credentials import MappingCredentialResolver

    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: credalias, path: test/compat/credalias}
        workflow:
          - step: query
            tool: {kind: postgres, credential: pg_main, query: "select 6 * 7 as answer"}
        """)
    resolver = MappingCredentialResolver({"pg_main": {"dsn": fresh_engine.dsn}})
    with fresh_engine.worker(credentials=resolver):
        row = fresh_engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["rows"] == [{"answer": 42}]


def test_script_files_are_read_at_registration(engine: Engine, tmp_path: Any) -> None:
    from noetl_pg import db
    from noetl_pg.catalog import register_file

    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "double.py").write_text("result = {'doubled': n * 2}\n")
    (tmp_path / "scripts" / "count.sql").write_text("select %(n)s::int + 1 as plus_one\n")
    path = f"test/compat/script-{uuid.uuid4().hex[:8]}"
    playbook = tmp_path / "play.yaml"
    playbook.write_text(textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: script, path: {path}}}
        workload: {{n: 20}}
        workflow:
          - step: py
            tool:
              kind: python
              input: {{n: "{{{{ workload.n }}}}"}}
              script: {{uri: scripts/double.py, source: {{type: file}}}}
            next: [{{step: sql}}]
          - step: sql
            tool:
              kind: postgres
              auth: {{dsn: "{engine.dsn}"}}
              params: {{n: "{{{{ py.doubled }}}}"}}
              script: {{uri: ./scripts/count.sql, source: {{type: file}}}}
            next: [{{step: inline}}]
          - step: inline
            tool:
              kind: python
              input: {{v: "{{{{ sql.rows[0].plus_one }}}}"}}
              script: {{source: {{type: inline}}, code: "result = v + 1000"}}
        """))
    with db.connect(engine.dsn) as conn:
        registered = register_file(conn, playbook)
    # The stored spec holds the text: a worker needs no access to the file.
    (tmp_path / "scripts" / "double.py").unlink()
    row = engine.wait(engine.start(registered.path))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == 1041
    spec = engine.sql("select spec from noetl.catalog where catalog_id = %s",
                      registered.catalog_id)[0]["spec"]
    assert spec["workflow"][0]["tool"]["code"] == "result = {'doubled': n * 2}\n"
    assert "script" not in spec["workflow"][0]["tool"]


def test_script_file_outside_the_playbook_directory_is_refused(engine: Engine,
                                                                tmp_path: Any) -> None:
    import pytest

    from noetl_pg import db
    from noetl_pg.catalog import register_file
    from noetl_pg.errors import PlaybookError

    (tmp_path / "inner").mkdir()
    playbook = tmp_path / "inner" / "play.yaml"
    playbook.write_text(textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: scriptbad, path: test/compat/scriptbad}
        workflow:
          - step: py
            tool: {kind: python, script: {uri: ../secret.py, source: {type: file}}}
        """))
    with db.connect(engine.dsn) as conn, pytest.raises(PlaybookError) as caught:
        register_file(conn, playbook)
    message = str(caught.value)
    assert "step 'py'" in message and "tool.script.uri" in message
    assert "leaves the playbook's directory" in message


def test_python_context_global_and_libs_from_import(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: pyctx, path: test/compat/pyctx}
        workload: {region: eu}
        workflow:
          - step: each
            loop: {in: "{{ [3, 4] }}", iterator: n}
            tool:
              kind: python
              libs:
                od: {from: collections, import: OrderedDict}
                jp: {from: os, import: path}
                m: math
              input: {n: "{{ n }}"}
              code: |
                result = {
                    "region": context["workload"]["region"],
                    "execution_id": context["execution_id"],
                    "index": context["iter"]["_index"],
                    "od": type(od()).__name__,
                    "joined": jp.join("a", "b"),
                    "sqrt": m.isqrt(n * n),
                }
        """)
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == [
        {"region": "eu", "execution_id": row["execution_id"], "index": i, "od": "OrderedDict",
         "joined": "a/b", "sqrt": n} for i, n in enumerate([3, 4])]


SERVICE_KIND = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: probes, path: test/compat/probes}
workload: {probe_snowflake: false}
workflow:
  - step: start
    tool: {kind: noop}
    next:
      arcs:
        - step: snowflake_probe
          when: "{{ workload.probe_snowflake }}"
        - step: done
  - step: snowflake_probe
    tool: {kind: snowflake, auth: sf_conn, command: "select current_version()", warehouse: wh}
  - step: done
    tool: {kind: python, code: "result = 'skipped the probe'"}
"""


def test_service_kind_registers_with_a_warning_and_fails_only_when_reached(
    engine: Engine,
) -> None:
    from noetl_pg import db
    from noetl_pg.catalog import register_text

    with db.connect(engine.dsn) as conn:
        registered = register_text(conn, SERVICE_KIND.replace(
            "test/compat/probes", f"test/compat/probes-{uuid.uuid4().hex[:8]}"), source="t")
    assert len(registered.warnings) == 1
    assert "step 'snowflake_probe'" in registered.warnings[0]
    assert "tool kind 'snowflake' needs a Snowflake account" in registered.warnings[0]
    skipped = engine.wait(engine.start(registered.path))
    assert skipped["status"] == "COMPLETED", skipped["error"]
    assert skipped["result"] == "skipped the probe"
    reached = engine.wait(engine.start(registered.path, {"probe_snowflake": True}))
    assert reached["status"] == "FAILED"
    assert reached["failed_step"] == "snowflake_probe"
    assert "tool kind 'snowflake' needs a Snowflake account" in reached["error"]


def test_a_kind_noetl_does_not_have_is_refused_at_registration(engine: Engine) -> None:
    import pytest

    from noetl_pg.errors import PlaybookError

    with pytest.raises(PlaybookError) as caught:
        engine.register(SERVICE_KIND.replace("kind: snowflake", "kind: snowflakes"))
    assert "unknown tool kind 'snowflakes'" in str(caught.value)
    assert "step 'snowflake_probe'" in str(caught.value)


def test_transfer_upsert_between_postgres_tables(engine: Engine) -> None:
    source_table, target_table = _table(engine.dsn), _table(engine.dsn)
    with psycopg.connect(engine.dsn, autocommit=True) as conn:
        conn.execute(f"insert into public.{source_table} values (1, 'new one'), (3, 'three')")
        conn.execute(f"insert into public.{target_table} values (1, 'old one'), (2, 'two')")
    source = textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: upsert, path: test/compat/upsert}}
        workflow:
          - step: merge
            tool:
              kind: transfer
              mode: upsert
              source: {{tool: postgres, auth: {{dsn: "{engine.dsn}"}},
                       query: "select id, label from public.{source_table}"}}
              target: {{tool: postgres, auth: {{dsn: "{engine.dsn}"}}, table: {target_table}}}
        """)
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert (row["result"]["mode"], row["result"]["rows_transferred"]) == ("upsert", 2)
    merged = engine.sql(f"select id, label from public.{target_table} order by id")
    assert merged == [{"id": 1, "label": "new one"}, {"id": 2, "label": "two"},
                      {"id": 3, "label": "three"}]


def test_artifact_get_of_a_missing_file_fails_naming_it(engine: Engine, tmp_path: Any) -> None:
    source = textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: artifactmissing, path: test/compat/artifactmissing}}
        workflow:
          - step: get
            tool: {{kind: artifact, action: get, uri: "file://{tmp_path}/nothing.json"}}
        """)
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert f"artifact not found: {tmp_path}/nothing.json" in row["error"]


def test_script_and_code_together_are_refused(engine: Engine) -> None:
    import pytest

    from noetl_pg.errors import PlaybookError

    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: scriptboth, path: test/compat/scriptboth}
        workflow:
          - step: py
            tool:
              kind: python
              code: "result = 1"
              script: {source: {type: inline}, code: "result = 2"}
        """)
    with pytest.raises(PlaybookError) as caught:
        engine.register(source)
    assert "`script` and `code` are both set" in str(caught.value)
    assert "step 'py'" in str(caught.value)


def test_policy_step_write_and_task_set_in_one_pipeline(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: pipewrites, path: test/compat/pipewrites}
        workflow:
          - step: work
            tool:
              - name: fetch
                kind: python
                code: "result = {'items': [5, 6]}"
                set: {ctx.first: "{{ output.data.items[0] }}"}
              - name: total
                kind: python
                input: {values: "{{ fetch.items }}"}
                code: "result = {'sum': sum(values)}"
                spec:
                  policy:
                    rules:
                      - else:
                          then:
                            do: continue
                            set: {step.checked: true, ctx.total: "{{ output.data.sum }}"}
            next: [{step: report}]
          - step: report
            tool:
              kind: python
              input:
                first: "{{ ctx.first }}"
                total: "{{ ctx.total }}"
                checked: "{{ work.checked }}"
              code: "result = [first, total, checked]"
        """)
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == [5, 11, True]
