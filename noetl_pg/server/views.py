"""Turning rows of noetl.execution (with its projected state) into NoETL's response shapes.

Pure functions: no database access, so every endpoint that shows an execution shows it
the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def duration_seconds(started: datetime | None, finished: datetime | None) -> float | None:
    if started is None:
        return None
    end = finished or datetime.now(UTC)
    return round(max(0.0, (end - started).total_seconds()), 3)


def duration_human(seconds: float | None) -> str | None:
    """NoETL's format: '1h 2m 3s', '0s' for under half a second."""
    if seconds is None:
        return None
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if secs or not parts:
        parts.append(f"{secs}s")
    return " ".join(parts)


def loop_progress(loops: dict[str, Any] | None,
                  steps: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per loop step of the projection: counters and the rate since the step started."""
    progress = []
    for step, loop in sorted((loops or {}).items()):
        step_state = (steps or {}).get(step) or {}
        started = _as_datetime(step_state.get("started"))
        finished = _as_datetime(step_state.get("finished")) if loop.get("completed") else None
        done, failed = int(loop.get("done") or 0), int(loop.get("failed") or 0)
        elapsed = duration_seconds(started, finished)
        progress.append({
            "step": step,
            "loop_id": None if loop.get("loop_id") is None else str(loop["loop_id"]),
            "total": int(loop.get("total") or 0),
            "done": done,
            "failed": failed,
            "completed": bool(loop.get("completed")),
            "rate_per_second": round((done + failed) / elapsed, 2) if elapsed else None,
        })
    return progress


def progress_percent(row: dict[str, Any], loops: list[dict[str, Any]]) -> int:
    """100 when finished; else the share of steps done, or of loop iterations when looping."""
    if row["status"] in TERMINAL:
        return 100
    running_loops = [loop for loop in loops if not loop["completed"] and loop["total"]]
    if running_loops:
        finished = sum(loop["done"] + loop["failed"] for loop in running_loops)
        return min(99, int(100 * finished / sum(loop["total"] for loop in running_loops)))
    steps = row.get("steps") or {}
    done = sum(1 for step in steps.values() if step.get("status") == "done")
    return min(99, int(100 * done / row["step_count"])) if row.get("step_count") else 0


def execution_entry(row: dict[str, Any]) -> dict[str, Any]:
    """ExecutionEntryResponse of a row with steps/loops (or state) and step_count."""
    state = row.get("state") or {}
    steps = row.get("steps") if "steps" in row else state.get("steps")
    loops = loop_progress(row.get("loops") if "loops" in row else state.get("loop"), steps)
    seconds = duration_seconds(row["started_at"], row["finished_at"])
    return {
        "execution_id": str(row["execution_id"]),
        "catalog_id": str(row["catalog_id"]),
        "path": row["path"],
        "version": row["version"],
        "status": row["status"],
        "start_time": row["started_at"],
        "end_time": row["finished_at"],
        "duration_seconds": seconds,
        "duration_human": duration_human(seconds),
        "progress": progress_percent({**row, "steps": steps}, loops),
        "result": row.get("result"),
        "error": row["error"],
        "parent_execution_id": None if row["parent_execution_id"] is None
        else str(row["parent_execution_id"]),
        "failed_step": row["failed_step"],
        "loops": loops,
    }


def step_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The projected steps in the order they started."""
    steps = [{"name": name, "status": step.get("status") or "queued",
              "started": step.get("started"), "finished": step.get("finished"),
              "attempts": int(step.get("attempts") or 0), "runs": int(step.get("runs") or 0),
              "error": step.get("error")}
             for name, step in (state.get("steps") or {}).items()]
    return sorted(steps, key=lambda step: (step["started"] or "", step["name"]))


def current_step(state: dict[str, Any]) -> str | None:
    """The step of the last folded event, else the step that started last."""
    step = (state.get("last_event") or {}).get("step")
    if step:
        return str(step)
    started = step_states(state)
    return started[-1]["name"] if started else None


_EVENT_STATUS = (
    (".cancelled", "CANCELLED"), (".failed", "FAILED"), (".error", "FAILED"),
    (".done", "COMPLETED"), (".completed", "COMPLETED"), ("command.issued", "PENDING"),
)


def event_status(event_type: str) -> str:
    """NoETL's per-event status column, derived from our event type."""
    for suffix, status in _EVENT_STATUS:
        if event_type.endswith(suffix):
            return status
    return "RUNNING"


def event_entry(execution_id: int, row: dict[str, Any]) -> dict[str, Any]:
    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return {
        "execution_id": str(execution_id),
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "node_id": row["node_name"],
        "node_name": row["node_name"],
        "status": event_status(row["event_type"]),
        "created_at": row["created_at"],
        "timestamp": row["created_at"],
        "context": row["meta"],
        "result": row["result"],
        "error": row["error"],
        "command_id": text(row["command_id"]),
        "attempt": row["attempt"],
        "loop_id": text(row["loop_id"]),
        "iter_index": row["iter_index"],
        "result_ref": row["result_ref"],
    }


def graph(execution_id: int, workflow: list[dict[str, Any]], entry: str | None,
          state: dict[str, Any]) -> dict[str, Any]:
    """Nodes (coloured by projected status) and arcs of the playbook's workflow."""
    steps = state.get("steps") or {}
    nodes, edges = [], []
    for step in workflow:
        name = step["step"]
        plan = step.get("plan") or {}
        nodes.append({"name": name, "kind": plan.get("kind") or "noop",
                      "status": (steps.get(name) or {}).get("status") or "pending",
                      "has_loop": bool(plan.get("has_loop")), "is_entry": name == entry})
        for arc in _arcs(step.get("next")):
            edges.append({"source": name, "target": arc["step"], "when": arc.get("when")})
    return {"execution_id": str(execution_id), "nodes": nodes, "edges": edges}


def _arcs(next_value: Any) -> list[dict[str, Any]]:
    if isinstance(next_value, dict):
        next_value = next_value.get("arcs")
    return [arc for arc in next_value or [] if isinstance(arc, dict) and arc.get("step")]
