"""Credentials: encrypted at rest, clear errors without the key, redaction, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from noetl_pg.cli.credential import credential_group
from noetl_pg.credential_crypto import CredentialKey, CredentialKeyError, key_from_env
from noetl_pg.credentials import (
    CredentialError,
    DatabaseCredentialResolver,
    MappingCredentialResolver,
    list_credentials,
    put_credential,
    redact,
    rotate_key,
    split_secret_fields,
)

KEY = "test-credential-key-42"
PASSWORD = "Pl41n-p@ss;word"


@pytest.fixture
def crypto_dsn(dsn: str) -> str:
    """The test database: secrets are encrypted client-side, so every server stores them
    (the embedded PostgreSQL has no pgcrypto)."""
    return dsn


def test_server_never_sees_key_or_plaintext(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every statement and parameter sent while storing and reading holds neither."""
    sent: list[str] = []
    original = psycopg.Cursor.execute

    def recording(self: psycopg.Cursor, query: Any, params: Any = None, **kwargs: Any) -> Any:
        sent.append(repr(query) + repr(params))
        return original(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recording)
    put_credential(dsn, "no_plain", "http", {"token": PASSWORD, "base": "x"}, key=KEY)
    assert DatabaseCredentialResolver(dsn, KEY).get("no_plain")["token"] == PASSWORD
    assert len(sent) >= 2
    for text in sent:
        assert PASSWORD not in text and KEY not in text


