"""Retry and policy rules: what to do after a tool attempt (DSL "Retry and policy").

Rules are evaluated in order against `output = {status, data, error, http: {status}}`; the
first whose `when` holds (or the `else` rule) decides `do: continue|retry|fail|break|jump`.
The older `retry: {max_attempts, retry_on, backoff, delay}` is a retry rule on errors of
the listed kinds (`timeout` is a ToolTimeout, `error` any other tool error). A retry rule
stops retrying after its own `attempts` (default 3; `max_attempts` for the older form) and
then fails the attempt; the database still enforces the step-wide budget
(command.max_attempts, the largest of the step's rules).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from noetl_pg.templating import render_value, truthy

# Attempts of a `do: retry` rule without `attempts` (dsl._max_attempts uses the same).
DEFAULT_RULE_ATTEMPTS = 3


@dataclass(frozen=True)
class Decision:
    action: str  # continue | retry | fail | break | jump
    delay_seconds: float = 0.0
    jump_to: str | None = None
    set_writes: dict[str, Any] = field(default_factory=dict)


def retry_delay(delay: float, backoff: str | float, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: constant, linear or exponential in attempt."""
    if backoff == "linear":
        return delay * attempt
    if backoff == "exponential":
        return delay * (2.0 ** (attempt - 1))
    if isinstance(backoff, int | float) and not isinstance(backoff, bool):
        return delay * (float(backoff) ** (attempt - 1))
    return delay


def decide(
    tool_spec: Mapping[str, Any],
    output: Mapping[str, Any],
    namespace: Mapping[str, Any],
    attempt: int,
    error_kind: str | None,
) -> Decision:
    """The action after one attempt; `error_kind` is None on success, else error|timeout."""
    rules = ((tool_spec.get("spec") or {}).get("policy") or {}).get("rules") or []
    # The rules' scope, a copy of the namespace, only for a task that has rules.
    scope = {**namespace, "output": dict(output)} if rules else {}
    for rule in rules:
        if "else" in rule:
            then = (rule["else"] or {}).get("then") or {}
        elif truthy(rule.get("when", True), scope):
            then = rule.get("then") or {}
        else:
            continue
        return _decision_from(then, scope, attempt)
    if error_kind is None:
        return Decision("continue")
    legacy = tool_spec.get("retry")
    if (legacy and error_kind in legacy.get("retry_on", ["error", "timeout"])
            and attempt < int(legacy.get("max_attempts", 1))):
        return Decision(
            "retry",
            retry_delay(float(legacy.get("delay", 0.0)), legacy.get("backoff", "none"), attempt),
        )
    return Decision("fail")


def _decision_from(then: Mapping[str, Any], scope: Mapping[str, Any], attempt: int) -> Decision:
    action = str(then.get("do", "continue"))
    writes = render_value(dict(then.get("set") or {}), scope)
    delay = 0.0
    if action == "retry" and attempt >= int(then.get("attempts", DEFAULT_RULE_ATTEMPTS)):
        return Decision("fail", set_writes=writes)
    if action == "retry":
        delay = retry_delay(float(then.get("delay", 0.0)), then.get("backoff", "none"), attempt)
    return Decision(action, delay, then.get("to"), writes)
