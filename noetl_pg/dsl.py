"""The playbook language: pydantic models, YAML loading, normalisation and the routing plan.

`load_playbook(text)` turns YAML into a validated `Playbook`. Every key is first checked
against what this engine runs (noetl_pg.dsl_keys: run it or refuse it), then the older
forms (case/when/then with `then` as a dict or a list of actions, `else` branches, list
and string `next`, conditional `next` lists, `mode: async`, `concurrency`, `tool.args`,
`payload` on playbook tools, `when: true`) are normalised into the canonical form.
`Playbook.to_spec()` is the JSON stored in `noetl.catalog.spec`: the canonical
playbook plus, on each step, the `plan` that the SQL router reads (see
sql/functions/catalog.sql). Every error is a `PlaybookError` naming the playbook, the step
and the field, with a line number where the YAML has one.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from noetl_pg import router, settings
from noetl_pg.dsl_keys import (
    STORE_TIERS,
    Path,
    check_document,
    is_branch,
    key_lines,
    spelled_arc,
)
from noetl_pg.errors import PlaybookError
from noetl_pg.policy import DEFAULT_RULE_ATTEMPTS
from noetl_pg.stream import check_streams
from noetl_pg.template_reads import (
    CommandUses,
    merge_uses,
    template_strings,
    template_uses,
    uses_of,
)
from noetl_pg.tools import INPUT_ALIASES, STREAM_KINDS, tool_config_keys
from noetl_pg.tools.workbook import WorkbookTool
from noetl_pg.yamlbound import load_bounded, text_bytes

DEFAULT_PARALLEL_IN_FLIGHT = 10
# The `when` of a case `else` branch's arcs: taken after any event once no branch held.
CASE_ELSE_WHEN = "{{ true }}"


def max_playbook_bytes() -> int:
    """The largest playbook accepted: NOETL_MAX_PLAYBOOK_BYTES, default 1 MiB."""
    return settings.current().max_playbook_bytes


class _Model(BaseModel):
    # dsl_keys refused every key we do not run before these models see the document; a key
    # that got past it and has no field here is a bug, so it is an error, not dropped.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RetrySpec(_Model):
    max_attempts: int = Field(1, ge=1)
    retry_on: list[str] = Field(default_factory=lambda: ["error", "timeout"])
    backoff: Literal["none", "linear", "exponential"] | float = "none"
    delay: float = Field(0.0, ge=0)


class ToolSpec(_Model):
    # The kind's own keys (url, code, ...) are extra; dsl_keys checked them per kind.
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    kind: str
    name: str | None = None
    retry: RetrySpec | None = None


class LoopRunSpec(_Model):
    mode: Literal["sequential", "parallel", "cursor"] = "sequential"
    # An integer, or a template rendered when the loop starts (executor._loop checks it).
    max_in_flight: int | str | None = None
    policy: dict[str, Any] | None = None
    loop_mode: str | None = None
    fanout: dict[str, Any] | None = None
    # Iterations that failed after their retries fail the loop step unless this says
    # `continue` (NoETL has no spelling for it; see sql/functions/fanin.sql close_loop).
    on_error: Literal["fail", "continue"] = "fail"


class CursorSpec(_Model):
    """NoETL's CursorSpec: a claim statement run on `auth`'s database (noetl_pg.cursor)."""

    kind: Literal["postgres"]
    auth: str
    claim: str
    options: dict[str, Any] | None = None


class LoopSpec(_Model):
    in_: Any = Field(None, alias="in")
    # A pull-model loop (loop.cursor): no collection; see sql/functions/cursor_loop.sql.
    cursor: CursorSpec | None = None
    iterator: str = "item"
    spec: LoopRunSpec = Field(default_factory=LoopRunSpec)

    @model_validator(mode="after")
    def _one_source(self) -> LoopSpec:
        if self.cursor is None and self.in_ is None:
            raise ValueError("a loop needs `in` (a collection) or `cursor`")
        return self

    @property
    def is_fanout(self) -> bool:
        policy_exec = (self.spec.policy or {}).get("exec")
        return policy_exec == "distributed" or self.spec.loop_mode == "fanout"

    @field_validator("spec")
    @classmethod
    def _bound_is_positive(cls, spec: LoopRunSpec) -> LoopRunSpec:
        bound = spec.max_in_flight
        if isinstance(bound, bool) or (isinstance(bound, int) and bound < 1):
            raise ValueError(f"max_in_flight must be an integer >= 1, got {bound!r}")
        if isinstance(bound, str) and "{{" not in bound:
            raise ValueError(f"max_in_flight must be an integer >= 1 or a template, "
                             f"got {bound!r}")
        return spec

    @property
    def in_flight_bound(self) -> int:
        """The static bound (a templated one is known when the loop starts)."""
        if self.spec.mode == "sequential" and self.cursor is None:
            return 1
        bound = self.spec.max_in_flight
        return bound if isinstance(bound, int) else DEFAULT_PARALLEL_IN_FLIGHT


class Arc(_Model):
    step: str
    when: str | None = None
    set: dict[str, Any] | None = None
    # The older case/when/then branch this arc came from: one branch is one choice (see
    # noetl_pg.router). None for canonical arcs.
    group: int | None = None
    # `call.partial`: taken per chunk of a streamed step, never when it ends
    # (noetl_pg.stream). None: an arc of the step's end (call.done, call.error, loop.done).
    on: Literal["call.partial"] | None = None


class NextSpec(_Model):
    spec: dict[str, Any] = Field(default_factory=dict)
    arcs: list[Arc] = Field(default_factory=list)

    @property
    def mode(self) -> str:
        return str(self.spec.get("mode", "exclusive"))

    @property
    def route_arcs(self) -> list[Arc]:
        """The arcs evaluated when the step ends (every arc but `on: call.partial`)."""
        return [arc for arc in self.arcs if arc.on is None]

    @property
    def partial_arcs(self) -> list[Arc]:
        """The `on: call.partial` arcs, evaluated per chunk of a streamed step."""
        return [arc for arc in self.arcs if arc.on is not None]


class Step(_Model):
    step: str
    desc: str | None = None
    description: str | None = None
    tool: ToolSpec | list[ToolSpec] | None = None
    input: dict[str, Any] | None = None
    loop: LoopSpec | None = None
    set: dict[str, Any] | None = None
    next: NextSpec | None = None

    @cached_property
    def task_configs(self) -> tuple[dict[str, Any], ...]:
        """The tool (one task) or pipeline tasks as plain JSON, computed once per step:
        a loop runs the same step thousands of times. Callers must not mutate them."""
        tools = self.tool if isinstance(self.tool, list) else [self.tool] if self.tool else []
        return tuple(task.model_dump(mode="json", exclude_none=True) for task in tools)

    @model_validator(mode="before")
    @classmethod
    def _drop_plan(cls, data: Any) -> Any:
        # A stored spec carries the plan to_spec derived; it is rebuilt, never read back.
        if isinstance(data, dict) and "plan" in data:
            data = {key: value for key, value in data.items() if key != "plan"}
        return data


class Playbook(_Model):
    apiVersion: str = "noetl.io/v2"
    kind: str = "Playbook"
    metadata: dict[str, Any] = Field(default_factory=dict)
    workload: dict[str, Any] = Field(default_factory=dict)
    workbook: list[dict[str, Any]] = Field(default_factory=list)
    workflow: list[Step]
    executor: dict[str, Any] | None = None
    keychain: list[dict[str, Any]] | dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_entry_step(cls, data: Any) -> Any:
        # A stored spec carries what registration derived for SQL: the entry_step (the
        # property below) and the command budget (noetl_pg.budget).
        if isinstance(data, dict) and data.keys() & {"entry_step", "max_commands"}:
            data = {key: value for key, value in data.items()
                    if key not in ("entry_step", "max_commands")}
        return data

    @property
    def path(self) -> str:
        return str(self.metadata.get("path") or self.metadata.get("name") or "")

    @property
    def entry_step(self) -> str:
        entry = ((self.executor or {}).get("spec") or {}).get("entry_step")
        return str(entry) if entry else self.workflow[0].step

    @property
    def no_next_is_error(self) -> bool:
        """executor.spec.no_next_is_error: a step whose arcs all fail to match fails."""
        return bool(((self.executor or {}).get("spec") or {}).get("no_next_is_error"))

    def step_named(self, name: str) -> Step:
        try:
            return self.steps_by_name[name]
        except KeyError:
            raise KeyError(name) from None

    @cached_property
    def steps_by_name(self) -> dict[str, Step]:
        """The steps by name, for lookups per command that a long chain would make
        quadratic as a scan (names are unique: registration refuses a repeated one)."""
        return {step.step: step for step in self.workflow}

    @cached_property
    def step_name_set(self) -> frozenset[str]:
        return frozenset(self.steps_by_name)

    @cached_property
    def step_names_read(self) -> dict[str, tuple[str, ...]]:
        """Per step, the step names any of its commands' templates (arcs included) may
        read: the namespace gives those that have not run None (noetl_pg.namespace), and
        only those, so a command of a long chain does not pay for every step. Every step
        when a template of it does not parse (anything may then be read)."""
        names = self.steps_by_name
        read: dict[str, tuple[str, ...]] = {}
        for step_name, uses in self.command_uses.items():
            merged = merge_uses(uses.step, uses.loop, uses.shared, uses.arcs,
                                uses.partial_arcs)
            read[step_name] = (tuple(names) if merged is None
                               else tuple(sorted(name for name in merged if name in names)))
        return read

    @cached_property
    def command_uses(self) -> dict[str, CommandUses]:
        """Per step, what each kind of its commands reads (noetl_pg.template_reads),
        computed once per playbook: the executor loads the stored results a command
        reads before it renders (noetl_pg.namespace)."""
        return {step.step: _command_uses(step, self) for step in self.workflow}

    def to_spec(self) -> dict[str, Any]:
        """The canonical JSON stored in the catalog, each step with its routing plan."""
        spec = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        spec["entry_step"] = self.entry_step
        plans = build_plans(self)
        for step_json in spec["workflow"]:
            step_json["plan"] = plans[step_json["step"]]
        return spec


def build_plans(playbook: Playbook) -> dict[str, dict[str, Any]]:
    """Per step: what SQL needs to route without Jinja (see noetl.catalog_step)."""
    successors: dict[str, list[str]] = {
        step.step: [arc.step for arc in (step.next.arcs if step.next else [])]
        for step in playbook.workflow
    }
    joins = router.join_steps(successors)

    plans: dict[str, dict[str, Any]] = {}
    for step in playbook.workflow:
        arcs = step.next.route_arcs if step.next else []
        direct = router.direct_targets(arcs, step.next.mode if step.next else "exclusive")
        if not arcs:
            route_mode, direct_targets = "none", []
        elif direct is not None:
            route_mode, direct_targets = "direct", direct
        else:
            route_mode, direct_targets = "router", []
        plans[step.step] = {
            "kind": _plan_kind(step),
            "route_mode": route_mode,
            "direct_targets": direct_targets,
            "is_join": step.step in joins,
            "has_loop": step.loop is not None,
            # Arc targets only: what a step can reach is computed from them when needed
            # (noetl.reachable_steps), so the plan stays linear in the playbook's size.
            "successors": list(dict.fromkeys(successors[step.step])),
            "max_attempts": _max_attempts(step),
            **_reads(step, playbook),
        }
        if step.next and step.next.partial_arcs:
            # What noetl.record_partial may issue per chunk (sql/functions/stream.sql).
            plans[step.step]["partial_targets"] = [arc.step for arc in step.next.partial_arcs]
    return plans


def _plan_kind(step: Step) -> str:
    if isinstance(step.tool, list):
        return "pipeline"
    return step.tool.kind if step.tool else "noop"


def _max_attempts(step: Step) -> int:
    tools = step.tool if isinstance(step.tool, list) else [step.tool] if step.tool else []
    attempts = 1
    for tool in tools:
        if tool.retry:
            attempts = max(attempts, tool.retry.max_attempts)
        rules = ((tool.model_extra or {}).get("spec") or {}).get("policy", {}).get("rules", [])
        for rule in rules or []:
            then = (rule.get("then") or (rule.get("else") or {}).get("then") or {})
            if then.get("do") == "retry":
                attempts = max(attempts, int(then.get("attempts", DEFAULT_RULE_ATTEMPTS)))
    return attempts


# --- what a step reads ----------------------------------------------------------------
#
# A claim sends a command only the earlier step results its templates name (see
# noetl.command_context): a loop of 10,000 iterations over `{{ start.xs }}` must not ship
# `start` with every claim. A plan's `reads` maps a step name to the top-level keys of its
# result that are read (a list) or to `true` (the whole result); `null` means "could not
# tell, send every result". `reads` is for the step's own commands (a loop's iterations);
# `loop_reads` for the command that renders a loop's collection.



# Keys of a step that are never rendered.
_UNRENDERED_STEP_KEYS = frozenset({"step", "desc"})
StepReads = dict[str, Any] | None


def _reads(step: Step, playbook: Playbook) -> dict[str, StepReads]:
    """The plan's `reads` and `loop_reads` of `step` (see above)."""
    step_names = playbook.step_name_set
    body, loop_part, extras = _rendered_parts(step, playbook)
    reads = _names_read([body, *extras], step_names)
    if reads is not None and step.loop is not None:
        # Iterations never see their own loop's aggregate (nor other iterations' results).
        reads.pop(step.step, None)
    loop_reads = (_names_read([loop_part, *extras], step_names)
                  if step.loop is not None else {})
    return {"reads": reads, "loop_reads": loop_reads}