def test_key_file_and_key_id(dsn: str, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    from_file = key_from_env({"NOETL_CREDENTIAL_KEY_FILE": str(key_file)})
    assert from_file is not None and from_file.key_id == CredentialKey(KEY).key_id
    assert KEY not in from_file.key_id and KEY not in repr(from_file)
    with pytest.raises(CredentialKeyError, match="not both"):
        key_from_env({"NOETL_CREDENTIAL_KEY": KEY, "NOETL_CREDENTIAL_KEY_FILE": str(key_file)})
    with pytest.raises(CredentialKeyError, match="cannot read"):
        key_from_env({"NOETL_CREDENTIAL_KEY_FILE": str(tmp_path / "missing")})
    put_credential(dsn, "by_file", "http", {"token": PASSWORD}, key=from_file)
    listed = {row["name"]: row for row in list_credentials(dsn)}
    assert listed["by_file"]["key_id"] == from_file.key_id


def test_ciphertext_is_bound_to_its_name(dsn: str) -> None:
    put_credential(dsn, "bound_a", "http", {"token": "token-a"}, key=KEY)
    put_credential(dsn, "bound_b", "http", {"token": "token-b"}, key=KEY)
    with psycopg.connect(dsn) as conn:
        conn.execute("update noetl.credential set secret_data = (select secret_data from "
                     "noetl.credential where name = 'bound_a') where name = 'bound_b'")
    with pytest.raises(CredentialError, match=r"bound_b.*wrong key or corrupt data"):
        DatabaseCredentialResolver(dsn, KEY).get("bound_b")


def test_rotate_key(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = fresh_dsn
    new_key = "rotated-key-0123456789"
    put_credential(dsn, "rot_a", "http", {"token": "token-a"}, key=KEY)
    put_credential(dsn, "rot_public", "static", {"region": "eu"})
    monkeypatch.setenv("NOETL_CREDENTIAL_KEY", KEY)
    monkeypatch.setenv("NOETL_CREDENTIAL_NEW_KEY", new_key)
    result = CliRunner().invoke(credential_group(lambda: dsn), ["rotate-key"])
    assert result.exit_code == 0, result.output
    assert "rot_a" in result.output and KEY not in result.output
    assert new_key not in result.output
    assert DatabaseCredentialResolver(dsn, new_key).get("rot_a")["token"] == "token-a"
    with pytest.raises(CredentialError, match="wrong key"):
        DatabaseCredentialResolver(dsn, KEY).get("rot_a")
    # Run again: everything is already under the new key; a third key is refused whole.
    assert rotate_key(dsn, CredentialKey(KEY), CredentialKey(new_key)) == []
    with pytest.raises(CredentialError, match="neither the old nor the new key"):
        rotate_key(dsn, CredentialKey("unrelated-old-key"), CredentialKey("third-key-xyz"))
    assert DatabaseCredentialResolver(dsn, new_key).get("rot_a")["token"] == "token-a"


def test_pgcrypto_rows_are_refused_until_migrated(fresh_dsn: str) -> None:
    """A row written by the pre-0012 server-side encryption is refused with the way out;
    with pgcrypto on the server, rotate-key --from-pgcrypto re-encrypts it client-side."""
    dsn = fresh_dsn
    with psycopg.connect(dsn) as conn:
        has_pgcrypto = conn.execute(
            "select to_regprocedure('public.pgp_sym_encrypt(text,text)') is not null"
        ).fetchone()[0]
        blob = (conn.execute("select public.pgp_sym_encrypt(%s, %s)",
                             (json.dumps({"token": "old-token"}), KEY)).fetchone()[0]
                if has_pgcrypto else b"\xc3\x0d")
        conn.execute("insert into noetl.credential (name, credential_type, public_data, "
                      "secret_data, cipher) values ('legacy', 'http', '{}', %s, 'pgp') "
                      "on conflict (name) do update set secret_data = excluded.secret_data, "
                      "cipher = 'pgp', key_id = null", (blob,))
    with pytest.raises(CredentialError, match="rotate-key --from-pgcrypto"):
        DatabaseCredentialResolver(dsn, KEY).get("legacy")
    with pytest.raises(CredentialError, match="--from-pgcrypto"):
        rotate_key(dsn, CredentialKey(KEY), CredentialKey(KEY))
    if not has_pgcrypto:
        return
    assert "legacy" in rotate_key(dsn, CredentialKey(KEY), CredentialKey(KEY),
                                  from_pgcrypto=True)
    assert DatabaseCredentialResolver(dsn, KEY).get("legacy")["token"] == "old-token"


def test_split_secret_fields() -> None:
    public, secret = split_secret_fields(
        {
            "db_host": "h",
            "db_port": 5432,
            "db_password": "p",
            "api_key": "k",
            "client_secret": "s",
            "refresh_token": "t",
            "headers": {"Authorization": "Bearer x"},
            "access_key_id": "AKIA",
            "secret_access_key": "sk",
        }
    )
    assert public == {"db_host": "h", "db_port": 5432, "access_key_id": "AKIA"}
    assert set(secret) == {
        "db_password", "api_key", "client_secret", "refresh_token", "headers", "secret_access_key",
    }


def test_redact() -> None:
    text = "connect postgresql://u:Pl41n-p%40ss%3Bword@h/db failed; pw=Pl41n-p@ss;word; tok=abc"
    assert redact(text, [PASSWORD, "abc", ""]) == (
        "connect postgresql://u:***@h/db failed; pw=***; tok=***"
    )
    assert redact("nothing here", []) == "nothing here"


def test_encrypted_at_rest_and_read_back(crypto_dsn: str) -> None:
    put_credential(
        crypto_dsn, "pg_main", "postgres",
        {"db_host": "db.local", "db_user": "etl", "db_password": PASSWORD}, key=KEY,
    )
    with psycopg.connect(crypto_dsn) as conn:
        public, secret = conn.execute(
            "select public_data, secret_data from noetl.credential where name = 'pg_main'"
        ).fetchone()
    assert public == {"db_host": "db.local", "db_user": "etl"}
    assert PASSWORD.encode() not in bytes(secret)
    assert b"db_password" not in bytes(secret)
    resolver = DatabaseCredentialResolver(crypto_dsn, KEY)
    fields = resolver.get("pg_main")
    assert fields["db_password"] == PASSWORD
    assert fields["db_host"] == "db.local"
    assert fields["credential_type"] == "postgres"
    assert resolver.secret_values() == [PASSWORD]


def test_wrong_key_is_clear_and_does_not_leak(crypto_dsn: str) -> None:
    put_credential(crypto_dsn, "pg_wrong", "postgres", {"db_password": PASSWORD}, key=KEY)
    with pytest.raises(CredentialError) as caught:
        DatabaseCredentialResolver(crypto_dsn, "not-the-key").get("pg_wrong")
    message = str(caught.value)
    assert "pg_wrong" in message and "wrong key" in message
    assert "not-the-key" not in message and KEY not in message and PASSWORD not in message


def test_missing_key_and_missing_credential(
    crypto_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOETL_CREDENTIAL_KEY", raising=False)
    put_credential(crypto_dsn, "pg_nokey", "postgres", {"db_password": PASSWORD}, key=KEY)
    with pytest.raises(CredentialError, match="NOETL_CREDENTIAL_KEY"):
        DatabaseCredentialResolver(crypto_dsn).get("pg_nokey")
    with pytest.raises(CredentialError, match="NOETL_CREDENTIAL_KEY"):
        put_credential(crypto_dsn, "needs_key", "http", {"token": "t"})
    with pytest.raises(CredentialError, match='"does_not_exist" not found'):
        DatabaseCredentialResolver(crypto_dsn, KEY).get("does_not_exist")
    # No secret fields: readable without a key.
    put_credential(crypto_dsn, "public_only", "static", {"region": "eu"})
    assert DatabaseCredentialResolver(crypto_dsn).get("public_only")["region"] == "eu"


def test_resolver_caches_and_key_from_env(crypto_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_KEY", KEY)
    put_credential(crypto_dsn, "api_cached", "http", {"token": "t-1"})
    resolver = DatabaseCredentialResolver(crypto_dsn)
    assert resolver.get("api_cached")["token"] == "t-1"
    put_credential(crypto_dsn, "api_cached", "http", {"token": "t-2"})
    assert resolver.get("api_cached")["token"] == "t-1"
    resolver.clear_cache()
    assert resolver.get("api_cached")["token"] == "t-2"


def test_list_shows_no_secrets(crypto_dsn: str) -> None:
    fields = {"token": PASSWORD, "base_url": "x"}
    put_credential(crypto_dsn, "api_listed", "bearer", fields, key=KEY)
    listed = {row["name"]: row for row in list_credentials(crypto_dsn)}
    assert listed["api_listed"]["public_data"] == {"base_url": "x"}
    assert listed["api_listed"]["has_secret"] is True
    assert PASSWORD not in json.dumps(list_credentials(crypto_dsn), default=str)


def test_mapping_resolver() -> None:
    resolver = MappingCredentialResolver({"a": {"token": "t"}})
    assert resolver.get("a")["token"] == "t"
    assert resolver.secret_values() == ["t"]
    with pytest.raises(CredentialError, match='"b" not found'):
        resolver.get("b")


def test_cli_add_and_list(crypto_dsn: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_KEY", KEY)
    group = credential_group(lambda: crypto_dsn)
    runner = CliRunner()
    added = runner.invoke(
        group,
        ["add", "cli_pg", "--type", "postgres", "--data",
         json.dumps({"db_host": "h", "db_password": PASSWORD})],
    )
    assert added.exit_code == 0, added.output
    assert "db_password" in added.output and PASSWORD not in added.output
    yaml_file = tmp_path / "api.yaml"
    yaml_file.write_text(f"token: {PASSWORD}\nbase_url: http://x\n")
    from_file = runner.invoke(group, ["add", "cli_api", "--type", "http", "--file", str(yaml_file)])
    assert from_file.exit_code == 0, from_file.output
    listed = runner.invoke(group, ["list"], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    assert "cli_pg" in listed.output and "cli_api" in listed.output
    assert PASSWORD not in listed.output
    bad = runner.invoke(group, ["add", "x", "--type", "http", "--data", '{"token": "abc'])
    assert bad.exit_code != 0 and "abc" not in bad.output
    both = runner.invoke(group, ["add", "x", "--type", "http"])
    assert both.exit_code != 0
