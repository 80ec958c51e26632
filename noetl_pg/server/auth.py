"""Bearer-token authentication and role checks for the API.

Fresh local set-up: a server bound to a loopback address runs without authentication while
no token exists (everyone on the machine is admin, as with the CLI and the database). From
the first `noetl server token add` on, every API request needs `Authorization: Bearer
<token>`: none or an unknown one gets 401, a role too low for the endpoint 403. A server
bound to any other address refuses to start without a token (see `serve.check_bind`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool

from noetl_pg import settings
from noetl_pg.server import database
from noetl_pg.server.tokens import role_allows, token_hash

# Declares the scheme in the OpenAPI spec; the check itself is TokenAuth's.
BEARER = HTTPBearer(auto_error=False, description="An API token (noetl server token add)")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


LOCAL_PRINCIPAL = Principal(name="local (no tokens exist)", role="admin")


class TokenAuth:
    """Resolves a request's bearer token to a Principal, with a short cache."""

    def __init__(self, pool: AsyncConnectionPool, *, open_without_tokens: bool) -> None:
        self._pool = pool
        self._open_without_tokens = open_without_tokens
        # How long a looked-up token (or the "no tokens exist" answer) is trusted before the
        # database is asked again: revoking a token takes effect within this many seconds.
        self._cache_seconds = settings.current().server_auth_cache_seconds
        self._tokens: dict[bytes, tuple[float, Principal | None]] = {}
        self._no_tokens_until = 0.0

    async def _any_token(self) -> bool:
        now = time.monotonic()
        if now < self._no_tokens_until:
            return False
        async with self._pool.connection() as conn:
            row = await database.fetch_one(conn, "server_token_count")
        if row is not None and row["tokens"] == 0:
            self._no_tokens_until = now + self._cache_seconds
            return False
        return True

    async def _lookup(self, token: str) -> Principal | None:
        digest = token_hash(token)
        now = time.monotonic()
        cached = self._tokens.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._pool.connection() as conn:
            row = await database.fetch_one(conn, "server_token_lookup", token_sha256=digest)
        principal = Principal(row["name"], row["role"]) if row else None
        if len(self._tokens) > 10_000:  # bound the cache against token spraying
            self._tokens.clear()
        self._tokens[digest] = (now + self._cache_seconds, principal)
        return principal

    async def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            principal = await self._lookup(token.strip())
            if principal is not None:
                return principal
            raise _unauthorized("unknown or revoked token")
        if self._open_without_tokens and not await self._any_token():
            return LOCAL_PRINCIPAL
        raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


def require(role: str) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the caller's Principal, which must have at least `role`."""

    async def dependency(
        request: Request,
        _declared: HTTPAuthorizationCredentials | None = Depends(BEARER),  # noqa: B008
    ) -> Principal:
        auth: TokenAuth = request.app.state.auth
        principal = await auth.principal(request)
        if not role_allows(principal.role, role):
            raise HTTPException(
                status_code=403,
                detail=f"token '{principal.name}' has role {principal.role}; "
                       f"this needs {role} or higher",
            )
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency
