"""The state of a step's tasks while they run: results, writes, and what comes next.

A step's `tool` is one task or a pipeline (a list). The executor (noetl_pg.executor) runs
each task in four phases: render its config, run its tool, decide by its policy, then
`next_task` here: record the result, apply the task's `set`, and say which task runs next.
This module holds the scope and `TaskRun` bookkeeping of those phases and the state a
pipeline parked on a child playbook resumes with. It computes; it runs no tool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from noetl_pg.errors import ToolError
from noetl_pg.policy import Decision
from noetl_pg.templating import render_value, result_view


@dataclasses.dataclass
class TaskRun:
    """What running a step's tasks produced: the last result, the results of finished
    pipeline tasks by name, the policy `set` writes to ctx and to the step result, and
    the fail or await_child outcome that stopped the run (None: the tasks are done)."""

    result: Any = None
    done: dict[str, Any] = dataclasses.field(default_factory=dict)
    ctx_writes: dict[str, Any] = dataclasses.field(default_factory=dict)
    step_writes: dict[str, Any] = dataclasses.field(default_factory=dict)
    stop: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class TaskCall:
    """One task's tool call as the policy and the task's `set` see it: `output` is
    `{status: ok, data}` or `{status: error, error, ...the tool's error output}`,
    `error_kind` is None on success, else the ToolError's kind (`error`, `timeout`)."""

    result: Any
    output: dict[str, Any]
    error_kind: str | None = None

    @classmethod
    def ok(cls, result: Any) -> TaskCall:
        return cls(result, {"status": "ok", "data": result})

    @classmethod
    def failed(cls, exc: ToolError) -> TaskCall:
        return cls(None, {"status": "error", "error": exc.message, **exc.output}, exc.kind)


def start_run(
    namespace: Mapping[str, Any], attempt: int, *, pipeline: bool,
    resume: Mapping[str, Any] | None,
) -> tuple[TaskRun, dict[str, Any], int]:
    """The run, the tasks' scope and the first task's position: a fresh run at task 0, or
    a pipeline parked on a child playbook (`resume`, see pipeline_state) with the names
    its finished tasks and writes had, at the task that started the child."""
    run = TaskRun()
    scope = dict(namespace)
    if pipeline:
        scope.update(_attempt=attempt, _prev=None, _task=None)
        if scope.get("results") is None:
            scope["results"] = {}
    if resume is None:
        return run, scope, 0
    run = TaskRun(done=dict(resume.get("results") or {}),
                  ctx_writes=dict(resume.get("ctx_writes") or {}),
                  step_writes=dict(resume.get("step_writes") or {}))
    for name, value in run.done.items():
        scope[name] = result_view(value)
        _pipeline_envelope(scope, name, value)
    if resume.get("iter") is not None:
        scope["iter"] = resume["iter"]
    if run.ctx_writes:
        scope["ctx"] = {**(scope.get("ctx") or {}), **run.ctx_writes}
    return run, scope, int(resume["task_index"])


def next_task(
    tasks: list[dict[str, Any]], position: int, call: TaskCall, decision: Decision,
    scope: dict[str, Any], run: TaskRun, *, pipeline: bool,
) -> int | None:
    """After a task the policy let through (continue, break, jump; or an error it
    continued past): a pipeline names its result (`<task>`, `_prev`, `_task`,
    `results.<task>`; after an error, the last successful result), the task's own `set`
    is applied, and the position of the next task is returned: None after `break`, the
    named task after `jump`, else the following one (past the end: the tasks are done).
    A jump to a task that does not exist is a ToolError."""
    task = tasks[position]
    if pipeline:
        name = task.get("name") or f"task_{position + 1}"
        scope[name] = result_view(run.result)
        run.done[name] = run.result
        _pipeline_envelope(scope, name, run.result)
    if task.get("set"):
        _apply_task_set(task["set"], scope, call.output, run.ctx_writes)
    if decision.action == "break":
        return None
    if decision.action == "jump" and decision.jump_to:
        names = [t.get("name") for t in tasks]
        if decision.jump_to not in names:
            raise ToolError(f"policy jumps to unknown task '{decision.jump_to}'")
        return names.index(decision.jump_to)
    return position + 1


