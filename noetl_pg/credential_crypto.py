"""Client-side encryption of credential secrets: AES-256-GCM in Python, never in the server.

The key is text from `NOETL_CREDENTIAL_KEY` or from the file named by
`NOETL_CREDENTIAL_KEY_FILE` (e.g. `openssl rand -base64 32 > key`; surrounding whitespace
is ignored). HKDF-SHA256 turns it into the 32-byte AES key, so any high-entropy text
works; a short passphrase is only as strong as itself. The key's id (16 hex digits, a
hash of the derived key, not of the text) is stored next to each ciphertext so a wrong or
old key is named as such, and `noetl credential rotate-key` knows what to re-encrypt.

Stored form: VERSION (1 byte) + nonce (12 random bytes) + ciphertext with its 16-byte tag.
The credential's name is authenticated data: a ciphertext copied onto another credential's
row does not decrypt. Neither the key nor a plaintext is ever a statement parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from noetl_pg import settings
from noetl_pg.errors import NoetlError

KEY_ENV = "NOETL_CREDENTIAL_KEY"
KEY_FILE_ENV = "NOETL_CREDENTIAL_KEY_FILE"
NEW_KEY_ENV = "NOETL_CREDENTIAL_NEW_KEY"
NEW_KEY_FILE_ENV = "NOETL_CREDENTIAL_NEW_KEY_FILE"
CIPHER = "aes-256-gcm"
VERSION = b"\x01"
NONCE_BYTES = 12
_HKDF_SALT = b"noetl-pg credential key v1"


class CredentialKeyError(NoetlError):
    """The key is missing, unreadable, or does not open a ciphertext (never shows the key)."""


class CredentialKey:
    """One encryption key: `key_id`, `encrypt(name, fields)`, `decrypt(name, blob)`."""

    def __init__(self, text: str) -> None:
        text = text.strip()
        if not text:
            raise CredentialKeyError("the credential key is empty")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT,
                       info=b"aes-256-gcm").derive(text.encode())
        self._aead = AESGCM(derived)
        self.key_id = hashlib.sha256(b"noetl-pg key id\x00" + derived).hexdigest()[:16]
        # Kept only to open credentials pgcrypto encrypted before 0012 (rotate-key
        # --from-pgcrypto); never used otherwise.
        self.legacy_text = text

    def __repr__(self) -> str:
        return f"CredentialKey(key_id={self.key_id!r})"

    def encrypt(self, name: str, fields: Mapping[str, Any]) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        plaintext = json.dumps(dict(fields), separators=(",", ":")).encode()
        return VERSION + nonce + self._aead.encrypt(nonce, plaintext, name.encode())

    def decrypt(self, name: str, blob: bytes) -> dict[str, Any]:
        blob = bytes(blob)
        if blob[:1] != VERSION or len(blob) < 1 + NONCE_BYTES + 16:
            raise CredentialKeyError(f'credential "{name}" has an unknown ciphertext format')
        nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            plaintext = self._aead.decrypt(nonce, sealed, name.encode())
        except InvalidTag:
            raise CredentialKeyError(
                f'credential "{name}" cannot be decrypted: wrong key or corrupt data'
            ) from None
        value = json.loads(plaintext)
        if not isinstance(value, dict):
            raise CredentialKeyError(f'credential "{name}" decrypts to something else than '
                                     "an object: corrupt data")
        return value


def key_from_env(
    env: Mapping[str, str] | None = None, *, variable: str = KEY_ENV,
    file_variable: str = KEY_FILE_ENV,
) -> CredentialKey | None:
    """The key from `variable` or the file `file_variable` names; None when neither is set."""
    configured = settings.current() if env is None else settings.from_mapping(env)
    text = getattr(configured, settings.field_name(variable)) or ""
    path = getattr(configured, settings.field_name(file_variable)) or ""
    if text and path:
        raise CredentialKeyError(f"set {variable} or {file_variable}, not both")
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise CredentialKeyError(
                f"cannot read the key file named by {file_variable}: {exc.strerror}"
            ) from None
        if not text.strip():
            raise CredentialKeyError(f"the key file named by {file_variable} is empty")
    return CredentialKey(text) if text.strip() else None


def as_key(key: CredentialKey | str | None) -> CredentialKey | None:
    """A CredentialKey from a key, its text, or None (the environment's key)."""
    if isinstance(key, CredentialKey):
        return key
    if key:
        return CredentialKey(key)
    return key_from_env()
