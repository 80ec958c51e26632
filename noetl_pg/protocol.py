"""The worker protocol's Python types: what the claim functions return, what a worker sends.

`ClaimedCommand` is one row of `noetl.claim_commands_v1`, `noetl.finish_and_claim_v1` and
`noetl.describe_commands` (sql/functions/dispatch.sql, worker_api.sql), the SQL row type
`noetl.claimed_command`: the same columns in the same order (tests/py/test_db_layer.py
compares them with the functions' result columns).
The outcome types are the JSON objects of `finish_and_claim`'s `outcomes` array, one per
`op` of its contract: the executor produces them, the worker sends them and adds `claim`
(the claim's fencing token) and `store_fallbacks`.
"""

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, cast, get_args, get_type_hints

__all__ = [
    "CLAIMED_COMMAND_COLUMNS",
    "OUTCOME_OPS",
    "AwaitChildOutcome",
    "ClaimedCommand",
    "DoneOutcome",
    "FailOutcome",
    "LoopOutcome",
    "Outcome",
    "RouteOutcome",
    "as_outcome",
    "claimed",
    "failure",
]


class ClaimedCommand(TypedDict):
    """A command this worker holds: run it and send one outcome fenced by `claim_gen`."""

    command_id: int
    execution_id: int
    catalog_id: int
    step_name: str
    # step | loop (the loop's own command) | iteration | route
    kind: str
    attempt: int
    loop_id: int | None
    iter_index: int | None
    input: dict[str, Any] | None
    # The loop item of an iteration (its value, or a ref to it); None otherwise.
    item: Any
    # What the step reads, on the first row of each group (slot_share.context_group).
    context: dict[str, Any] | None
    claim_gen: int


CLAIMED_COMMAND_COLUMNS: tuple[str, ...] = tuple(ClaimedCommand.__annotations__)


def claimed(rows: list[dict[str, Any]]) -> list[ClaimedCommand]:
    """The rows of a claim function as ClaimedCommand rows (dict_row gives plain dicts)."""
    return cast("list[ClaimedCommand]", rows)


class _Fenced(TypedDict):
    command_id: int
    attempt: int
    # The claim_gen the command was handed; added by the worker before sending.
    claim: NotRequired[int]
    # Lets finish_and_claim skip the loop fast path for batches without iterations.
    loop_id: NotRequired[int | None]
    # Store tiers the result fell back from (result.store.fallback events).
    store_fallbacks: NotRequired[list[dict[str, Any]]]


class DoneOutcome(_Fenced):
    """The step succeeded: complete_command (with the arcs the worker chose, if any)."""

    op: Literal["done"]
    result: Any
    ctx_set: dict[str, Any] | None
    targets: NotRequired[list[dict[str, Any]]]


class FailOutcome(_Fenced):
    """The step failed: fail_command retries after `retry_delay` seconds or fails it."""

    op: Literal["fail"]
    error: str
    retry_delay: float | None
    output: NotRequired[dict[str, Any] | None]


class RouteOutcome(_Fenced):
    """A route command's decision: apply_route issues `targets` once."""

    op: Literal["route"]
    targets: list[dict[str, Any]]


class LoopOutcome(_Fenced):
    """A loop step's rendered collection and settings: start_loop."""

    op: Literal["loop"]
    items: list[Any]
    loop: dict[str, Any]


class AwaitChildOutcome(_Fenced):
    """A playbook tool's child request: await_child starts it; the slot is free meanwhile."""

    op: Literal["await_child"]
    path: str
    version: int | None
    payload: dict[str, Any]
    return_step: str | None
    retry_delay: float | None
    pipeline: NotRequired[dict[str, Any]]


Outcome = DoneOutcome | FailOutcome | RouteOutcome | LoopOutcome | AwaitChildOutcome

# The outcome type of each `op`: the cases of finish_and_claim (test_db_layer compares).
_OUTCOME_TYPES: dict[str, type[Any]] = {
    get_args(get_type_hints(kind)["op"])[0]: kind
    for kind in (DoneOutcome, FailOutcome, RouteOutcome, LoopOutcome, AwaitChildOutcome)
}
OUTCOME_OPS: frozenset[str] = frozenset(_OUTCOME_TYPES)


def as_outcome(outcome: Mapping[str, Any]) -> Outcome:
    """The executor's outcome as the type of its `op`; ValueError naming the command and
    what is missing when it is not one finish_and_claim accepts."""
    kind = _OUTCOME_TYPES.get(str(outcome.get("op")))
    if kind is None:
        raise ValueError(f"command {outcome.get('command_id')}: unknown outcome op "
                         f"{outcome.get('op')!r}")
    missing = kind.__required_keys__ - outcome.keys()
    if missing:
        raise ValueError(f"command {outcome.get('command_id')}: {outcome['op']} outcome "
                         f"without {', '.join(sorted(missing))}")
    return cast(Outcome, outcome)


def failure(command_id: int, attempt: int, error: str, *,
            claim: int | None = None) -> FailOutcome:
    """A failure without retry (a bug, an outcome the database cannot apply)."""
    outcome: FailOutcome = {"op": "fail", "command_id": command_id, "attempt": attempt,
                            "error": error, "retry_delay": None}
    if claim is not None:
        outcome["claim"] = claim
    return outcome