def _rendered_parts(step: Step, playbook: Playbook) -> tuple[dict[str, Any], list[Any],
                                                               list[Any]]:
    """What `step` renders, as JSON: its body (tool, input, set, next), what its loop
    command renders (loop.in, cursor, spec) and what every command may render (the
    playbook's keychain; its workbook when a task calls it)."""
    body = step.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key in _UNRENDERED_STEP_KEYS:
        body.pop(key, None)
    loop_part = body.pop("loop", None) or {}
    # The loop's run options (max_in_flight) are rendered by the loop command, not by
    # iterations; the iterator name is not a template.
    extras: list[Any] = [playbook.keychain]
    tasks = step.tool if isinstance(step.tool, list) else [step.tool] if step.tool else []
    if any(task.kind == WorkbookTool.kind for task in tasks):
        extras.append(playbook.workbook)
    return body, [loop_part.get("in"), loop_part.get("cursor"), loop_part.get("spec")], extras


def _command_uses(step: Step, playbook: Playbook) -> CommandUses:
    body, loop_part, extras = _rendered_parts(step, playbook)
    body.pop("next", None)
    arcs = step.next.route_arcs if step.next else []
    partial_arcs = step.next.partial_arcs if step.next else []
    return CommandUses(
        step=uses_of([body, *extras]),
        loop=uses_of([*loop_part, *extras]),
        shared=uses_of(extras),
        arcs=uses_of([arc.model_dump(mode="json", exclude_none=True) for arc in arcs]),
        partial_arcs=uses_of([arc.model_dump(mode="json", exclude_none=True)
                              for arc in partial_arcs]),
    )


