"""Named credentials: which fields are secret, where they are stored, how tools read them.

A credential is a flat mapping (`db_host`, `db_password`, `token`, ...) stored in
`noetl.credential` through the SQL functions in `sql/functions/credential.sql`; its secret
fields are encrypted in this process (AES-256-GCM, noetl_pg.credential_crypto) under a key
the engine holds (`NOETL_CREDENTIAL_KEY` or `NOETL_CREDENTIAL_KEY_FILE`) and never written
anywhere in clear: the server sees only ciphertext and a key id. Tools receive a
`CredentialResolver` (`get(name)`); the worker passes error messages and logs through
`redact()` with the values the resolver has handed out (`secret_values()`), so a secret
echoed by a server or a driver never reaches an event.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from noetl_pg import db
from noetl_pg.credential_crypto import (
    KEY_ENV,
    KEY_FILE_ENV,
    CredentialKey,
    CredentialKeyError,
    as_key,
    key_from_env,
)
from noetl_pg.errors import DatabaseError, DatabaseUnavailable, NoetlError

if TYPE_CHECKING:
    from noetl_pg.tools.base import CredentialResolver

CREDENTIAL_KEY_ENV = KEY_ENV
CREDENTIAL_TYPES = ("postgres", "http", "s3", "bearer", "static", "generic")

# A field is secret when its lower-cased name is one of these or contains a marker.
SECRET_FIELD_NAMES = frozenset(
    {
        "password",
        "db_password",
        "token",
        "secret",
        "secret_access_key",
        "api_key",
        "apikey",
        "private_key",
        "authorization",
    }
)
SECRET_FIELD_MARKERS = ("password", "secret", "token")
REDACTED = "***"

class CredentialError(NoetlError):
    """A credential is missing, cannot be decrypted, or cannot be stored.

    The message names the credential and never contains the key or a field value.
    """


def is_secret_field(name: str) -> bool:
    """True when a field with this name must be encrypted and redacted."""
    lowered = name.lower()
    return lowered in SECRET_FIELD_NAMES or any(m in lowered for m in SECRET_FIELD_MARKERS)


def _holds_secret(value: Any) -> bool:
    """True when a nested mapping or list has a secret-named field at any depth."""
    if isinstance(value, Mapping):
        return any(is_secret_field(str(k)) or _holds_secret(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_secret(v) for v in value)
    return False


def split_secret_fields(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a credential's fields into (public, secret).

    A top-level field is secret when its name is secret (`is_secret_field`) or when it is a
    mapping or list holding a secret-named field anywhere inside (the whole field is then
    encrypted, so the shallow merge in `noetl.get_credential` restores it intact).
    """
    public: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for field_name, value in data.items():
        if is_secret_field(str(field_name)) or _holds_secret(value):
            secret[field_name] = value
        else:
            public[field_name] = value
    return public, secret


