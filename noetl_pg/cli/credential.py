"""`noetl credential add|list|get|delete`: manage named credentials; a secret is printed
only by `get --reveal`.

The encryption key comes from `NOETL_CREDENTIAL_KEY` or the file `NOETL_CREDENTIAL_KEY_FILE`
names (never a command-line option, so it does not show up in `ps` or shell history);
encryption happens in this process, the server only stores ciphertext. The CLI entry point
supplies the DSN.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

from noetl_pg import db
from noetl_pg.cli.common import dumps, emit, fail, json_option, wants_json
from noetl_pg.credential_crypto import (
    NEW_KEY_ENV,
    NEW_KEY_FILE_ENV,
    CredentialKeyError,
    key_from_env,
)
from noetl_pg.credentials import (
    CREDENTIAL_TYPES,
    REDACTED,
    CredentialError,
    DatabaseCredentialResolver,
    list_credentials,
    parse_credential_data,
    put_credential,
    rotate_key,
)
from noetl_pg.errors import DatabaseUnavailable


def _read_data(data: str | None, file: Path | None) -> dict[str, Any]:
    if (data is None) == (file is None):
        raise click.UsageError("give exactly one of --data JSON or --file PATH")
    try:
        if file is not None:
            text = file.read_text()
            if file.suffix in (".yaml", ".yml"):
                value = yaml.safe_load(text)
                if not isinstance(value, dict):
                    raise CredentialError(f"{file}: credential data must be a mapping")
                return value
            return parse_credential_data(text)
        assert data is not None
        return parse_credential_data(data)
    except json.JSONDecodeError as exc:
        # Parser messages may quote the input, which may hold a secret: say only where.
        raise click.BadParameter(
            f"credential data is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    except yaml.YAMLError:
        raise click.BadParameter("credential file is not valid YAML") from None
    except CredentialError as exc:
        raise click.BadParameter(str(exc)) from None


def credential_group(get_dsn: Callable[[], str]) -> click.Group:
    """The `credential` command group; `get_dsn` is called when a command needs the database."""

    @click.group("credential")
    def credential() -> None:
        """Store and list named credentials (secret fields encrypted at rest)."""

    @credential.command("add")
    @click.argument("name")
    @click.option(
        "--type", "credential_type", required=True, type=click.Choice(CREDENTIAL_TYPES),
        help="What the credential is for.",
    )
    @click.option("--data", help="The fields as a JSON object.")
    @click.option(
        "--file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A JSON or YAML file with the fields.",
    )
    @json_option
    def add(name: str, credential_type: str, data: str | None, file: Path | None,
            as_json: bool) -> None:
        """Add or replace credential NAME."""
        fields = _read_data(data, file)
        try:
            public, secret = put_credential(get_dsn(), name, credential_type, fields)
        except CredentialError as exc:
            raise click.ClickException(str(exc)) from None
        except DatabaseUnavailable:
            raise click.ClickException("cannot reach the database") from None
        emit({"name": name, "type": credential_type, "public_fields": list(public),
              "encrypted_fields": list(secret)}, as_json, lambda: click.echo(
            f"stored credential {name} ({credential_type}); "
            f"public fields: {', '.join(public) or '-'}; "
            f"encrypted fields: {', '.join(secret) or '-'}"
        ))

    @credential.command("rotate-key")
    @click.option("--from-pgcrypto", is_flag=True,
                  help="Also re-encrypt credentials stored by pgcrypto before 0012 (the old "
                       "key is sent to the server once to open them).")
    def rotate(from_pgcrypto: bool) -> None:
        """Re-encrypt every secret under the new key.

        The old key comes from NOETL_CREDENTIAL_KEY (or _FILE), the new one from
        NOETL_CREDENTIAL_NEW_KEY (or NOETL_CREDENTIAL_NEW_KEY_FILE); afterwards give the
        new key to workers as NOETL_CREDENTIAL_KEY. All credentials change in one
        transaction, or none does.
        """
        try:
            old_key = key_from_env()
            new_key = key_from_env(variable=NEW_KEY_ENV, file_variable=NEW_KEY_FILE_ENV)
            if new_key is None:
                raise CredentialError(f"set {NEW_KEY_ENV} or {NEW_KEY_FILE_ENV} to the new key")
            changed = rotate_key(get_dsn(), old_key, new_key, from_pgcrypto=from_pgcrypto)
        except (CredentialError, CredentialKeyError) as exc:
            raise click.ClickException(str(exc)) from None
        except DatabaseUnavailable:
            raise click.ClickException("cannot reach the database") from None
        click.echo(f"re-encrypted {len(changed)} credential(s) under key id {new_key.key_id}"
                   + (f": {', '.join(changed)}" if changed else ""))

    @credential.command("list")
    @json_option
    def list_(as_json: bool) -> None:
        """List credentials with their non-secret fields."""
        try:
            rows = list_credentials(get_dsn())
        except DatabaseUnavailable:
            raise click.ClickException("cannot reach the database") from None
        if wants_json(as_json):
            click.echo(dumps(rows))
            return
        table = Table(title="credentials")
        for column in ("name", "type", "public fields", "secret", "key id", "updated"):
            table.add_column(column)
        for row in rows:
            table.add_row(
                row["name"],
                row["credential_type"],
                json.dumps(row["public_data"], sort_keys=True),
                "encrypted" if row["has_secret"] else "-",
                row["key_id"] or "-",
                row["updated_at"].isoformat(timespec="seconds"),
            )
        Console().print(table)

    @credential.command("get")
    @click.argument("name")
    @click.option("--reveal", is_flag=True,
                  help="Decrypt and print the secret fields (needs NOETL_CREDENTIAL_KEY).")
    @json_option
    def get(name: str, reveal: bool, as_json: bool) -> None:
        """Show credential NAME: public fields, secret ones as *** unless --reveal."""
        dsn = get_dsn()
        listed = [row for row in list_credentials(dsn) if row["name"] == name]
        if not listed:
            fail(f"credential '{name}' does not exist", as_json=as_json)
        row = listed[0]
        fields: dict[str, Any] = dict(row["public_data"])
        if reveal:
            try:
                fields = dict(DatabaseCredentialResolver(dsn, ttl_seconds=0).get(name))
            except CredentialError as exc:
                fail(str(exc), 1, as_json=as_json)
        elif row["has_secret"]:
            fields["(secret fields)"] = REDACTED
        value = {"name": name, "type": row["credential_type"], "fields": fields,
                 "revealed": reveal, "updated_at": row["updated_at"]}
        emit(value, as_json, lambda: click.echo(
            f"{name} ({row['credential_type']}): {json.dumps(fields, sort_keys=True)}"))

    @credential.command("delete")
    @click.argument("name")
    @json_option
    def delete(name: str, as_json: bool) -> None:
        """Delete credential NAME (exit 2 when there is none)."""
        with db.connection(get_dsn()) as conn:
            deleted = db.fetch_one(conn, "credential_delete", credential_name=name)
        if deleted is None:
            fail(f"credential '{name}' does not exist", as_json=as_json)
        emit({"deleted": name}, as_json, lambda: click.echo(f"deleted credential {name}"))

    return credential
