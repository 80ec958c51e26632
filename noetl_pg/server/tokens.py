"""API tokens: generation, hashing and roles (the table is noetl.api_token).

A token is `noetl_` followed by 43 URL-safe characters (256 random bits). Only its SHA-256
is stored, so the database never holds a usable token; it is shown once, when created.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import psycopg

from noetl_pg import db

ROLES = ("reader", "operator", "admin")
# reader: read everything; operator: also start, cancel, resume and register;
# admin: also credentials.
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_PREFIX = "noetl_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def role_allows(role: str, needed: str) -> bool:
    return ROLE_RANK[role] >= ROLE_RANK[needed]


def add_token(conn: psycopg.Connection[Any], name: str, role: str) -> str:
    """Create (or replace) the token `name` with `role`; returns the token, shown once."""
    if role not in ROLE_RANK:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not name.strip():
        raise ValueError("token name must not be empty")
    token = new_token()
    db.fetch_one(conn, "server_token_add", token_name=name, role=role,
                 token_sha256=token_hash(token))
    return token
