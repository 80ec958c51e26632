"""Least-privilege roles: each role connects (trust auth, `role=` at connection start) and
can do its job and nothing more. Roles are cluster-wide and may already exist (other test
databases on the same server): migrations create them idempotently."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from engine_harness import Engine
from psycopg.conninfo import make_conninfo

from noetl_pg.credentials import DatabaseCredentialResolver, put_credential
from noetl_pg.migrate import migrate

PLAYBOOK = {
    "metadata": {"name": "roles", "path": "security/roles"},
    "workload": {"pg_auth": "roles_pg"},
    "workflow": [
        {"step": "first", "tool": {"kind": "python", "code": "result = {'n': 1}"},
         "next": {"arcs": [{"step": "query"}]}},
        {"step": "query", "tool": {"kind": "postgres", "auth": "{{ pg_auth }}",
                                   "command": "select 41 + 1 as answer"}},
    ],
}


def as_role(dsn: str, role: str) -> str:
    """A DSN whose sessions start as `role` (the login user must be a member of it)."""
    return make_conninfo(dsn, options=f"-c role={role}")


@contextmanager
def connected(dsn: str, role: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(as_role(dsn, role), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == (role,)
        yield conn


def refused(conn: psycopg.Connection, statement: str, *params: object) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params or None)


def test_roles_exist_and_migrating_again_is_idempotent(fresh_dsn: str) -> None:
    migrate(fresh_dsn)  # second run: roles, owners and grants already in place
    with psycopg.connect(fresh_dsn) as conn:
        roles = {row[0] for row in conn.execute(
            "select rolname from pg_roles where rolname like 'noetl\\_%'")}
        owner = conn.execute("select nspowner::regrole::text from pg_namespace"
                             " where nspname = 'noetl'").fetchone()[0]
        definer, path = conn.execute(
            "select prosecdef, proconfig from pg_proc where oid ="
            " 'noetl.finish_and_claim'::regproc").fetchone()
    assert {"noetl_admin", "noetl_worker", "noetl_operator", "noetl_reader"} <= roles
    assert owner == "noetl_admin"
    assert definer and path == ["search_path=pg_catalog, noetl"]


def test_reader_reads_status_never_secrets_and_changes_nothing(fresh_engine: Engine) -> None:
    dsn = fresh_engine.dsn
    put_credential(dsn, "secret_one", "http", {"token": "tok-123456"}, key="k-roles-1")
    path = fresh_engine.register(json.dumps({
        "metadata": {"path": "security/simple"},
        "workflow": [{"step": "s", "tool": {"kind": "noop"}}]}))
    execution_id = fresh_engine.start(path)
    with connected(dsn, "noetl_reader") as conn:
        assert conn.execute("select path from noetl.execution where execution_id = %s",
                            (execution_id,)).fetchone() == (path,)
        assert conn.execute("select count(*) from noetl.event").fetchone()[0] > 0
        refused(conn, "select * from noetl.credential")
        refused(conn, "select * from noetl.get_credential('secret_one')")
        refused(conn, "select * from noetl.list_credentials()")
        refused(conn, "select noetl.start_execution(%s, '{}')", path)
        refused(conn, "select noetl.cancel_execution(%s, 'no')", execution_id)
        refused(conn, "update noetl.engine_limit set value = 1000000000")
        refused(conn, "delete from noetl.event")
        refused(conn, "select * from noetl.claim_commands('w', null, 10)")


def test_operator_starts_and_cancels_but_cannot_register_or_work(fresh_engine: Engine) -> None:
    dsn = fresh_engine.dsn
    path = fresh_engine.register(json.dumps({
        "metadata": {"path": "security/op"},
        "workflow": [{"step": "s", "tool": {"kind": "noop"}}]}))
    with connected(dsn, "noetl_operator") as conn:
        execution_id = conn.execute("select noetl.start_execution(%s, '{}')",
                                    (path,)).fetchone()[0]
        conn.execute("select noetl.cancel_execution(%s, 'by operator')", (execution_id,))
        assert conn.execute("select status from noetl.execution where execution_id = %s",
                            (execution_id,)).fetchone() == ("CANCELLED",)
        refused(conn, "select * from noetl.register_playbook('x', 'y', '{}'::jsonb)")
        refused(conn, "select noetl.register_worker('w', 'h', 1, 1, null)")
        refused(conn, "update noetl.engine_limit set value = 1 where name = 'max_commands'")
        refused(conn, "select * from noetl.credential")
        refused(conn, "insert into noetl.event (execution_id, event_type) values (1, 'x')")


def test_worker_runs_a_playbook_with_only_the_worker_api(fresh_engine: Engine) -> None:
    dsn = fresh_engine.dsn
    key = "k-roles-worker"
    put_credential(dsn, "roles_pg", "postgres", {"dsn": dsn, "password": "pw-unused-1"},
                   key=key)
    put_credential(dsn, "unrelated", "http", {"token": "tok-unrelated-1"}, key=key)
    worker_dsn = as_role(dsn, "noetl_worker")
    # The whole worker (claims, results, events, credentials) connects as noetl_worker.
    worker_engine = Engine(worker_dsn)
    with worker_engine.worker(slots=2,
                              credentials=DatabaseCredentialResolver(worker_dsn, key)):
        execution_id = fresh_engine.start(fresh_engine.register(json.dumps(PLAYBOOK)))
        row = fresh_engine.wait(execution_id, timeout=120)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["rows"] == [{"answer": 42}]
    with connected(dsn, "noetl_worker") as conn:
        # Credentials only through command_credential_v1, for a command it holds.
        refused(conn, "select count(*) from noetl.credential")
        refused(conn, "select * from noetl.get_credential('roles_pg')")
        refused(conn, "select noetl.start_execution('security/roles', '{}')")
        refused(conn, "select * from noetl.register_playbook('x', 'y', '{}'::jsonb)")
        refused(conn, "update noetl.engine_limit set value = 1 where name = 'max_commands'")
        refused(conn, "update noetl.command set status = 'done'")
        refused(conn, "delete from noetl.event")
        refused(conn, "select * from noetl.api_token")


def _claim(conn: psycopg.Connection, worker_id: str) -> tuple[int, int]:
    row = conn.execute("select command_id, claim_gen from noetl.claim_commands(%s, null, 1)",
                       (worker_id,)).fetchone()
    assert row is not None
    return row


def _credential(conn: psycopg.Connection, worker_id: str, command: tuple[int, int],
                name: str) -> dict:
    row = conn.execute(
        "select credential_type, public_data from noetl.command_credential_v1(%s, %s, %s, %s)",
        (worker_id, *command, name)).fetchone()
    return {"credential_type": row[0], "public_data": row[1]}


def test_worker_reads_only_the_credentials_of_a_command_it_holds(fresh_engine: Engine) -> None:
    dsn = fresh_engine.dsn
    put_credential(dsn, "cred_a", "http", {"url": "http://a", "token": "tok-a-123456"},
                   key="k-roles-scope")
    put_credential(dsn, "cred_b", "http", {"url": "http://b", "token": "tok-b-123456"},
                   key="k-roles-scope")
    put_credential(dsn, "cred_unused", "http", {"url": "http://u"})
    path = fresh_engine.register(json.dumps({
        "metadata": {"path": "security/scoped"},
        "workload": {"api": "cred_a"},
        "workflow": [{"step": "call", "tool": {"kind": "http", "auth": "{{ api }}",
                                               "url": "http://127.0.0.1:9/"}}]}))
    execution_a = fresh_engine.start(path)
    with connected(dsn, "noetl_worker") as conn:
        command_a = _claim(conn, "w-a")
        execution_b = fresh_engine.start(path, {"api": "cred_b"})
        command_b = _claim(conn, "w-b")
        assert fresh_engine.sql("select execution_id from noetl.command where command_id = %s",
                                command_b[0])[0]["execution_id"] == execution_b != execution_a
        # Its own command's credential (named by the workload the step renders from).
        assert _credential(conn, "w-a", command_a, "cred_a")["public_data"] == {
            "url": "http://a"}
        assert _credential(conn, "w-b", command_b, "cred_b")["public_data"] == {
            "url": "http://b"}
        # Not another execution's (B is claimed right now), nor one nobody references.
        for name in ("cred_b", "cred_unused"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not referenced"):
                _credential(conn, "w-a", command_a, name)
        # Not through a command it does not hold, whatever claim generation it names.
        for claim_gen in (command_b[1], command_b[1] + 1):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not held"):
                _credential(conn, "w-a", (command_b[0], claim_gen), "cred_b")
        refused(conn, "select * from noetl.credential where name = 'cred_b'")
        refused(conn, "select * from noetl.get_credential('cred_b')")
        # Reaped: the old claim reads nothing, even once the same worker claims it again
        # at the same attempt; the new claim does.
        fresh_engine.sql("select noetl.reap_command(%s, 'test: worker lost')", command_a[0])
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not held"):
            _credential(conn, "w-a", command_a, "cred_a")
        again = _claim(conn, "w-a")
        assert again[0] == command_a[0] and again[1] == command_a[1] + 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not held"):
            _credential(conn, "w-a", command_a, "cred_a")
        assert _credential(conn, "w-a", again, "cred_a")["credential_type"] == "http"


def test_db_roles_command(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from noetl_pg.cli import main

    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("grant insert on noetl.event to noetl_reader")
        conn.execute("alter function noetl.claim_commands(text, text[], integer)"
                     " security invoker")
    monkeypatch.setenv("NOETL_DSN", fresh_dsn)
    result = CliRunner().invoke(main, ["db", "roles"])
    assert result.exit_code == 0, result.output
    assert "noetl_admin" in result.output and "noetl_reader" in result.output
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("select prosecdef from pg_proc where oid ="
                            " 'noetl.claim_commands'::regproc").fetchone() == (True,)
        # Re-applying does not revoke an extra grant a DBA made; it restores what it owns.
        assert conn.execute("select has_table_privilege('noetl_reader', 'noetl.event',"
                            " 'select')").fetchone() == (True,)