def _names_read(values: list[Any], step_names: frozenset[str]) -> StepReads:
    """Union of the step results the templates inside `values` read; None if unknown."""
    reads: dict[str, Any] = {}
    for source in template_strings(values):
        found = _template_reads(source, step_names)
        if found is None:
            return None
        for name, keys in found.items():
            if keys is True or reads.get(name) is True:
                reads[name] = True
            else:
                reads[name] = sorted(set(reads.get(name) or []) | keys)
    return reads


def _template_reads(source: str, step_names: frozenset[str]) -> dict[str, Any] | None:
    """{step: set of top-level keys | True} that `source` reads; None if it cannot parse.

    `start.xs` and `start['xs']` read key `xs`; `start.data.xs` reads `data` and `xs` (a
    result view omits `.data` when the result has none); any other use of `start` (bare,
    filtered, indexed by a variable or a number, a method call) or of `start_ref` reads
    all of it.
    """
    found = template_uses(source)
    if found is None:
        return None
    # `<step>_ref` is that step's ref (or inline result) unless a step has that name.
    refs = {name: name[: -len("_ref")] for name in found.keys() - step_names
            if name.endswith("_ref") and name[: -len("_ref")] in step_names}
    reads: dict[str, Any] = {}
    for name in (found.keys() & step_names) | refs.keys():
        step_name = refs.get(name, name)
        for use in found[name]:
            path = use.path
            keys = path[:2] if path[:1] == ("data",) and len(path) > 1 else path[:1]
            if (name in refs or not keys or keys == ("data",) or reads.get(step_name) is True
                    or not all(isinstance(key, str) for key in keys)):
                reads[step_name] = True
            else:
                reads.setdefault(step_name, set()).update(keys)
    return reads