def secret_values(data: Mapping[str, Any]) -> list[str]:
    """The string values of a credential's secret fields (what `redact` must hide)."""
    _, secret = split_secret_fields(data)
    found: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                collect(item)
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item)
        elif value is not None and not isinstance(value, bool):
            found.append(str(value))

    collect(secret)
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of a secret value in `text` with `***`.

    Also replaces the URL-encoded form of each secret (passwords inside DSNs and URLs).
    Longer secrets are replaced first so one secret that contains another is hidden whole.
    Empty values are ignored.
    """
    variants: set[str] = set()
    for secret in secrets:
        if secret:
            variants.add(secret)
            variants.add(urllib.parse.quote(secret, safe=""))
            variants.add(urllib.parse.quote_plus(secret))
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, REDACTED)
    return text


def credential_key_from_env() -> CredentialKey | None:
    """The key from `NOETL_CREDENTIAL_KEY` or `NOETL_CREDENTIAL_KEY_FILE`, or None."""
    try:
        return key_from_env()
    except CredentialKeyError as exc:
        raise CredentialError(str(exc)) from None


def _key(key: CredentialKey | str | None) -> CredentialKey | None:
    try:
        return as_key(key)
    except CredentialKeyError as exc:
        raise CredentialError(str(exc)) from None


def _database_error(name: str, action: str, exc: DatabaseError) -> CredentialError:
    if isinstance(exc, DatabaseUnavailable):
        return CredentialError(f"credential '{name}' could not be {action}: database unavailable")
    return CredentialError(exc.message or f"credential '{name}' could not be {action}")


def decrypt_fields(name: str, row: Mapping[str, Any], key: CredentialKey | None) -> dict[str, Any]:
    """A stored credential row's fields: public_data merged with the decrypted secrets
    (secret wins on a clash), plus `credential_type`."""
    secret: dict[str, Any] = {}
    if row["secret_data"] is not None:
        if row["cipher"] == "pgp":
            raise CredentialError(
                f'credential "{name}" was encrypted by the server (pgcrypto, before 0012); '
                "re-encrypt it with `noetl credential rotate-key --from-pgcrypto`"
            )
        if key is None:
            raise CredentialError(
                f'credential "{name}" has secret fields but no decryption key was given '
                f"(set {CREDENTIAL_KEY_ENV} or {KEY_FILE_ENV})"
            )
        if row["key_id"] != key.key_id:
            raise CredentialError(
                f'credential "{name}" cannot be decrypted: wrong key (it is encrypted under '
                f"key id {row['key_id']}, the key given has id {key.key_id}; check "
                f"{CREDENTIAL_KEY_ENV} or run `noetl credential rotate-key`)"
            )
        try:
            secret = key.decrypt(name, row["secret_data"])
        except CredentialKeyError as exc:
            raise CredentialError(str(exc)) from None
    return {**row["public_data"], **secret, "credential_type": row["credential_type"]}


class DatabaseCredentialResolver:
    """Reads credentials from `noetl.credential` and decrypts them here, caching each for
    `ttl_seconds`.

    Thread-safe (tools run in worker threads). The key defaults to the environment's
    (`NOETL_CREDENTIAL_KEY` or `NOETL_CREDENTIAL_KEY_FILE`); a credential with no secret
    fields is readable without a key. When the database is gone, `get` raises
    `CredentialError` naming the credential (the cache still serves entries younger than
    the TTL).
    """

    def __init__(self, dsn: str, key: CredentialKey | str | None = None, *,
                 ttl_seconds: float = 60.0) -> None:
        self._dsn = dsn
        self._key = _key(key)
        self._ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._cache: dict[tuple[Any, ...], tuple[float, Mapping[str, Any]]] = {}
        self._secret_values: set[str] = set()

    def get(self, name: str) -> Mapping[str, Any]:
        """The decrypted fields of credential `name` (read-only mapping), read with
        `noetl.get_credential`: for the CLI and the engine's owner. A worker connected as
        noetl_worker may not call it; it reads through `for_command`."""
        return self._read(name, ("*",), "credential_get", {})

    def for_command(self, worker_id: str, command: Mapping[str, Any]) -> CommandCredentials:
        """A resolver for the one claimed `command` (a claim row: command_id, claim_gen,
        execution_id, step_name) held by `worker_id`: it reads with
        `noetl.command_credential_v1`, which refuses a credential the command does not
        reference, or any once the claim was taken back."""
        return CommandCredentials(self, worker_id, command)

    def _read(self, name: str, scope: tuple[Any, ...], query: str,
              params: Mapping[str, Any]) -> Mapping[str, Any]:
        """One credential, cached for the TTL under (name, scope): a command reuses what
        the database handed out for the same execution and step (a loop's iterations),
        never what it handed out for another."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get((name, *scope))
            if cached and now - cached[0] < self._ttl_seconds:
                return cached[1]
        try:
            with db.connection(self._dsn) as conn:
                row = db.fetch_one(conn, query, credential=name, **params)
        except DatabaseError as exc:
            raise _database_error(name, "read", exc) from None
        assert row is not None  # the functions raise when the credential is missing
        fields = MappingProxyType(decrypt_fields(name, row, self._key))
        with self._lock:
            self._cache[(name, *scope)] = (now, fields)
            self._secret_values.update(secret_values(fields))
        return fields

    def secret_values(self) -> list[str]:
        """Every secret value handed out so far (for `redact` on errors and logs)."""
        with self._lock:
            return sorted(self._secret_values)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


class CommandCredentials:
    """The credentials one claimed command may read (DatabaseCredentialResolver.for_command)."""

    def __init__(self, resolver: DatabaseCredentialResolver, worker_id: str,
                 command: Mapping[str, Any]) -> None:
        self._resolver = resolver
        self._params = {"worker_id": worker_id, "command_id": command["command_id"],
                        "claim_gen": command["claim_gen"]}
        self._scope = ("command", command["execution_id"], command["step_name"])

    def get(self, name: str) -> Mapping[str, Any]:
        return self._resolver._read(name, self._scope, "credential_for_command", self._params)

    def secret_values(self) -> list[str]:
        return self._resolver.secret_values()


def for_command(resolver: CredentialResolver | None, worker_id: str,
                command: Mapping[str, Any]) -> CredentialResolver | None:
    """`resolver` narrowed to one claimed command when it can be (a database resolver);
    other resolvers (an in-memory mapping) are returned as they are."""
    if isinstance(resolver, DatabaseCredentialResolver) and "claim_gen" in command:
        return resolver.for_command(worker_id, command)
    return resolver


class MappingCredentialResolver:
    """Credentials from an in-memory mapping (tests, and servers without pgcrypto)."""

    def __init__(self, credentials: Mapping[str, Mapping[str, Any]]) -> None:
        self._credentials = {name: MappingProxyType(dict(v)) for name, v in credentials.items()}

    def get(self, name: str) -> Mapping[str, Any]:
        try:
            return self._credentials[name]
        except KeyError:
            raise CredentialError(f'credential "{name}" not found') from None

    def secret_values(self) -> list[str]:
        return sorted({s for fields in self._credentials.values() for s in secret_values(fields)})


def put_credential(
    dsn: str,
    name: str,
    credential_type: str,
    data: Mapping[str, Any],
    key: CredentialKey | str | None = None,
) -> tuple[list[str], list[str]]:
    """Store (insert or replace) a credential; return (public field names, secret field names).

    Secret fields are encrypted here (AES-256-GCM) before they leave the process. The key
    defaults to the environment's; a credential with secret fields and no key raises
    `CredentialError` before touching the database.
    """
    if credential_type not in CREDENTIAL_TYPES:
        raise CredentialError(
            f"credential '{name}': type must be one of {', '.join(CREDENTIAL_TYPES)}"
        )
    public, secret = split_secret_fields(data)
    encryption_key = _key(key)
    if secret and encryption_key is None:
        raise CredentialError(
            f"credential '{name}' has secret fields ({', '.join(sorted(secret))}); "
            f"set {CREDENTIAL_KEY_ENV} or {KEY_FILE_ENV} to encrypt them"
        )
    sealed = encryption_key.encrypt(name, secret) if secret and encryption_key else None
    try:
        with db.connection(dsn) as conn:
            db.fetch_one(conn, "credential_put", credential=name, credential_type=credential_type,
                         public_data=public, secret_data=sealed,
                         key_id=encryption_key.key_id if sealed and encryption_key else None)
    except DatabaseError as exc:
        raise _database_error(name, "stored", exc) from None
    return sorted(public), sorted(secret)


def list_credentials(dsn: str) -> list[dict[str, Any]]:
    """Every credential's name, type, public fields, whether it has secrets and their key id."""
    with db.connection(dsn) as conn:
        return db.fetch_all(conn, "credential_list")


def rotate_key(
    dsn: str, old_key: CredentialKey | None, new_key: CredentialKey, *,
    from_pgcrypto: bool = False,
) -> list[str]:
    """Re-encrypt every secret under `new_key`, in one transaction; returns the names changed.

    Secrets under `old_key` are decrypted here and encrypted again. With `from_pgcrypto`,
    pre-0012 rows (pgcrypto) are opened with `old_key` by the server, the one time the old
    key is a statement parameter. A secret under any other key fails the whole rotation,
    naming the credential and its key id; nothing changes then.
    """
    changed: list[str] = []
    try:
        with db.connection(dsn) as conn, db.transaction(conn):
            for row in db.fetch_all(conn, "credential_secrets_for_update"):
                name = row["name"]
                if row["cipher"] == "aes-256-gcm" and row["key_id"] == new_key.key_id:
                    continue
                if row["cipher"] == "pgp":
                    if not from_pgcrypto or old_key is None:
                        raise CredentialError(
                            f'credential "{name}" was encrypted by pgcrypto; pass '
                            "--from-pgcrypto with the old key in " + CREDENTIAL_KEY_ENV)
                    opened = db.fetch_one(conn, "credential_decrypt_pgp", credential=name,
                                          key=old_key.legacy_text)
                    assert opened is not None
                    secret = dict(opened["secret"])
                elif old_key is not None and row["key_id"] == old_key.key_id:
                    try:
                        secret = old_key.decrypt(name, row["secret_data"])
                    except CredentialKeyError as exc:
                        raise CredentialError(str(exc)) from None
                else:
                    raise CredentialError(
                        f'credential "{name}" is encrypted under key id {row["key_id"]}, '
                        "neither the old nor the new key; nothing was changed")
                db.execute(conn, "credential_reencrypt", credential=name,
                           secret_data=new_key.encrypt(name, secret), key_id=new_key.key_id)
                changed.append(name)
    except DatabaseError as exc:
        raise _database_error("*", "re-encrypted", exc) from None
    return changed


def parse_credential_data(text: str) -> dict[str, Any]:
    """Parse a credential's fields from JSON text (a JSON object)."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise CredentialError("credential data must be a JSON object")
    return value
