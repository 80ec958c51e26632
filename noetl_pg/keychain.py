"""The playbook's `keychain` block and the worker's secret redactor.

A playbook may declare named secrets that templates read as `{{ keychain.<name>.<field> }}`:

```yaml
keychain:
  - {name: api, kind: bearer, credential: api_token}   # token from a stored credential
  - {name: api2, kind: bearer, token: "{{ api_token }}"}
  - {name: cfg, kind: static, data: {user: etl, region: eu}}
  - {name: db, kind: static, credential: pg_main}      # every field of a credential
```

`bearer` yields `{type: bearer, token, header}` (header is `Bearer <token>`; the token is
the credential's `token`, `bearer_token` or `access_token` field). `static` yields its
`data` mapping (templates rendered with the workload) or the credential's fields.

Entries resolve lazily, on first use in a command, through the worker's
`CredentialResolver`, so a step that never reads the keychain never reads a credential.
A bearer's token and header, and every secret-named field of a static entry (password,
token, secret, ... as in noetl_pg.credentials), are registered with the worker's
`SecretRedactor`, which hides them (and every credential secret the resolver has handed
out) in errors, results, ctx writes and child payloads before they reach the database, and
in log records. Values shorter than 4 characters are not hidden.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from noetl_pg.credentials import REDACTED, redact, secret_values
from noetl_pg.errors import NoetlError
from noetl_pg.templating import render_value
from noetl_pg.tools.base import CredentialResolver

KEYCHAIN_KINDS = ("static", "bearer")
# Shorter values are not treated as secrets: replacing "1" or "eu" everywhere would
# corrupt results while protecting nothing.
MIN_SECRET_LENGTH = 4


class KeychainError(NoetlError):
    """A keychain entry is malformed or its credential cannot be read (no value shown)."""


class SecretRedactor:
    """Hides known secret values in text and in JSON-like values. Thread-safe.

    Known secrets are those added with `add` (keychain values) plus the resolver's
    `secret_values()` (credential secrets handed out so far).
    """

    def __init__(self, resolver: Any = None) -> None:
        self._resolver = resolver
        self._lock = threading.Lock()
        self._extra: set[str] = set()

    def add(self, values: Iterable[str]) -> None:
        fresh = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH}
        if fresh - self._extra:
            with self._lock:
                self._extra |= fresh

    def secrets(self) -> list[str]:
        source = getattr(self._resolver, "secret_values", None)
        handed = source() if callable(source) else []
        if not handed and not self._extra:
            return []  # no secret known yet: every outcome asks, skip building the set
        found = set(self._extra)
        found.update(v for v in handed if len(v) >= MIN_SECRET_LENGTH)
        return sorted(found)

    def __call__(self, text: str) -> str:
        secrets = self.secrets()
        return redact(text, secrets) if secrets and text else text

    def redact_value(self, value: Any) -> Any:
        """`value` with every string (keys included) redacted; the same object if clean."""
        secrets = self.secrets()
        if not secrets:
            return value
        return _redact_tree(value, secrets)


def _redact_tree(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {_redact_tree(k, secrets): _redact_tree(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_tree(item, secrets) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's final message with a SecretRedactor."""

    def __init__(self, redactor: SecretRedactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        cleaned = self._redactor(message)
        record.msg, record.args = cleaned, None
        return True


class Keychain(Mapping[str, Any]):
    """`keychain` in templates: entries resolved on first access (see the module docstring)."""

    def __init__(
        self,
        entries: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        credentials: CredentialResolver | None,
        scope: Mapping[str, Any],
        redactor: SecretRedactor | None,
    ) -> None:
        self._entries = {str(e.get("name")): e for e in entries if isinstance(e, Mapping)}
        self._credentials = credentials
        self._scope = scope
        self._redactor = redactor
        self._resolved: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._resolved:
            entry = self._entries[name]  # KeyError: templates report an undefined name
            value = self._resolve(name, entry)
            if self._redactor is not None:
                self._redactor.add(_secret_strings(value))
            self._resolved[name] = value
        return self._resolved[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _credential(self, name: str, entry: Mapping[str, Any]) -> Mapping[str, Any]:
        credential = entry.get("credential") or entry.get("auth")
        if not isinstance(credential, str):
            raise KeychainError(f"keychain '{name}': `credential` must be a credential name")
        if self._credentials is None:
            raise KeychainError(f"keychain '{name}': no credential resolver is configured")
        return self._credentials.get(credential)

    def _resolve(self, name: str, entry: Mapping[str, Any]) -> Any:
        kind = str(entry.get("kind") or entry.get("type") or "static")
        if kind not in KEYCHAIN_KINDS:
            raise KeychainError(
                f"keychain '{name}': kind must be one of {', '.join(KEYCHAIN_KINDS)}, got {kind!r}"
            )
        if kind == "bearer":
            if "token" in entry:
                token = render_value(entry["token"], self._scope)
            else:
                fields = self._credential(name, entry)
                token = fields.get("token") or fields.get("bearer_token") \
                    or fields.get("access_token")
            if not token:
                raise KeychainError(f"keychain '{name}': bearer entry has no token")
            return {"type": "bearer", "token": str(token), "header": f"Bearer {token}"}
        if "data" in entry:
            data = render_value(entry["data"], self._scope)
            if not isinstance(data, Mapping):
                raise KeychainError(f"keychain '{name}': static `data` must be a mapping")
            return dict(data)
        return dict(self._credential(name, entry))


def _secret_strings(value: Mapping[str, Any]) -> list[str]:
    """The values to hide: a bearer's token and header, and every secret-named field
    (`is_secret_field`: password, token, secret, ...) of a static entry."""
    if value.get("type") == "bearer" and "header" in value:
        return [str(value["token"]), str(value["header"])]
    return secret_values(value)


__all__ = ["REDACTED", "Keychain", "KeychainError", "RedactingFilter", "SecretRedactor"]
