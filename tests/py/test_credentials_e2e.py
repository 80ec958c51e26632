"""Credentials end to end through the CLI: `noetl credential add`, a playbook whose postgres
step uses `auth: NAME` and whose keychain reads stored credentials, then a search of the
whole database (pg_dump --data-only) and of every CLI output for the secret values."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

NOETL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "noetl")
PASSWORD = "pw-S3cr3t-9f1c2e"
TOKEN = "tok-Very-S3cret-77ab"
KEY = "e2e-encryption-key"




def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([NOETL, *args], env=env, capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


PLAYBOOK_OK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: cred_ok, path: e2e/cred_ok}
workflow:
  - step: query
    tool:
      kind: postgres
      auth: pg_e2e
      query: "select 41 + 1 as answer, current_user as who"
    next: {arcs: [{step: use}]}
  - step: use
    tool:
      kind: python
      input: {answer: "{{ query.rows[0].answer }}", bearer: "{{ keychain.api.header }}"}
      code: "result = {'answer': answer, 'has_bearer': bearer.startswith('Bearer ')}"
keychain:
  - {name: api, kind: bearer, credential: api_e2e}
"""

PLAYBOOK_LEAKY = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: cred_leaky, path: e2e/cred_leaky}
keychain:
  - {name: pg, kind: static, credential: pg_e2e}
  - {name: api, kind: bearer, credential: api_e2e}
workflow:
  - step: echo
    desc: A careless step returns the secrets it was given; the stored result is redacted.
    tool:
      kind: python
      input: {pw: "{{ keychain.pg.db_password }}", tok: "{{ keychain.api.token }}"}
      code: "result = {'pw': pw, 'tok': tok, 'dsn': 'postgresql://u:' + pw + '@h/db'}"
    set: {ctx.copied: "{{ echo.pw }}"}
    next: {arcs: [{step: boom}]}
  - step: boom
    desc: The server's error message quotes the password; the error is redacted.
    tool:
      kind: postgres
      auth: pg_e2e
      query: "select %(p)s::int"
      params: {p: "{{ keychain.pg.db_password }}"}
"""


def test_secrets_never_leave_the_credential_table(fresh_dsn: str, tmp_path: Path) -> None:
    parts = conninfo_to_dict(fresh_dsn)
    env = {**os.environ, "NOETL_DSN": fresh_dsn, "NOETL_CREDENTIAL_KEY": KEY}
    outputs: list[str] = []

    data = {"db_host": parts.get("host", "127.0.0.1"), "db_port": int(parts.get("port", 5432)),
            "db_user": parts.get("user", "postgres"), "db_password": PASSWORD,
            "db_name": parts["dbname"]}
    added = cli(env, "credential", "add", "pg_e2e", "--type", "postgres",
                "--data", json.dumps(data))
    outputs += [added.stdout, added.stderr]
    added = cli(env, "credential", "add", "api_e2e", "--type", "bearer",
                "--data", json.dumps({"token": TOKEN}))
    outputs += [added.stdout, added.stderr]
    listed = cli(env, "credential", "list")
    outputs += [listed.stdout, listed.stderr]

    ok_file = tmp_path / "ok.yaml"
    ok_file.write_text(textwrap.dedent(PLAYBOOK_OK))
    ok = cli(env, "-v", "run", str(ok_file), "--json")
    outputs += [ok.stdout, ok.stderr]
    ok_row = json.loads(ok.stdout)
    assert ok_row["status"] == "COMPLETED", ok_row["error"]
    assert ok_row["result"] == {"answer": 42, "has_bearer": True}

    leaky_file = tmp_path / "leaky.yaml"
    leaky_file.write_text(textwrap.dedent(PLAYBOOK_LEAKY))
    leaky = cli(env, "-v", "run", str(leaky_file), "--json", check=False)
    outputs += [leaky.stdout, leaky.stderr]
    assert leaky.returncode == 1
    leaky_row = json.loads(leaky.stdout)
    assert leaky_row["status"] == "FAILED"
    assert leaky_row["failed_step"] == "boom"
    assert "invalid input syntax for type integer" in leaky_row["error"]
    assert "***" in leaky_row["error"]

    for execution_id in (ok_row["execution_id"], leaky_row["execution_id"]):
        for command in (["status", str(execution_id)], ["status", str(execution_id), "--json"],
                        ["events", str(execution_id), "--json"]):
            shown = cli(env, *command)
            outputs += [shown.stdout, shown.stderr]
    assert any("'pw': '***'" in text or '"pw": "***"' in text for text in outputs)

    dump = subprocess.run(
        ["pg_dump", "--data-only", "--no-owner", "-d", fresh_dsn],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    assert "cred_leaky" in dump and "invalid input syntax" in dump
    for secret in (PASSWORD, TOKEN):
        assert secret not in dump
        for text in outputs:
            assert secret not in text
