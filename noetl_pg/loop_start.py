"""What a loop command renders when its loop starts: the items and how to run them.

A loop command's outcome (`op: loop`) carries the rendered collection and the loop's
run settings; noetl.start_loop stores the items and issues the iterations. A cursor
loop carries no items: its claim statement, rendered here once, is what its claim
commands run (noetl_pg.cursor).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noetl_pg.dsl import Playbook, Step
from noetl_pg.errors import TemplateError
from noetl_pg.sqlrender import render_tool_config
from noetl_pg.templating import render_value


def loop_outcome(step: Step, namespace: dict[str, Any], playbook: Playbook) -> dict[str, Any]:
    """`items` and `loop` (iterator, mode, max_in_flight, on_error, and fan-out or cursor
    settings) of the loop step `step`. A collection that renders to a mapping is its
    `{key, value}` pairs; one that renders to anything but a list is a TemplateError."""
    assert step.loop is not None
    if step.loop.cursor is not None:
        return _cursor_loop(step, namespace, playbook)
    items = render_value(step.loop.in_, namespace)
    if isinstance(items, Mapping):
        items = [{"key": key, "value": value} for key, value in items.items()]
    if not isinstance(items, list):
        raise TemplateError(
            f"loop.in must render to a list, got {type(items).__name__}"
        )
    run_spec = step.loop.spec
    max_in_flight = _in_flight_bound(render_value(run_spec.max_in_flight, namespace))
    fanout = run_spec.fanout or {}
    return {
        "items": items,
        "loop": {
            "iterator": step.loop.iterator,
            "mode": run_spec.mode,
            "max_in_flight": max_in_flight,
            "is_fanout": step.loop.is_fanout,
            "max_shard_retries": int(fanout.get("max_shard_retries", 2)),
            "on_error": run_spec.on_error,
        },
    }


def _cursor_loop(step: Step, namespace: dict[str, Any], playbook: Playbook) -> dict[str, Any]:
    """A cursor loop's start: its claim rendered once, here, as a postgres script is
    (values escaped for their SQL positions, a templated `auth` checked); the claim
    commands run it as rendered (noetl_pg.cursor)."""
    assert step.loop is not None and step.loop.cursor is not None
    cursor = step.loop.cursor
    rendered = render_tool_config(
        {"kind": "postgres", "auth": cursor.auth, "command": cursor.claim}, namespace,
        step=step.step, playbook_workload=playbook.workload,
    )
    run_spec = step.loop.spec
    return {
        "items": [],
        "loop": {
            "iterator": step.loop.iterator,
            "mode": "cursor",
            "max_in_flight": _in_flight_bound(render_value(run_spec.max_in_flight,
                                                           namespace)),
            "on_error": run_spec.on_error,
            "cursor": {"kind": cursor.kind, "auth": rendered["auth"],
                       "claim": rendered["command"],
                       "options": render_value(cursor.options or {}, namespace)},
        },
    }


def _in_flight_bound(value: Any) -> int | None:
    """loop.spec.max_in_flight as rendered when the loop starts: None or an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TemplateError(f"loop.spec.max_in_flight must render to an integer >= 1, "
                            f"got {value!r}")
    return value
