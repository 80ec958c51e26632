"""Optional dependencies (`pip install 'noetl-pg[duckdb,s3,nats]'`) and the error naming them.

The core engine needs none of these. A feature that needs one checks here first, so a
missing package is reported as the extra to install, not as an ImportError traceback.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from noetl_pg.errors import NoetlError, ToolError

# extra name -> the module it provides
EXTRA_MODULES: dict[str, str] = {"duckdb": "duckdb", "s3": "boto3", "nats": "nats"}


class MissingExtra(NoetlError):
    """A feature was asked for whose optional dependency is not installed."""


def install_hint(extra: str) -> str:
    return f"pip install 'noetl-pg[{extra}]'"


def has_extra(extra: str) -> bool:
    return importlib.util.find_spec(EXTRA_MODULES[extra]) is not None


def require_extra(extra: str, needed_for: str) -> None:
    """Raise MissingExtra naming `extra` when its module is not installed."""
    if not has_extra(extra):
        raise MissingExtra(
            f"{needed_for} needs the optional dependency '{EXTRA_MODULES[extra]}', "
            f"which is not installed: {install_hint(extra)}"
        )


def missing_extra_tool(declared: type[Any], extra: str) -> type[Any]:
    """A stand-in tool class for the kind `declared` describes (its `kind`, `config_keys`
    and the other class attributes of noetl_pg.tools.base.Tool, without `run`) whose
    every run fails naming the extra to install. It inherits those declarations, so
    registration and rendering on a machine without the extra treat the kind's playbooks
    as anywhere else."""
    kind = declared.kind

    class MissingExtraTool(declared):  # type: ignore[misc]
        def run(self, config: Mapping[str, Any], context: Any) -> Any:
            raise ToolError(
                f"tool kind '{kind}' needs the optional dependency "
                f"'{EXTRA_MODULES[extra]}' on this worker: {install_hint(extra)}"
            )

    MissingExtraTool.__name__ = f"Missing{kind.title()}Tool"
    return MissingExtraTool
