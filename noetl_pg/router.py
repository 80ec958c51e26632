"""Routing a finished step: which arcs it takes, and the plan facts SQL routes by.

Pure: no database, no tools. `choose()` is what a route command evaluates after
`call.done`, `call.error` or `loop.done`; `route_scope()` the template scope its `when`
and `set` see; `direct_targets()` and `join_steps()` are the facts `dsl.build_plans`
stores so the SQL router can route unconditional arcs and joins without Jinja.

Rules (DSL "Step"):
- an arc without `when` matches after success (call.done, loop.done), never after
  call.error;
- `exclusive` takes the first matching arc, `inclusive` every matching arc;
- arcs of one older `case` branch share a `group`: the branch is one choice, so in
  exclusive mode the first matching arc brings every arc of its group (`then: {next:
  [b, c]}` starts both b and c);
- a step is a join when arcs of more than one step lead to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from noetl_pg.templating import error_view, render_value, truthy


class ArcLike(Protocol):
    step: str
    when: str | None
    set: dict[str, Any] | None
    group: int | None


def matches(arc: ArcLike, event: str, scope: Mapping[str, Any]) -> bool:
    """Whether `arc` is taken after `event` (see the module rules)."""
    if arc.when is None:
        return event != "call.error"
    return truthy(arc.when, scope)


def choose(
    arcs: Sequence[ArcLike], mode: str, event: str, scope: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The arcs taken, in arc order, as `[{step, set}]` with each `set` rendered in `scope`
    (what noetl.apply_route takes). `set` keys stay as written (`ctx.x`, `x`)."""
    if mode == "exclusive":
        for arc in arcs:
            if matches(arc, event, scope):
                taken = [other for other in arcs if other is arc
                         or (arc.group is not None and other.group == arc.group)]
                return [_target(chosen, scope) for chosen in taken]
        return []
    return [_target(arc, scope) for arc in arcs if matches(arc, event, scope)]


def _target(arc: ArcLike, scope: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": arc.step, "set": render_value(arc.set, scope) if arc.set else None}


def route_scope(
    namespace: Mapping[str, Any], step_name: str, event: str, error: Any = None
) -> dict[str, Any]:
    """The scope of a step's arcs: the command namespace plus `event` ({name, type, step}),
    the step's own result as `result` and `output` (`{status, data, error, http}`, with
    `output.error` NoETL's error object), after call.error `error` (its message, as NoETL
    gives it), `fanin` after a fan-out."""
    scope = dict(namespace)
    scope["event"] = {"name": event, "step": step_name,
                      "type": "tool.error" if event == "call.error" else "tool.completed"}
    own = namespace.get(step_name)
    if own is not None:
        scope["result"] = own
        if isinstance(own, Mapping) and "fanin" in own:
            scope["fanin"] = own["fanin"]
    if event == "call.error":
        stored = own.get("output") if isinstance(own, Mapping) else None
        extra = dict(stored) if isinstance(stored, Mapping) else {}
        error_object = error_view(error, extra)
        output: dict[str, Any] = {**extra, "status": "error", "error": error_object}
        output.setdefault("http", {"status": error_object["status_code"]})
        scope["error"] = error_object["message"]
    else:
        output = {"status": "ok", "data": own}
        if isinstance(own, Mapping) and "status_code" in own:
            output["http"] = {"status": own.get("status_code"), "headers": own.get("headers")}
    scope["output"] = output
    return scope


def direct_targets(arcs: Sequence[ArcLike], mode: str) -> list[str] | None:
    """The targets when no arc has a `when` or `set` (SQL routes them on success without
    a route command), else None. Exclusive mode takes the first arc and its group."""
    if any(arc.when is not None or arc.set for arc in arcs):
        return None
    if mode != "exclusive" or not arcs:
        return [arc.step for arc in arcs]
    first = arcs[0]
    return [arc.step for arc in arcs
            if arc is first or (first.group is not None and arc.group == first.group)]


def join_steps(successors: Mapping[str, Iterable[str]]) -> set[str]:
    """Steps that arcs of more than one step lead to: they run once, after every branch
    started towards them has arrived (sql/functions/routing.sql check_progress)."""
    sources: dict[str, set[str]] = {}
    for source, targets in successors.items():
        for target in targets:
            sources.setdefault(target, set()).add(source)
    return {target for target, from_steps in sources.items() if len(from_steps) > 1}
