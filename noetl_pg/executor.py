"""Run one claimed command and say what happened, as an outcome for finish_and_claim.

This module computes; it never writes engine state. A step command runs its tool (or a
pipeline of tasks), each task rendered, run and judged by its policy (the run's state:
noetl_pg.pipeline), renders its `set` writes and returns a `done` or `fail` outcome; its
templates see the command's namespace (noetl_pg.namespace). A loop command returns a
`loop` outcome with its rendered collection (noetl_pg.loop_start). A route command
evaluates the step's arcs and returns the chosen targets. A `playbook` step returns an
`await_child` outcome: the database parks the command and starts the child
(sql/functions/child.sql). Secrets (credential secrets the worker has read, keychain
values) are redacted from every error, result, ctx write and child payload before they
leave the worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Generator, Mapping
from typing import Any

from noetl_pg import protocol
from noetl_pg.credentials import for_command
from noetl_pg.dsl import Playbook, Step
from noetl_pg.errors import NoetlError, ToolError
from noetl_pg.jsoncheck import storage_problem
from noetl_pg.keychain import SecretRedactor
from noetl_pg.loop_start import loop_outcome
from noetl_pg.namespace import StoredReads, command_namespace, python_context
from noetl_pg.pipeline import (
    TaskCall,
    TaskRun,
    apply_policy_writes,
    apply_step_writes,
    ctx_writes,
    next_task,
    pipeline_resume,
    pipeline_state,
    start_run,
)
from noetl_pg.policy import Decision, decide
from noetl_pg.results import CommandResults
from noetl_pg.router import choose, direct_targets, route_scope
from noetl_pg.sqlrender import render_tool_config
from noetl_pg.store import ResultStore
from noetl_pg.stream import (
    PARTIAL_EVENT,
    ChunkEmitter,
    ChunkSink,
    PartialRecorder,
    streamed_chunk_rows,
)
from noetl_pg.template_reads import Uses
from noetl_pg.templating import render_value, result_view
from noetl_pg.tool_calls import CommandRun, run_alone
from noetl_pg.tools import CONTEXT_KEYS
from noetl_pg.tools.base import (
    CredentialResolver,
    ResultAccess,
    Tool,
    ToolCall,
    ToolContext,
)
from noetl_pg.tools.playbook import ChildRequest
from noetl_pg.tools.workbook import WorkbookTool
from noetl_pg.workbook_call import resolve_task

Outcome = dict[str, Any]


class _CauseKept(NoetlError):
    """An error whose message already leads with its cause (and names the step)."""


class CommandRunner:
    """Turns a claimed command row into an outcome. One per worker, shared by its slots."""

    def __init__(
        self,
        tools: Mapping[str, Tool],
        spec_loader: Callable[[int], Playbook],
        make_tool_context: Callable[
            [Mapping[str, Any], ResultAccess | None, ChunkSink | None], ToolContext],
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
        # The ToolContext of a command, given its stored results and its chunk sink (built
        # with them: a dataclasses.replace per command costs more than building it).
        self._make_tool_context = make_tool_context
        self._redact = redact
        self._credentials = credentials
        # Results over the store's inline limit are written to it; refs are resolved by it.
        self._store = store
        # Where a streamed step records its chunks (noetl_pg.stream); None: no streams.
        self._partials = partials

    def run(self, command: Mapping[str, Any], context: Mapping[str, Any]) -> protocol.Outcome:
        """Run one claimed command (a ClaimedCommand row); the outcome to send for it."""
        return run_alone(self.start(command, context))

    def start(self, command: Mapping[str, Any], context: Mapping[str, Any]) -> CommandRun:
        """Run one claimed command, yielding each tool call it needs and sent the call's
        TaskCall (noetl_pg.tool_calls); returns the outcome to send for it."""
        playbook = self._spec_loader(command["catalog_id"])
        step = playbook.step_named(command["step_name"])
        results = CommandResults(self._store) if self._store is not None else None
        try:
            return protocol.as_outcome(
                (yield from self._run(command, context, playbook, step, results)))
        finally:
            if results is not None:
                results.close()

    def _run(
        self, command: Mapping[str, Any], context: Mapping[str, Any], playbook: Playbook,
        step: Step, results: CommandResults | None,
    ) -> Generator[ToolCall, TaskCall, Outcome]:
        # Credentials are narrowed to this command only for a keychain to read them.
        credentials = (for_command(self._credentials, self._worker_id, command)
                       if playbook.keychain else None)
        uses = playbook.command_uses[step.step]
        kind = command["kind"]
        stored = StoredReads(context, results)
        # loop_id lets finish_and_claim skip the loop fast path for batches without iterations.
        base = {"command_id": command["command_id"], "attempt": command["attempt"],
                "loop_id": command.get("loop_id")}
        try:
            # The stored results the command's templates read are loaded here, before any
            # renders (a ref that cannot be read fails the command, naming the step).
            namespace = command_namespace(
                command, context, step, playbook, stored,
                uses.shared if kind == "route" else uses.loop if kind == "loop" else uses.step,
                credentials=credentials, with_refs=results is not None,
                redactor=self._redact if isinstance(self._redact, SecretRedactor) else None,
            )
            if kind == "route":
                targets = self._route_keeping_cause(step, command, namespace, stored,
                                                    uses.arcs)
                # After call.error an unmatched route fails with the step's own error (SQL).
                event = (command.get("input") or {}).get("event")
                if not targets and playbook.no_next_is_error and event != "call.error":
                    raise NoetlError("no arc matched (executor.spec.no_next_is_error)")
                return {**base, "op": "route", "targets": targets}
            if kind == "loop":
                return {**base, "op": "loop", **loop_outcome(step, namespace, playbook)}
            outcome = self._scrub(
                (yield from self._step(step, command, namespace, playbook, stored, results)))
            _refuse_unstorable(outcome)
            fused = self._fused_targets(step, command, namespace, outcome, playbook, stored)
            outcome = self._store_result(step, command, outcome)
            return {**base, **outcome, **({"targets": fused} if fused is not None else {})}
        except NoetlError as exc:
            message = str(exc) if isinstance(exc, _CauseKept) else f"step '{step.step}': {exc}"
            return {**base, "op": "fail", "error": self._redact(message), "retry_delay": None}

    def _route_keeping_cause(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any],
        stored: StoredReads, arc_uses: Uses,
    ) -> list[dict[str, Any]]:
        """Arcs after an error that cannot be evaluated fail the run with the step's own
        error first: the secondary error never hides the cause."""
        route_input = command.get("input") or {}
        try:
            return self._route(step, command, namespace, stored, arc_uses)
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

    # --- route -----------------------------------------------------------------------

    def _route(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any],
        stored: StoredReads, arc_uses: Uses, *, skip: Collection[str] = (),
    ) -> list[dict[str, Any]]:
        """The targets of the step's arcs, the stored results they read (`arc_uses`)
        loaded first (`skip`: steps whose value in `namespace` is not the claim's)."""
        stored.load(namespace, arc_uses, own=step.step, skip=skip)
        command_input = command.get("input") or {}
        event = command_input.get("event", "call.done")
        scope = route_scope(namespace, step.step, event, command_input.get("error"))
        arcs = step.next.route_arcs if step.next else []
        return _targets(choose(arcs, step.next.mode if step.next else "exclusive", event,
                               scope))

    def _fused_targets(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any],
        outcome: Outcome, playbook: Playbook, stored: StoredReads,
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
        scope[step.step] = result_view(outcome.get("result"))
        ctx_set = outcome.get("ctx_set") or {}
        if ctx_set:
            scope["ctx"] = {**(scope.get("ctx") or {}), **ctx_set}
            # Bare ctx keys, as build_context makes them: a step's name wins over them.
            steps = playbook.steps_by_name
            scope.update({key: value for key, value in ctx_set.items() if key not in steps})
        try:
            targets = self._route(step, {"input": {"event": "call.done"}}, scope, stored,
                                  playbook.command_uses[step.step].arcs, skip={step.step})
        except NoetlError:
            return None
        if not targets and playbook.no_next_is_error:
            return None  # the route command fails the execution, naming the rule
        if isinstance(self._redact, SecretRedactor):
            targets = self._redact.redact_value(targets)
        return targets

    # --- stream ----------------------------------------------------------------------

    def _chunk_sink(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any],
        stored: StoredReads, partial_uses: Uses,
    ) -> ChunkEmitter | None:
        """Where a streamed step's tool hands its chunks (None for any other step). Its
        `call.partial` arcs see the namespace with the stored results they read, loaded
        at the first chunk."""
        if streamed_chunk_rows(step) is None:
            return None
        if self._partials is None or self._store is None:
            raise ToolError("output.stream needs a worker attached to the engine database")
        partial_arcs = step.next.partial_arcs if step.next else []
        mode = step.next.mode if step.next else "exclusive"
        arcs_namespace: dict[str, Any] = {}

        def targets(chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
            if not partial_arcs:
                return []
            if not arcs_namespace:
                arcs_namespace.update(namespace)
                stored.load(arcs_namespace, partial_uses)
            scope = {**arcs_namespace, "chunk": chunk,
                     "event": {"name": PARTIAL_EVENT, "step": step.step, "type": "tool.partial"}}
            chosen = _targets(choose(partial_arcs, mode, PARTIAL_EVENT, scope))
            if isinstance(self._redact, SecretRedactor):
                chosen = self._redact.redact_value(chosen)
            return chosen

        scrub = self._redact.redact_value if isinstance(self._redact, SecretRedactor) else None
        return ChunkEmitter(command, self._store, self._partials, targets,
                            output_store=_output_store(step), scrub=scrub)


    # --- step ------------------------------------------------------------------------

    def _step(
        self, step: Step, command: Mapping[str, Any], namespace: dict[str, Any],
        playbook: Playbook, stored: StoredReads, results: CommandResults | None = None,
    ) -> Generator[ToolCall, TaskCall, Outcome]:
        sink = self._chunk_sink(step, command, namespace, stored,
                                playbook.command_uses[step.step].partial_arcs)
        tool_context = self._make_tool_context(command, results, sink)
        step_input = render_value(step.input, namespace) if step.input else {}
        try:
            run = yield from self._run_tasks(
                list(step.task_configs), step_input, namespace, command["attempt"], tool_context,
                pipeline=isinstance(step.tool, list), workbook=playbook.workbook,
                workload=playbook.workload, resume=pipeline_resume(command),
            )
        except ToolError as exc:
            return {"op": "fail", "error": self._redact(f"step '{step.step}': {exc.message}"),
                    "retry_delay": None, "output": exc.output or None}
        if run.stop is not None:
            return run.stop
        result = apply_step_writes(run.result, run.step_writes)
        ctx_set: dict[str, Any] = dict(run.ctx_writes)
        if step.set:
            scope = {**namespace, step.step: result_view(result), "result": result,
                     "output": {"status": "ok", "data": result}}
            writes = render_value(step.set, scope)
            ctx_set.update(ctx_writes(writes))
            result = apply_step_writes(result, writes)
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
    ) -> Generator[ToolCall, TaskCall, TaskRun]:
        """Run a tool or a pipeline, each task in four phases: render its config, run its
        tool, decide by its policy, go to the next task. Tasks' own `set` and policy
        `then.set` ctx writes are collected in the run's ctx_writes. A playbook task hands
        the command over to its child (an await_child outcome carrying the pipeline so
        far); when the child is done the database queues the command again and `resume`
        continues at that task, with the child's result as the task's."""
        run, scope, first = start_run(namespace, attempt, pipeline=pipeline, resume=resume)
        resumed_at = int(resume["task_index"]) if resume is not None else None
        child_result = resume.get("child_result") if resume is not None else None
        position: int | None = first
        while position is not None and position < len(tasks):
            task = tasks[position]
            if position == resumed_at:
                call = TaskCall.ok(child_result)
            else:
                call = yield from self._run_task(
                    self._render_task(task, step_input, scope, workload), tool_context, scope,
                    workbook, workload)
            if isinstance(call.result, ChildRequest):
                return dataclasses.replace(run, result=call.result, stop=self._await_child(
                    call.result, task, scope, attempt,
                    pipeline_state(run, position, scope, attempt) if pipeline else None))
            if call.error_kind is None:
                run.result = call.result
            decision, run.stop = self._decide(task, call, scope, attempt, run)
            if run.stop is not None:
                return run
            position = next_task(tasks, position, call, decision, scope, run, pipeline=pipeline)
        return run

    @staticmethod
    def _render_task(
        task: Mapping[str, Any], step_input: Mapping[str, Any], scope: Mapping[str, Any],
        workload: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Render: the task's config as its tool reads it, templates rendered with `scope`
        (SQL text escaped, noetl_pg.sqlrender): `input` over the step's, `spec` without
        its policy, and NoETL's `context` global for a kind that takes it (python). A
        template that cannot render raises, and the step fails without its policy being
        asked."""
        config = render_tool_config(
            {key: value for key, value in task.items() if key not in ("spec", "retry", "set")},
            scope, playbook_workload=workload,
        )
        if step_input:
            config["input"] = {**step_input, **(config.get("input") or {})}
        options = {k: v for k, v in (task.get("spec") or {}).items() if k != "policy"}
        if options:
            config["spec"] = options
        context_key = CONTEXT_KEYS.get(str(config.get("kind")))
        if context_key is not None:
            config[context_key] = python_context(scope)
        return config

    def _run_task(
        self, config: dict[str, Any], tool_context: ToolContext, scope: Mapping[str, Any],
        workbook: list[dict[str, Any]], workload: Mapping[str, Any] | None,
    ) -> Generator[ToolCall, TaskCall, TaskCall]:
        """Run: the task's tool called with its rendered config, within its
        `spec.timeout` (the tool context carries the execution's cancel event): yielded
        as a ToolCall, for the caller to run now or with other commands' calls
        (noetl_pg.tool_calls). A workbook call runs the workbook entry it names,
        resolved here. A ToolError (no tool of the kind, a bad timeout, the tool's own
        failure) is the call's error, for the policy to judge; a playbook task's result
        is the ChildRequest to start."""
        options = config.get("spec") or {}
        try:
            if config.get("kind") == WorkbookTool.kind:
                config = resolve_task(workbook, config, scope, workload)
            call = ToolCall(self._tool_for(config), config,
                            _with_timeout(tool_context, options.get("timeout")))
        except ToolError as exc:
            return TaskCall.failed(exc)
        return (yield call)

    def _tool_for(self, config: Mapping[str, Any]) -> Tool:
        tool = self._tools.get(str(config.get("kind")))
        if tool is None:
            raise ToolError(f"no worker tool for kind '{config.get('kind')}'")
        return tool

    def _decide(
        self, task: Mapping[str, Any], call: TaskCall, scope: dict[str, Any], attempt: int,
        run: TaskRun,
    ) -> tuple[Decision, Outcome | None]:
        """Decide: the task's policy on its call, with the rule's `then.set` applied to
        the scope and the run (pipeline.apply_policy_writes), and the fail outcome that
        stops the run, if any: a retry (with its delay), a fail, or an error the policy
        does not continue, break or jump past."""
        output = call.output
        decision = _policy_decision(task, output, scope, attempt, call.error_kind)
        apply_policy_writes(scope, run, decision.set_writes)
        if decision.action == "retry":
            return decision, {
                "op": "fail", "error": self._redact(str(output.get("error") or "retry")),
                "retry_delay": decision.delay_seconds, "output": _output_extra(output),
            }
        if decision.action == "fail" or (call.error_kind is not None and
                                         decision.action not in ("continue", "jump", "break")):
            return decision, {
                "op": "fail", "error": self._redact(str(output.get("error"))),
                "retry_delay": None, "output": _output_extra(output),
            }
        return decision, None

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


def _policy_decision(
    task: Mapping[str, Any], output: Mapping[str, Any], scope: Mapping[str, Any],
    attempt: int, error_kind: str | None,
) -> Decision:
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

def _output_extra(output: Mapping[str, Any]) -> dict[str, Any] | None:
    extra = {key: value for key, value in output.items() if key not in ("status", "error")}
    return extra or None


def _targets(chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chosen arcs as noetl.apply_route and noetl.record_partial take them: each `set` as
    its ctx writes."""
    return [{"step": target["step"], "set": ctx_writes(target["set"]) if target["set"]
             else None} for target in chosen]

