"""Running the app under uvicorn, optionally with an in-process worker and projector."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import uvicorn

from noetl_pg import db
from noetl_pg.errors import DatabaseError, NoetlError
from noetl_pg.projection import Projector
from noetl_pg.server.app import create_app
from noetl_pg.worker import build_worker


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to those."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def token_count(dsn: str) -> int:
    with db.connection(dsn) as conn:
        row = db.fetch_one(conn, "server_token_count")
    return int(row["tokens"]) if row else 0


def check_bind(dsn: str, host: str) -> bool:
    """Whether requests without a token may come in while no live token exists (loopback
    addresses only); raises when a non-loopback bind has no token to require."""
    if is_loopback(host):
        return True
    if token_count(dsn) == 0:
        raise NoetlError(
            f"refusing to serve on {host} without authentication: create a token first "
            "(noetl server token add NAME --role admin) or bind to 127.0.0.1")
    return False


def serve(dsn: str, *, host: str, port: int, worker_slots: int = 0,
          with_projector: bool = True, log_level: str = "warning") -> None:
    """Serve until SIGINT/SIGTERM; worker and projector (if any) stop with the server."""
    try:
        open_without_tokens = check_bind(dsn, host)
    except DatabaseError as exc:
        raise NoetlError(f"cannot read noetl.api_token: {exc.message}") from None
    app = create_app(dsn, open_without_tokens=open_without_tokens)
    helpers: list[Any] = []
    if worker_slots > 0:
        helpers.append(build_worker(dsn, slots=worker_slots, poll_interval=0.5))
    if with_projector:
        helpers.append(Projector(dsn))
    for helper in helpers:
        helper.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        for helper in helpers:
            helper.stop()
        for helper in helpers:
            helper.join(timeout=30)