def ctx_writes(writes: Mapping[str, Any] | None) -> dict[str, Any]:
    """`set` keys `ctx.x` (or bare `x`) become ctx writes; `step.*`/`iter.*` are not ctx."""
    ctx: dict[str, Any] = {}
    for key, value in (writes or {}).items():
        if key.startswith("ctx."):
            ctx[key[4:]] = value
        elif not key.startswith(("step.", "iter.")):
            ctx[key] = value
    return ctx


def apply_step_writes(result: Any, writes: Mapping[str, Any]) -> Any:
    """`result` with the `step.*` writes of `writes` merged in (a non-mapping result
    becomes `{data: result}` first)."""
    step_writes = {key[5:]: value for key, value in writes.items() if key.startswith("step.")}
    if not step_writes:
        return result
    merged = dict(result) if isinstance(result, Mapping) else {"data": result}
    merged.update(step_writes)
    return merged


def apply_policy_writes(scope: dict[str, Any], run: TaskRun, writes: Mapping[str, Any]) -> None:
    """A policy rule's `then.set`: `iter.*` is visible to later tasks of the iteration,
    `ctx.*` (or a bare name) to later tasks and, with the step's outcome, to later steps,
    `step.*` lands in the step's result."""
    if not writes:
        return
    _apply_iter_writes(scope, writes)
    policy_ctx = ctx_writes(writes)
    if policy_ctx:
        run.ctx_writes.update(policy_ctx)
        ctx = scope.get("ctx")
        scope["ctx"] = {**(ctx if isinstance(ctx, Mapping) else {}), **policy_ctx}
    run.step_writes.update(
        {key: value for key, value in writes.items() if key.startswith("step.")})


def pipeline_state(
    run: TaskRun, position: int, scope: Mapping[str, Any], attempt: int
) -> dict[str, Any]:
    """What a pipeline parked on a playbook task resumes with (stored with the command)."""
    iter_scope = scope.get("iter")
    return {
        "attempt": attempt, "task_index": position, "results": dict(run.done),
        "ctx_writes": dict(run.ctx_writes), "step_writes": dict(run.step_writes),
        "iter": dict(iter_scope) if isinstance(iter_scope, Mapping) else None,
    }


def pipeline_resume(command: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The parked pipeline of this attempt (a retry starts the pipeline afresh)."""
    state = (command.get("input") or {}).get("pipeline")
    if isinstance(state, Mapping) and state.get("attempt") == command["attempt"]:
        return state
    return None


def _pipeline_envelope(scope: dict[str, Any], name: str, result: Any) -> None:
    """NoETL's pipeline names after a task: `_prev` (its result), `_task` (its name) and
    `results.<task>` (every task so far), beside the task's own name."""
    scope["_prev"] = result_view(result)
    scope["_task"] = name
    if isinstance(scope.get("results"), dict):
        scope["results"] = {**scope["results"], name: result_view(result)}


def _apply_task_set(writes: Mapping[str, Any], scope: dict[str, Any], output: Mapping[str, Any],
                    task_ctx: dict[str, Any]) -> None:
    """A task's own `set`, rendered after it ran with `output` in scope: `iter.*` and
    `ctx.*` writes are visible to later tasks; ctx writes also go to the execution."""
    rendered = render_value(dict(writes), {**scope, "output": dict(output)})
    _apply_iter_writes(scope, rendered)
    ctx = ctx_writes(rendered)
    if ctx:
        scope["ctx"] = {**(scope.get("ctx") or {}), **ctx}
        scope.update(ctx)
        task_ctx.update(ctx)


def _apply_iter_writes(scope: dict[str, Any], writes: Mapping[str, Any]) -> None:
    """Policy/`set` writes to `iter.*` are visible to later tasks of the same iteration."""
    iter_writes = {key[5:]: value for key, value in writes.items() if key.startswith("iter.")}
    if iter_writes:
        scope["iter"] = {**(scope.get("iter") or {}), **iter_writes}
