"""The command budget of a playbook's executions (sql/functions/budget.sql enforces it).

A playbook sets it with `executor.spec.policy.limits.max_commands` (NoETL's executor
policy `limits`); a playbook without one gets the registering client's
`NOETL_MAX_COMMANDS` written into that field of its stored spec; without either, the
database's engine_limit 'max_commands' (default 10,000) applies. An execution that issues
more commands (loop iterations are not counted) fails with an error naming the playbook
and the limit.
"""

from __future__ import annotations

from typing import Any

from noetl_pg import settings
from noetl_pg.errors import PlaybookError

FIELD = "executor.spec.policy.limits.max_commands"
ENV = "NOETL_MAX_COMMANDS"


def _mapping(holder: dict[str, Any], key: str) -> dict[str, Any]:
    """holder[key] as a mapping, created empty when missing or null."""
    if not isinstance(holder.get(key), dict):
        holder[key] = {}
    child: dict[str, Any] = holder[key]
    return child


def apply_command_budget(spec: dict[str, Any], *, playbook: str) -> None:
    """Check the playbook's budget, or store the environment's default in `spec`."""
    limits = (((spec.get("executor") or {}).get("spec") or {}).get("policy") or {}).get(
        "limits") or {}
    if "max_commands" in limits:
        value = limits["max_commands"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlaybookError(f"must be a positive integer, got {value!r}",
                                playbook=playbook, field=FIELD)
        return
    default = settings.current().max_commands
    if default is None:
        return
    policy = _mapping(_mapping(_mapping(spec, "executor"), "spec"), "policy")
    _mapping(policy, "limits")["max_commands"] = default
