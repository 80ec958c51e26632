"""Run one claimed command and say what happened, as an outcome for finish_and_claim.

This module computes; it never writes engine state. A step command renders its tool
config, runs the tool (or a pipeline of tasks), applies the policy, renders its `set`
writes and returns a `done` or `fail` outcome. A loop command renders its collection and
returns a `loop` outcome. A route command evaluates the step's arcs and returns the chosen
targets. A `playbook` step returns an `await_child` outcome: the database parks the
command and starts the child (sql/functions/child.sql). Secrets (credential secrets the
worker has read, keychain values) are redacted from every error, result, ctx write and
child payload before they leave the worker.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from noetl_pg import protocol
from noetl_pg.credentials import for_command
from noetl_pg.dsl import Playbook, Step
from noetl_pg.errors import NoetlError, TemplateError, ToolError
from noetl_pg.jsoncheck import storage_problem
from noetl_pg.keychain import Keychain, SecretRedactor
from noetl_pg.policy import decide
from noetl_pg.results import CommandResults
from noetl_pg.router import choose, direct_targets, route_scope
from noetl_pg.sqlrender import render_tool_config
from noetl_pg.store import ResultStore
from noetl_pg.stream import (
    PARTIAL_EVENT,
    ChunkEmitter,
    PartialRecorder,
    chunk_view,
    streamed_chunk_rows,
)
from noetl_pg.templating import ResultView, build_context, render_value
from noetl_pg.tools.base import CredentialResolver, Tool, ToolContext
from noetl_pg.tools.playbook import ChildRequest
from noetl_pg.tools.python import CONTEXT_KEY
from noetl_pg.tools.workbook import resolve_task

log = logging.getLogger(__name__)

Outcome = dict[str, Any]


class _CauseKept(NoetlError):
    """An error whose message already leads with its cause (and names the step)."""


class CommandRunner:
    """Turns a claimed command row into an outcome. One per worker, shared by its slots."""

    def __init__(
        self,
        tools: Mapping[str, Tool],
        spec_loader: Callable[[int], Playbook],
        make_tool_context: Callable[[Mapping[str, Any]], ToolContext],
        redact: Callable[[str], str] = lambda text: text,
        credentials: CredentialResolver | None = None,
        store: ResultStore | None = None,
        partials: PartialRecorder | None = None,
        worker_id: str = "",
    ) -> None:
        self._tools = tools
        # Whose claims the commands are: credentials are read for one held command.
        self._worker_id = worker_id
        self._spec_loader = spec_loader
        self._make_tool_context = make_tool_context
        self._redact = redact
        self._credentials = credentials
        # Results over the store's inline limit are written to it; refs are resolved by it.
        self._store = store
        # Where a streamed step records its chunks (noetl_pg.stream); None: no streams.
        self._partials = partials

    def run(self, command: Mapping[str, Any], context: Mapping[str, Any]) -> protocol.Outcome:
        """Run one claimed command (a ClaimedCommand row); the outcome to send for it."""
        playbook = self._spec_loader(command["catalog_id"])
        step = playbook.step_named(command["step_name"])
        results = CommandResults(self._store) if self._store is not None else None
        try:
            return protocol.as_outcome(self._run(command, context, playbook, step, results))
        finally:
            if results is not None:
                results.close()

    def _run(
        self, command: Mapping[str, Any], context: Mapping[str, Any], playbook: Playbook,
        step: Step, results: CommandResults | None,
    ) -> Outcome:
        namespace = self._namespace(command, context, step, playbook, results)
        # loop_id lets finish_and_claim skip the loop fast path for batches without iterations.
        base = {"command_id": command["command_id"], "attempt": command["attempt"],
                "loop_id": command.get("loop_id")}
        try:
            if command["kind"] == "route":
                targets = self._route_keeping_cause(step, command, namespace)
                # After call.error an unmatched route fails with the step's own error (SQL).
                event = (command.get("input") or {}).get("event")
                if not targets and playbook.no_next_is_error and event != "call.error":
                    raise NoetlError("no arc matched (executor.spec.no_next_is_error)")
                return {**base, "op": "route", "targets": targets}
            if command["kind"] == "loop":
                return {**base, "op": "loop", **self._loop(step, namespace, playbook)}
            outcome = self._scrub(self._step(step, command, namespace, playbook, results))
            _refuse_unstorable(outcome)
            fused = self._fused_targets(step, command, namespace, outcome, playbook)
            outcome = self._store_result(step, command, outcome)
            return {**base, **outcome, **({"targets": fused} if fused is not None else {})}
        except NoetlError as exc:
            message = str(exc) if isinstance(exc, _CauseKept) else f"step '{step.step}': {exc}"
            return {**base, "op": "fail", "error": self._redact(message), "retry_delay": None}

    def _route_keeping_cause(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Arcs after an error that cannot be evaluated fail the run with the step's own
        error first: the secondary error never hides the cause."""
        route_input = command.get("input") or {}
        try:
            return self._route(step, command, namespace)
        except NoetlError as exc:
            if route_input.get("event") != "call.error":
                raise
            raise _CauseKept(
                f"{route_input.get('error')}; then its arcs could not be evaluated: "
                f"step '{step.step}': {exc}"
            ) from exc

    def _scrub(self, outcome: Outcome) -> Outcome:
        """Redact known secrets from what a step outcome stores (results reach events)."""
        if not isinstance(self._redact, SecretRedactor):
            return outcome
        for key in ("result", "ctx_set", "output", "payload"):
            if outcome.get(key) is not None:
                outcome[key] = self._redact.redact_value(outcome[key])
        return outcome

    # --- namespaces ------------------------------------------------------------------

    def _namespace(
        self, command: Mapping[str, Any], context: Mapping[str, Any], step: Step,
        playbook: Playbook, results: CommandResults | None = None,
    ) -> dict[str, Any]:
        namespace = build_context(context, results)
        execution_id = namespace.get("execution_id")
        # NoETL's job namespace: the execution is the job (job.uuid, job.id are its id).
        namespace.setdefault("job", {
            "execution_id": execution_id, "uuid": str(execution_id), "id": str(execution_id),
            "path": playbook.path,
        })
        for other in playbook.workflow:
            # A step that has not run (yet, or on this branch) is none, so
            # `{{ a.x if a else b.x }}` works; a name that is no step stays undefined.
            namespace.setdefault(other.step, None)
        keychain = playbook.keychain
        if keychain:
            namespace["keychain"] = Keychain(
                keychain, for_command(self._credentials, self._worker_id, command),
                dict(namespace),
                self._redact if isinstance(self._redact, SecretRedactor) else None,
            )
        if command.get("loop_id") is not None and step.loop is not None:
            index = command["iter_index"]
            # A cursor loop's length is known only when its cursor has drained.
            total = None if step.loop.cursor is not None else (
                (command.get("input") or {}).get("loop_total", 0))
            last = total is not None and index == total - 1
            item = command.get("item")
            namespace[step.loop.iterator] = item
            namespace["iter"] = {
                step.loop.iterator: item,
                "_index": index,
                "_first": index == 0,
                "_last": last,
            }
            namespace["loop"] = {"index": index, "first": index == 0, "length": total,
                                 "last": last}
            namespace["loop_index"] = index
        chunk = chunk_view(command.get("input"), results)
        if chunk is not None:
            namespace["chunk"] = chunk
        return namespace

    # --- route -----------------------------------------------------------------------

    def _route(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any]
    ) -> list[dict[str, Any]]:
        command_input = command.get("input") or {}
        event = command_input.get("event", "call.done")
        scope = route_scope(namespace, step.step, event, command_input.get("error"))
        arcs = step.next.route_arcs if step.next else []
        return _targets(choose(arcs, step.next.mode if step.next else "exclusive", event,
                               scope))

    def _fused_targets(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any],
        outcome: Outcome, playbook: Playbook,
    ) -> list[dict[str, Any]] | None:
        """The conditional arcs of a step that just succeeded, evaluated here so that
        finish_and_claim applies them with the completion (noetl.route_after): no route
        command, no extra transaction. The scope is the route command's: this command's
        namespace with the step's result and its ctx writes. None (a route command
        decides, as before) for a loop iteration, a step without conditional arcs, a
        failure, or arcs whose evaluation raises."""
        if (outcome.get("op") != "done" or command.get("loop_id") is not None
                or step.loop is not None or not _has_conditional_arcs(step)):
            return None
        scope = dict(namespace)
        scope[step.step] = _view(outcome.get("result"))
        ctx_set = outcome.get("ctx_set") or {}
        if ctx_set:
            scope["ctx"] = {**(scope.get("ctx") or {}), **ctx_set}
            # Bare ctx keys, as build_context makes them: a step's name wins over them.
            steps = {other.step for other in playbook.workflow}
            scope.update({key: value for key, value in ctx_set.items() if key not in steps})
        try:
            targets = self._route(step, {"input": {"event": "call.done"}}, scope)
        except NoetlError:
            return None
        if not targets and playbook.no_next_is_error:
            return None  # the route command fails the execution, naming the rule
        if isinstance(self._redact, SecretRedactor):
            targets = self._redact.redact_value(targets)
        return targets

    # --- stream ----------------------------------------------------------------------

    def _chunk_sink(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any]
    ) -> ChunkEmitter | None:
        """Where a streamed step's tool hands its chunks (None for any other step)."""
        if streamed_chunk_rows(step) is None:
            return None
        if self._partials is None or self._store is None:
            raise ToolError("output.stream needs a worker attached to the engine database")
        partial_arcs = step.next.partial_arcs if step.next else []
        mode = step.next.mode if step.next else "exclusive"

        def targets(chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
            if not partial_arcs:
                return []
            scope = {**namespace, "chunk": chunk,
                     "event": {"name": PARTIAL_EVENT, "step": step.step, "type": "tool.partial"}}
            chosen = _targets(choose(partial_arcs, mode, PARTIAL_EVENT, scope))
            if isinstance(self._redact, SecretRedactor):
                chosen = self._redact.redact_value(chosen)
            return chosen

        scrub = self._redact.redact_value if isinstance(self._redact, SecretRedactor) else None
        return ChunkEmitter(command, self._store, self._partials, targets,
                            output_store=_output_store(step), scrub=scrub)

    # --- loop ------------------------------------------------------------------------

    def _loop(self, step: Step, namespace: dict[str, Any], playbook: Playbook) -> dict[str, Any]:
        assert step.loop is not None
        if step.loop.cursor is not None:
            return self._cursor_loop(step, namespace, playbook)
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

    def _cursor_loop(
        self, step: Step, namespace: dict[str, Any], playbook: Playbook
    ) -> dict[str, Any]:
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

    # --- step ------------------------------------------------------------------------

    def _step(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any],
        playbook: Playbook, results: CommandResults | None = None,
    ) -> Outcome:
        tool_context = dataclasses.replace(self._make_tool_context(command), results=results,
                                           stream=self._chunk_sink(step, command, namespace))
        step_input = render_value(step.input, namespace) if step.input else {}
        try:
            run = self._run_tasks(
                list(step.task_configs), step_input, namespace, command["attempt"], tool_context,
                pipeline=isinstance(step.tool, list), workbook=playbook.workbook,
                workload=playbook.workload, resume=_pipeline_resume(command),
            )
        except ToolError as exc:
            return {"op": "fail", "error": self._redact(f"step '{step.step}': {exc.message}"),
                    "retry_delay": None, "output": exc.output or None}
        if run.stop is not None:
            return run.stop
        result = _apply_step_writes(run.result, run.step_writes)
        ctx_set: dict[str, Any] = dict(run.ctx_writes)
        if step.set:
            scope = {**namespace, step.step: _view(result), "result": result,
                     "output": {"status": "ok", "data": result}}
            writes = render_value(step.set, scope)
            ctx_set.update(_ctx_writes(writes))
            result = _apply_step_writes(result, writes)
        return {"op": "done", "result": result, "ctx_set": ctx_set or None}

    def _run_tasks(
        self,
        tasks: list[dict[str, Any]],
        step_input: Mapping[str, Any],
        namespace: dict[str, Any],
        attempt: int,
        tool_context: ToolContext,
        *,
        pipeline: bool,
        workbook: list[dict[str, Any]],
        workload: Mapping[str, Any] | None = None,
        resume: Mapping[str, Any] | None = None,
    ) -> _TaskRun:
        """Run a tool or a pipeline. Tasks' own `set` and policy `then.set` ctx writes are
        collected in the run's ctx_writes. A playbook task hands the command over to its
        child (an await_child outcome carrying the pipeline so far); when the child is
        done the database queues the command again and `resume` continues after it."""
        run = _TaskRun()
        scope = dict(namespace)
        if pipeline:
            scope.update(_attempt=attempt, _prev=None, _task=None)
            if scope.get("results") is None:
                scope["results"] = {}
        position = 0
        if resume is not None:
            position = int(resume["task_index"])
            run = _TaskRun(done=dict(resume.get("results") or {}),
                           ctx_writes=dict(resume.get("ctx_writes") or {}),
                           step_writes=dict(resume.get("step_writes") or {}))
            for name, value in run.done.items():
                scope[name] = _view(value)
                _pipeline_envelope(scope, name, value)
            if resume.get("iter") is not None:
                scope["iter"] = resume["iter"]
            if run.ctx_writes:
                scope["ctx"] = {**(scope.get("ctx") or {}), **run.ctx_writes}
        while position < len(tasks):
            task = tasks[position]
            name = task.get("name") or f"task_{position + 1}"
            error_kind: str | None = None
            if resume is not None and position == int(resume["task_index"]):
                run.result = resume.get("child_result")
                output: dict[str, Any] = {"status": "ok", "data": run.result}
            else:
                config = self._task_config(task, step_input, scope, workbook, workload)
                options = config.get("spec") or {}
                try:
                    if config.get("kind") == "workbook":
                        config = resolve_task(workbook, config, scope, workload)
                    run.result = self._tool_for(config).run(
                        config, _with_timeout(tool_context, options.get("timeout")))
                    if isinstance(run.result, ChildRequest):
                        return dataclasses.replace(run, stop=self._await_child(
                            run.result, task, scope, attempt,
                            _pipeline_state(run, position, scope, attempt) if pipeline
                            else None))
                    output = {"status": "ok", "data": run.result}
                except ToolError as exc:
                    error_kind = exc.kind
                    output = {"status": "error", "error": exc.message, **exc.output}
            decision = self._decide(task, output, scope, attempt, error_kind)
            _apply_policy_writes(scope, run, decision.set_writes)
            if decision.action == "retry":
                run.stop = {
                    "op": "fail", "error": self._redact(str(output.get("error") or "retry")),
                    "retry_delay": decision.delay_seconds, "output": _output_extra(output),
                }
                return run
            if decision.action == "fail" or (error_kind is not None and
                                             decision.action not in ("continue", "jump", "break")):
                run.stop = {
                    "op": "fail", "error": self._redact(str(output.get("error"))),
                    "retry_delay": None, "output": _output_extra(output),
                }
                return run
            if pipeline:
                scope[name] = _view(run.result)
                run.done[name] = run.result
                _pipeline_envelope(scope, name, run.result)
            if task.get("set"):
                _apply_task_set(task["set"], scope, output, run.ctx_writes)
            if decision.action == "break":
                break
            if decision.action == "jump" and decision.jump_to:
                names = [t.get("name") for t in tasks]
                if decision.jump_to not in names:
                    raise ToolError(f"policy jumps to unknown task '{decision.jump_to}'")
                position = names.index(decision.jump_to)
                continue
            position += 1
        return run

    def _task_config(
        self, task: Mapping[str, Any], step_input: Mapping[str, Any], scope: Mapping[str, Any],
        workbook: list[dict[str, Any]], workload: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """A task's rendered config: `input` over the step's, `spec` without its policy."""
        config = render_tool_config(
            {key: value for key, value in task.items() if key not in ("spec", "retry", "set")},
            scope, playbook_workload=workload,
        )
        if step_input:
            config["input"] = {**step_input, **(config.get("input") or {})}
        options = {k: v for k, v in (task.get("spec") or {}).items() if k != "policy"}
        if options:
            config["spec"] = options
        if config.get("kind") == "python":
            config[CONTEXT_KEY] = python_context(scope)
        return config

    def _tool_for(self, config: Mapping[str, Any]) -> Tool:
        tool = self._tools.get(str(config.get("kind")))
        if tool is None:
            raise ToolError(f"no worker tool for kind '{config.get('kind')}'")
        return tool

    @staticmethod
    def _decide(
        task: Mapping[str, Any], output: Mapping[str, Any], scope: Mapping[str, Any],
        attempt: int, error_kind: str | None,
    ) -> Any:
        """The policy decision; a rule that cannot be evaluated after an error reports
        that error first (the secondary error never hides the cause)."""
        try:
            return decide(task, output, scope, attempt, error_kind)
        except NoetlError as exc:
            if output.get("status") != "error":
                raise
            raise ToolError(
                f"{output.get('error')}; then its policy could not be evaluated: {exc}",
                output=_output_extra(output) or {},
            ) from exc

    def _await_child(
        self, request: ChildRequest, task: Mapping[str, Any], scope: Mapping[str, Any],
        attempt: int, pipeline: dict[str, Any] | None = None,
    ) -> Outcome:
        """The await_child outcome; the retry delay is what policy says for a failed child.
        `pipeline` (a playbook task inside a pipeline) is what the command resumes with."""
        failed = {"status": "error", "error": "child playbook failed"}
        decision = decide(task, failed, scope, attempt, "error")
        outcome = {
            "op": "await_child", "path": request.path, "version": request.version,
            "payload": request.payload, "return_step": request.return_step,
            "retry_delay": decision.delay_seconds if decision.action == "retry" else None,
        }
        if pipeline is not None:
            outcome["pipeline"] = pipeline
        return outcome

    def _store_result(self, step: Step, command: Mapping[str, Any], outcome: Outcome) -> Outcome:
        """A `done` result over the store's inline limit (or any bytes) is written to the
        result store and the outcome carries its ref dict instead; tier fallbacks taken on
        the way go along as `store_fallbacks` (the worker records them as warning events).

        The ref names the result `result` (a loop iteration: `iter_<index>`), suffixed
        `.attempt_<n>` after a retry, so a late stale attempt never overwrites the ref of the
        attempt that completed. A step that runs again replaces its ref, as it replaces its
        step result.
        """
        if self._store is None or outcome.get("op") != "done":
            return outcome
        loop = command.get("loop_id") is not None
        name = f"iter_{command['iter_index']}" if loop else "result"
        if command["attempt"] > 1:
            name += f".attempt_{command['attempt']}"
        try:
            stored = self._store.externalize(
                command["execution_id"], step.step, name, outcome["result"],
                store=_output_store(step),
            )
        except (TypeError, ValueError) as exc:
            raise ToolError(f"result cannot be stored: {exc}") from exc
        outcome["result"] = stored.value
        if stored.fallbacks and stored.ref is not None:
            outcome["store_fallbacks"] = [
                {"tier_from": fallback.tier_from, "tier_to": fallback.tier_to,
                 "error": self._redact(fallback.error), "result_ref": stored.ref.ref}
                for fallback in stored.fallbacks
            ]
        return outcome


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


def _has_conditional_arcs(step: Step) -> bool:
    """Whether the step routes through a router (its plan's route_mode 'router')."""
    arcs = step.next.route_arcs if step.next else []
    return bool(arcs) and direct_targets(arcs, step.next.mode if step.next else
                                         "exclusive") is None


def _refuse_unstorable(outcome: Outcome) -> None:
    """A result, ctx write or child payload PostgreSQL cannot store (a null character, a
    lone surrogate) fails the step naming the field; in a failure, the tool output is
    dropped and the error text escaped."""
    for key in ("result", "ctx_set", "payload"):
        problem = storage_problem(outcome.get(key), key)
        if problem:
            raise ToolError(problem)
    if storage_problem(outcome.get("output")):
        outcome["output"] = None
    if isinstance(outcome.get("error"), str) and storage_problem(outcome["error"]):
        # Free text: escaping the offending characters keeps the message readable.
        outcome["error"] = outcome["error"].encode("utf-8", "backslashreplace").decode(
            "utf-8").replace("\x00", "\\x00")


def python_context(scope: Mapping[str, Any]) -> dict[str, Any]:
    """NoETL's `context` global of a python task: the execution's identity, workload and
    ctx, and the iteration of a loop (plain JSON; step results stay templates' business)."""
    context = {key: _plain(scope.get(key)) for key in ("execution_id", "job", "workload", "ctx")}
    for key in ("iter", "loop"):
        if scope.get(key) is not None:
            context[key] = _plain(scope[key])
    return context


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _with_timeout(context: ToolContext, timeout: Any) -> ToolContext:
    """`spec.timeout` (seconds, or {read: N}) as the tool's time budget."""
    if isinstance(timeout, Mapping):
        timeout = timeout.get("read") or timeout.get("total") or timeout.get("seconds")
    if timeout is None or isinstance(timeout, bool):
        return context
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise ToolError(f"spec.timeout must be a number of seconds, got {timeout!r}") from None
    return dataclasses.replace(context, timeout_seconds=seconds)


def _output_store(step: Step) -> str | None:
    """`output.store` of the step's tool (of its last task for a pipeline): a forced tier."""
    tool = step.tool[-1] if isinstance(step.tool, list) else step.tool
    output = (tool.model_extra or {}).get("output") if tool is not None else None
    store = output.get("store") if isinstance(output, Mapping) else None
    return str(store) if store else None


def _view(result: Any) -> Any:
    return ResultView(result) if isinstance(result, dict) else result


def _output_extra(output: Mapping[str, Any]) -> dict[str, Any] | None:
    extra = {key: value for key, value in output.items() if key not in ("status", "error")}
    return extra or None


def _targets(chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chosen arcs as noetl.apply_route and noetl.record_partial take them: each `set` as
    its ctx writes."""
    return [{"step": target["step"], "set": _ctx_writes(target["set"]) if target["set"]
             else None} for target in chosen]


def _ctx_writes(writes: Mapping[str, Any] | None) -> dict[str, Any]:
    """`set` keys `ctx.x` (or bare `x`) become ctx writes; `step.*`/`iter.*` are not ctx."""
    ctx: dict[str, Any] = {}
    for key, value in (writes or {}).items():
        if key.startswith("ctx."):
            ctx[key[4:]] = value
        elif not key.startswith(("step.", "iter.")):
            ctx[key] = value
    return ctx


def _apply_step_writes(result: Any, writes: Mapping[str, Any]) -> Any:
    step_writes = {key[5:]: value for key, value in writes.items() if key.startswith("step.")}
    if not step_writes:
        return result
    merged = dict(result) if isinstance(result, Mapping) else {"data": result}
    merged.update(step_writes)
    return merged


def _pipeline_envelope(scope: dict[str, Any], name: str, result: Any) -> None:
    """NoETL's pipeline names after a task: `_prev` (its result), `_task` (its name) and
    `results.<task>` (every task so far), beside the task's own name."""
    scope["_prev"] = _view(result)
    scope["_task"] = name
    if isinstance(scope.get("results"), dict):
        scope["results"] = {**scope["results"], name: _view(result)}


def _apply_task_set(writes: Mapping[str, Any], scope: dict[str, Any], output: Mapping[str, Any],
                    task_ctx: dict[str, Any] | None) -> None:
    """A task's own `set`, rendered after it ran with `output` in scope: `iter.*` and
    `ctx.*` writes are visible to later tasks; ctx writes also go to the execution."""
    rendered = render_value(dict(writes), {**scope, "output": dict(output)})
    _apply_iter_writes(scope, rendered)
    ctx = _ctx_writes(rendered)
    if ctx:
        scope["ctx"] = {**(scope.get("ctx") or {}), **ctx}
        scope.update(ctx)
        if task_ctx is not None:
            task_ctx.update(ctx)


def _apply_iter_writes(scope: dict[str, Any], writes: Mapping[str, Any]) -> None:
    """Policy/`set` writes to `iter.*` are visible to later tasks of the same iteration."""
    iter_writes = {key[5:]: value for key, value in writes.items() if key.startswith("iter.")}
    if iter_writes:
        scope["iter"] = {**(scope.get("iter") or {}), **iter_writes}


@dataclasses.dataclass
class _TaskRun:
    """What running a step's tasks produced: the last result, the results of finished
    pipeline tasks by name, the policy `set` writes to ctx and to the step result, and
    the fail or await_child outcome that stopped the run (None: the tasks are done)."""

    result: Any = None
    done: dict[str, Any] = dataclasses.field(default_factory=dict)
    ctx_writes: dict[str, Any] = dataclasses.field(default_factory=dict)
    step_writes: dict[str, Any] = dataclasses.field(default_factory=dict)
    stop: Outcome | None = None


def _apply_policy_writes(scope: dict[str, Any], run: _TaskRun, writes: Mapping[str, Any]) -> None:
    """A policy rule's `then.set`: `iter.*` is visible to later tasks of the iteration,
    `ctx.*` (or a bare name) to later tasks and, with the step's outcome, to later steps,
    `step.*` lands in the step's result."""
    if not writes:
        return
    iter_writes = {key[5:]: value for key, value in writes.items() if key.startswith("iter.")}
    if iter_writes:
        scope["iter"] = {**(scope.get("iter") or {}), **iter_writes}
    ctx_writes = _ctx_writes(writes)
    if ctx_writes:
        run.ctx_writes.update(ctx_writes)
        ctx = scope.get("ctx")
        scope["ctx"] = {**(ctx if isinstance(ctx, Mapping) else {}), **ctx_writes}
    run.step_writes.update(
        {key: value for key, value in writes.items() if key.startswith("step.")})


def _pipeline_state(
    run: _TaskRun, position: int, scope: Mapping[str, Any], attempt: int
) -> dict[str, Any]:
    """What a pipeline parked on a playbook task resumes with (stored with the command)."""
    iter_scope = scope.get("iter")
    return {
        "attempt": attempt, "task_index": position, "results": dict(run.done),
        "ctx_writes": dict(run.ctx_writes), "step_writes": dict(run.step_writes),
        "iter": dict(iter_scope) if isinstance(iter_scope, Mapping) else None,
    }


def _pipeline_resume(command: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The parked pipeline of this attempt (a retry starts the pipeline afresh)."""
    state = (command.get("input") or {}).get("pipeline")
    if isinstance(state, Mapping) and state.get("attempt") == command["attempt"]:
        return state
    return None