# --- loading -------------------------------------------------------------------------


def load_playbook(text: str, *, source: str | None = None) -> Playbook:
    """Parse and validate playbook YAML; raises PlaybookError naming what is wrong."""
    label = source or "<playbook>"
    limit = max_playbook_bytes()
    size = text_bytes(text, playbook=label)
    if size > limit:
        raise PlaybookError(f"playbook is {size} bytes, over the limit of {limit}",
                            playbook=label)
    try:
        document, root_node = load_bounded(text, playbook=label, max_bytes=limit)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlaybookError(
            f"malformed YAML: {problem}",
            playbook=label,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from exc
    if not isinstance(document, dict):
        raise PlaybookError("a playbook must be a YAML mapping", playbook=label)
    metadata = document.get("metadata") or {}
    label = source or str(metadata.get("path") or metadata.get("name") or label)
    lines = key_lines(root_node)
    workflow = document.get("workflow")
    if not isinstance(workflow, list) or not workflow:
        raise PlaybookError("workflow must be a non-empty list of steps", playbook=label,
                            field="workflow", line=lines.get(("workflow",)))
    step_lines = [lines.get(("workflow", index)) for index in range(len(workflow))]
    check_document(document, lines, label, tool_config_keys())
    document = dict(document)
    document["workflow"] = [
        _normalise_step(raw, index, label, step_lines) for index, raw in enumerate(workflow)
    ]
    try:
        playbook = Playbook.model_validate(document)
    except ValidationError as exc:
        raise _validation_error(exc, document, label, lines) from exc
    _check_graph(playbook, label, step_lines)
    check_streams(playbook, label, step_lines, STREAM_KINDS)
    return playbook


def _normalise_step(raw: Any, index: int, label: str,
                    lines: list[int | None]) -> dict[str, Any]:
    line = lines[index] if index < len(lines) else None
    if not isinstance(raw, dict):
        raise PlaybookError("a step must be a mapping", playbook=label,
                            field=f"workflow[{index}]", line=line)
    step = dict(raw)
    name = step.get("step")
    if not name or not isinstance(name, str):
        raise PlaybookError("every step needs a 'step' name", playbook=label,
                            field=f"workflow[{index}].step", line=line)
    if "tool" not in step or step["tool"] in (None, {}, []):
        raise PlaybookError("step has no tool", playbook=label, step=name, field="tool",
                            line=line)
    step["tool"] = _normalise_tool(step["tool"])
    if "loop" in step and isinstance(step["loop"], dict):
        step["loop"] = _normalise_loop(step["loop"])
    arcs = _arcs_from(step.pop("next", None), step.pop("case", None))
    if arcs is not None:
        step["next"] = arcs
    return step


def _normalise_tool(tool: Any) -> Any:
    if isinstance(tool, list):
        tasks = []
        for position, task in enumerate(tool, start=1):
            task = _normalise_tool(task)
            if isinstance(task, dict) and not task.get("name"):
                task["name"] = f"task_{position}"
            tasks.append(task)
        return tasks
    if not isinstance(tool, dict):
        return tool
    tool = dict(tool)
    if "args" in tool and "input" not in tool:
        tool["input"] = tool.pop("args")
    alias = INPUT_ALIASES.get(str(tool.get("kind")))
    if alias is not None and alias in tool and "input" not in tool:
        tool["input"] = tool.pop(alias)
    output = tool.get("output")
    if isinstance(output, dict) and "store" in output:
        store = output["store"]
        tier = STORE_TIERS[store.get("kind", "auto") if isinstance(store, dict) else store]
        output = {key: value for key, value in output.items() if key != "store"}
        tool["output"] = {**output, "store": tier} if tier else output
    return tool


def _normalise_loop(loop: dict[str, Any]) -> dict[str, Any]:
    loop = dict(loop)
    spec = dict(loop.get("spec") or {})
    mode = loop.pop("mode", None) or spec.get("mode")
    if mode == "async":
        mode = "parallel"
    if loop.get("cursor") is not None:
        mode = "cursor"
    if mode:
        spec["mode"] = mode
    concurrency = loop.pop("concurrency", None)
    if concurrency is not None and "max_in_flight" not in spec:
        spec["max_in_flight"] = concurrency
    if spec.get("max_in_flight") and "mode" not in spec:
        spec["mode"] = "parallel"
    loop["spec"] = spec
    return loop


def _arcs_from(next_value: Any, case_value: Any) -> dict[str, Any] | None:
    """Canonical `next: {spec, arcs}` from every accepted form (dsl_keys checked them)."""
    if next_value is None and case_value is None:
        return None
    if isinstance(next_value, dict) and "arcs" in next_value:
        result = dict(next_value)
        result["arcs"] = [_arc(arc) for arc in next_value.get("arcs") or []]
        return result
    if isinstance(next_value, str | dict):
        return {"spec": {"mode": "exclusive"}, "arcs": [_arc(next_value)]}
    branches = case_value
    if isinstance(next_value, list):
        if not next_value or not all(is_branch(item) for item in next_value):
            # The older list form starts every listed step, as NoETL did.
            return {"spec": {"mode": "inclusive"}, "arcs": [_arc(arc) for arc in next_value]}
        branches = next_value
    arcs: list[dict[str, Any]] = []
    for group, branch in enumerate(branches or []):
        otherwise = "else" in branch
        then = branch["else"] if otherwise else branch["then"]
        writes, targets = _branch_actions(then)
        for target in targets:
            arc: dict[str, Any] = {"step": target}
            if not otherwise:
                arc = _arc({**arc, "when": branch["when"]})
            elif case_value is not None:
                # NoETL's case `else` fires when no branch held, after an error as after
                # success; an arc without `when` is success-only, so it gets an explicit one.
                arc["when"] = CASE_ELSE_WHEN
            if writes:
                arc["set"] = writes
            arcs.append({**arc, "group": group})
    # Branches are tried in order and the first that holds is taken (NoETL's case).
    return {"spec": {"mode": "exclusive"}, "arcs": arcs}


def _branch_actions(then: Any) -> tuple[dict[str, Any], list[str]]:
    """The `set` writes and the target steps of a branch's `then`: a dict of actions
    (`{next, set}`), a list of actions, a list of `{step}` targets, or `{then: ...}`."""
    if isinstance(then, dict) and set(then) == {"then"}:
        then = then["then"]
    writes: dict[str, Any] = {}
    targets: list[str] = []
    for action in then if isinstance(then, list) else [then]:
        if isinstance(action, str):
            targets.append(action)
            continue
        if "step" in action:
            targets.append(action["step"])
        writes.update(action.get("set") or {})
        chosen = action.get("next")
        for target in chosen if isinstance(chosen, list) else [chosen] if chosen else []:
            targets.append(target if isinstance(target, str) else target["step"])
    return writes, targets


def _arc(arc: Any) -> dict[str, Any]:
    if isinstance(arc, str):
        return {"step": arc}
    if not isinstance(arc, dict):
        return {"step": arc}
    normal: dict[str, Any] = dict(spelled_arc(arc))
    when = normal.get("when")
    if when is True or (isinstance(when, str) and when.strip().lower() in ("true", "{{ true }}")):
        normal.pop("when")
    elif when is not None and not isinstance(when, str):
        normal["when"] = str(when)
    return normal


def _validation_error(
    exc: ValidationError, document: dict[str, Any], label: str, lines: dict[Path, int]
) -> PlaybookError:
    first = exc.errors()[0]
    location = [part if isinstance(part, int) else str(part) for part in first["loc"]]
    step_name = None
    field_path = ".".join(map(str, location))
    if len(location) >= 2 and location[0] == "workflow" and isinstance(location[1], int):
        step_name = document["workflow"][location[1]].get("step")
        field_path = ".".join(map(str, location[2:])) or "step"
    # The line of the deepest key of the location that the YAML has (a normalised key
    # may not be in it: then its parent's).
    line = None
    for end in range(len(location), 0, -1):
        line = lines.get(tuple(location[:end]))
        if line is not None:
            break
    message = first["msg"].removeprefix("Value error, ")
    return PlaybookError(message, playbook=label, step=step_name, field=field_path, line=line)


def _check_graph(playbook: Playbook, label: str, lines: list[int | None]) -> None:
    seen: dict[str, int] = {}
    for index, step in enumerate(playbook.workflow):
        line = lines[index] if index < len(lines) else None
        if step.step in seen:
            raise PlaybookError(
                f"duplicate step name (first defined as workflow[{seen[step.step]}])",
                playbook=label, step=step.step, field="step", line=line,
            )
        seen[step.step] = index
    for index, step in enumerate(playbook.workflow):
        for arc in step.next.arcs if step.next else []:
            if arc.step not in seen:
                raise PlaybookError(
                    f"arc targets unknown step '{arc.step}'", playbook=label, step=step.step,
                    field="next.arcs.step", line=lines[index] if index < len(lines) else None,
                )
    entry = playbook.entry_step
    if entry not in seen:
        raise PlaybookError(f"entry step '{entry}' is not in the workflow", playbook=label,
                            field="executor.spec.entry_step")
