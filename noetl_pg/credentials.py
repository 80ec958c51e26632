"""Named credentials: which fields are secret, where they are stored, how tools read them.

A credential is a flat mapping (`db_host`, `db_password`, `token`, ...) stored in
`noetl.credential` through the SQL functions in `sql/functions/credential.sql`; its secret
fields are encrypted with pgcrypto under a key the engine holds (`NOETL_CREDENTIAL_KEY`) and
never written anywhere in clear. Tools receive a `CredentialResolver` (`get(name)`); the
worker passes error messages and logs through `redact()` with the values the resolver has
handed out (`secret_values()`), so a secret echoed by a server or a driver never reaches an
event.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from noetl_pg.errors import NoetlError

CREDENTIAL_KEY_ENV = "NOETL_CREDENTIAL_KEY"
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

# The SQL API (sql/functions/credential.sql), called by name.
GET_CREDENTIAL = "select noetl.get_credential(%s, %s)"
PUT_CREDENTIAL = "select noetl.put_credential(%s, %s, %s, %s, %s)"
LIST_CREDENTIALS = (
    "select name, credential_type, public_data, has_secret, created_at, updated_at"
    " from noetl.list_credentials()"
)


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


def credential_key_from_env() -> str | None:
    """The encryption key from `NOETL_CREDENTIAL_KEY`, or None when unset or empty."""
    return os.environ.get(CREDENTIAL_KEY_ENV) or None


def _credential_error(name: str, exc: psycopg.Error) -> CredentialError:
    """Turn a database error from the credential functions into a CredentialError."""
    diag = exc.diag
    message = diag.message_primary or f"credential '{name}' could not be read"
    hint = f" ({diag.message_hint})" if diag.message_hint else ""
    if exc.sqlstate == "28P01" and not diag.message_hint:
        hint = f" (check {CREDENTIAL_KEY_ENV})"
    return CredentialError(f"{message}{hint}")


class DatabaseCredentialResolver:
    """Reads credentials from `noetl.credential`, caching each for `ttl_seconds`.

    Thread-safe (tools run in worker threads). The key defaults to `NOETL_CREDENTIAL_KEY`;
    a credential with no secret fields is readable without a key. When the database is
    gone, `get` raises `CredentialError` naming the credential (the cache still serves
    entries younger than the TTL).
    """

    def __init__(self, dsn: str, key: str | None = None, *, ttl_seconds: float = 60.0) -> None:
        self._dsn = dsn
        self._key = key if key is not None else credential_key_from_env()
        self._ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._secret_values: set[str] = set()

    def get(self, name: str) -> Mapping[str, Any]:
        """The decrypted fields of credential `name` (read-only mapping)."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(name)
            if cached and now - cached[0] < self._ttl_seconds:
                return cached[1]
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                row = conn.execute(GET_CREDENTIAL, (name, self._key)).fetchone()
        except psycopg.Error as exc:
            if exc.sqlstate is None:
                raise CredentialError(
                    f"credential '{name}' could not be read: database unavailable"
                ) from None
            raise _credential_error(name, exc) from None
        assert row is not None  # a scalar function call always returns one row
        fields = MappingProxyType(dict(row[0]))
        with self._lock:
            self._cache[name] = (now, fields)
            self._secret_values.update(secret_values(fields))
        return fields

    def secret_values(self) -> list[str]:
        """Every secret value handed out so far (for `redact` on errors and logs)."""
        with self._lock:
            return sorted(self._secret_values)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


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
    key: str | None = None,
) -> tuple[list[str], list[str]]:
    """Store (insert or replace) a credential; return (public field names, secret field names).

    The key defaults to `NOETL_CREDENTIAL_KEY`; a credential with secret fields and no key
    raises `CredentialError` before touching the database.
    """
    if credential_type not in CREDENTIAL_TYPES:
        raise CredentialError(
            f"credential '{name}': type must be one of {', '.join(CREDENTIAL_TYPES)}"
        )
    public, secret = split_secret_fields(data)
    key = key if key is not None else credential_key_from_env()
    if secret and not key:
        raise CredentialError(
            f"credential '{name}' has secret fields ({', '.join(sorted(secret))}); "
            f"set {CREDENTIAL_KEY_ENV} to encrypt them"
        )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                PUT_CREDENTIAL,
                (name, credential_type, Jsonb(public), Jsonb(secret) if secret else None, key),
            )
    except psycopg.Error as exc:
        if exc.sqlstate is None:
            raise CredentialError(
                f"credential '{name}' could not be stored: database unavailable"
            ) from None
        raise _credential_error(name, exc) from None
    return sorted(public), sorted(secret)


def list_credentials(dsn: str) -> list[dict[str, Any]]:
    """Every credential's name, type, public fields and whether it has secrets."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(LIST_CREDENTIALS)
        columns = [c.name for c in cursor.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def parse_credential_data(text: str) -> dict[str, Any]:
    """Parse a credential's fields from JSON text (a JSON object)."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise CredentialError("credential data must be a JSON object")
    return value
