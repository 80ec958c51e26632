"""Exception classes shared across the package.

Each error says where it comes from (playbook path, step, field) so a user can fix the
input without reading a traceback.
"""

from __future__ import annotations

from typing import Any


class NoetlError(Exception):
    """Base class for every error noetl-pg raises on purpose."""


class PlaybookError(NoetlError):
    """A playbook is malformed; names the playbook, the step and the field."""

    def __init__(
        self,
        message: str,
        *,
        playbook: str | None = None,
        step: str | None = None,
        field: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.playbook = playbook
        self.step = step
        self.field = field
        self.line = line
        self.column = column
        where = []
        if playbook:
            where.append(f"playbook '{playbook}'")
        if step:
            where.append(f"step '{step}'")
        if field:
            where.append(f"field '{field}'")
        if line is not None:
            where.append(f"line {line}" + (f", column {column}" if column is not None else ""))
        self.message = message
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class TemplateError(NoetlError):
    """A template could not be rendered (syntax error or undefined variable)."""


class ToolError(NoetlError):
    """A tool ran and failed. `output` is what policy rules see as `output.*`."""

    def __init__(self, message: str, *, output: dict[str, Any] | None = None,
                 kind: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.output = output or {}
        # `kind` feeds `retry_on`: "error" or "timeout".
        self.kind = kind


class ToolTimeout(ToolError):
    """A tool exceeded its time budget."""

    def __init__(self, message: str, *, output: dict[str, Any] | None = None) -> None:
        super().__init__(message, output=output, kind="timeout")


class DatabaseError(NoetlError):
    """A statement the engine ran on its own database failed (`noetl_pg.db` maps every
    driver error to this class or a subclass, in `db.database_error`).

    `sqlstate` is PostgreSQL's error code (None when the failure is on the client side, e.g.
    a refused connection), `message` the server's primary message (or the driver's), and
    `query` the name of the statement in sql/queries/ when one was running. The driver's
    exception is the `__cause__`.
    """

    def __init__(self, message: str, *, sqlstate: str | None = None,
                 query: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.query = query


class DatabaseRefused(DatabaseError):
    """The database refused the statement (a function's `raise`, a constraint, bad input):
    the same statement on another connection gets the same answer."""


class DatabaseTransient(DatabaseError):
    """The statement may succeed when tried again, on this connection or a new one (a
    deadlock, a serialization failure, a cancelled statement, a lock timeout)."""


class DatabaseUnavailable(DatabaseTransient):
    """The server cannot be reached, the connection broke, no pooled connection came free
    in time, or a reconnect policy gave up (its message says after how long)."""
