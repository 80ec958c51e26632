"""The playbook language: pydantic models, YAML loading, normalisation and the routing plan.

`load_playbook(text)` turns YAML into a validated `Playbook`, normalising the older forms
of `../shared/DSL.md` (case/when/then, list and string `next`, `mode: async`,
`concurrency`, `tool.args`, `payload` on playbook tools, `when: true`) into the canonical
form. `Playbook.to_spec()` is the JSON stored in `noetl.catalog.spec`: the canonical
playbook plus, on each step, the `plan` that the SQL router reads (see
sql/functions/catalog.sql). Every error is a `PlaybookError` naming the playbook, the step
and the field, with a line number where the YAML has one.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from noetl_pg.errors import PlaybookError
from noetl_pg.policy import DEFAULT_RULE_ATTEMPTS

# Kinds a step may name. The worker's registry (noetl_pg.tools) must cover these; the DSL
# knows them so a typo is caught at registration, not when a worker claims the step.
KNOWN_TOOL_KINDS = frozenset(
    {"python", "noop", "http", "postgres", "duckdb", "playbook", "workbook"}
)
DEFAULT_PARALLEL_IN_FLIGHT = 10
MAX_PLAYBOOK_BYTES = 1_048_576


def max_playbook_bytes() -> int:
    """The largest playbook accepted: NOETL_MAX_PLAYBOOK_BYTES, default 1 MiB."""
    raw = os.environ.get("NOETL_MAX_PLAYBOOK_BYTES", "").strip()
    return int(raw) if raw.isdigit() else MAX_PLAYBOOK_BYTES


class _Model(BaseModel):
    # Unknown keys are kept: NoETL playbooks carry fields we pass through untouched.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class RetrySpec(_Model):
    max_attempts: int = Field(1, ge=1)
    retry_on: list[str] = Field(default_factory=lambda: ["error", "timeout"])
    backoff: Literal["none", "linear", "exponential"] | float = "none"
    delay: float = Field(0.0, ge=0)


class ToolSpec(_Model):
    kind: str
    name: str | None = None
    retry: RetrySpec | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KNOWN_TOOL_KINDS:
            raise ValueError(
                f"unknown tool kind '{kind}' (known: {', '.join(sorted(KNOWN_TOOL_KINDS))})"
            )
        return kind


class LoopRunSpec(_Model):
    mode: Literal["sequential", "parallel"] = "sequential"
    max_in_flight: int | None = Field(None, ge=1)
    policy: dict[str, Any] | None = None
    loop_mode: str | None = None
    fanout: dict[str, Any] | None = None
    # Iterations that failed after their retries fail the loop step unless this says
    # `continue` (NoETL has no spelling for it; see sql/functions/fanin.sql close_loop).
    on_error: Literal["fail", "continue"] = "fail"


class LoopSpec(_Model):
    in_: Any = Field(alias="in")
    iterator: str = "item"
    spec: LoopRunSpec = Field(default_factory=LoopRunSpec)

    @property
    def is_fanout(self) -> bool:
        policy_exec = (self.spec.policy or {}).get("exec")
        return policy_exec == "distributed" or self.spec.loop_mode == "fanout"

    @property
    def in_flight_bound(self) -> int:
        if self.spec.mode == "sequential":
            return 1
        return self.spec.max_in_flight or DEFAULT_PARALLEL_IN_FLIGHT


class Arc(_Model):
    step: str
    when: str | None = None
    set: dict[str, Any] | None = None


class NextSpec(_Model):
    spec: dict[str, Any] = Field(default_factory=dict)
    arcs: list[Arc] = Field(default_factory=list)

    @property
    def mode(self) -> str:
        return str(self.spec.get("mode", "exclusive"))


class Step(_Model):
    step: str
    desc: str | None = None
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


class Playbook(_Model):
    apiVersion: str = "noetl.io/v2"
    kind: str = "Playbook"
    metadata: dict[str, Any] = Field(default_factory=dict)
    workload: dict[str, Any] = Field(default_factory=dict)
    workbook: list[dict[str, Any]] = Field(default_factory=list)
    workflow: list[Step]
    executor: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return str(self.metadata.get("path") or self.metadata.get("name") or "")

    @property
    def entry_step(self) -> str:
        entry = ((self.executor or {}).get("spec") or {}).get("entry_step")
        return str(entry) if entry else self.workflow[0].step

    def step_named(self, name: str) -> Step:
        for step in self.workflow:
            if step.step == name:
                return step
        raise KeyError(name)

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
    sources: dict[str, set[str]] = {name: set() for name in successors}
    for source, targets in successors.items():
        for target in targets:
            sources[target].add(source)

    plans: dict[str, dict[str, Any]] = {}
    for step in playbook.workflow:
        arcs = step.next.arcs if step.next else []
        if not arcs:
            route_mode, direct_targets = "none", []
        elif all(arc.when is None and not arc.set for arc in arcs):
            route_mode = "direct"
            exclusive = step.next is not None and step.next.mode == "exclusive"
            direct_targets = [arcs[0].step] if exclusive else [arc.step for arc in arcs]
        else:
            route_mode, direct_targets = "router", []
        plans[step.step] = {
            "kind": _plan_kind(step),
            "route_mode": route_mode,
            "direct_targets": direct_targets,
            "is_join": len(sources[step.step]) > 1,
            "has_loop": step.loop is not None,
            "reaches": sorted(_reachable(step.step, successors)),
            "max_attempts": _max_attempts(step),
        }
    return plans


def _plan_kind(step: Step) -> str:
    if isinstance(step.tool, list):
        return "pipeline"
    return step.tool.kind if step.tool else "noop"


def _reachable(start: str, successors: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    frontier = list(successors[start])
    while frontier:
        name = frontier.pop()
        if name not in seen:
            seen.add(name)
            frontier.extend(successors[name])
    return seen


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


# --- loading -------------------------------------------------------------------------


def load_playbook(text: str, *, source: str | None = None) -> Playbook:
    """Parse and validate playbook YAML; raises PlaybookError naming what is wrong."""
    label = source or "<playbook>"
    limit = max_playbook_bytes()
    if len(text.encode()) > limit:
        raise PlaybookError(
            f"playbook is {len(text.encode())} bytes, over the limit of {limit}",
            playbook=label,
        )
    try:
        document = yaml.safe_load(text)
        root_node = yaml.compose(text)
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
    step_lines = _step_lines(root_node)
    workflow = document.get("workflow")
    if not isinstance(workflow, list) or not workflow:
        raise PlaybookError("workflow must be a non-empty list of steps", playbook=label,
                            field="workflow")
    document = dict(document)
    document["workflow"] = [
        _normalise_step(raw, index, label, step_lines) for index, raw in enumerate(workflow)
    ]
    try:
        playbook = Playbook.model_validate(document)
    except ValidationError as exc:
        raise _validation_error(exc, document, label, step_lines) from exc
    _check_graph(playbook, label, step_lines)
    return playbook


def _step_lines(root: yaml.Node | None) -> list[int]:
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if key.value == "workflow" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _normalise_step(raw: Any, index: int, label: str, lines: list[int]) -> dict[str, Any]:
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
    if tool.get("kind") == "playbook" and "payload" in tool and "input" not in tool:
        tool["input"] = tool.pop("payload")
    return tool


def _normalise_loop(loop: dict[str, Any]) -> dict[str, Any]:
    loop = dict(loop)
    spec = dict(loop.get("spec") or {})
    mode = loop.pop("mode", None) or spec.get("mode")
    if mode == "async":
        mode = "parallel"
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
    """Canonical `next: {spec, arcs}` from every accepted form."""
    if next_value is None and case_value is None:
        return None
    if isinstance(next_value, dict) and "arcs" in next_value:
        result = dict(next_value)
        result["arcs"] = [_arc(arc) for arc in next_value.get("arcs") or []]
        return result
    arcs: list[dict[str, Any]] = []
    mode = "exclusive"
    if isinstance(next_value, str):
        arcs.append({"step": next_value})
    elif isinstance(next_value, list):
        # The older list form starts every listed step, as NoETL did.
        mode = "inclusive"
        arcs.extend(_arc(arc) for arc in next_value)
    elif isinstance(next_value, dict):
        arcs.append(_arc(next_value))
    for branch in case_value or []:
        when = branch.get("when") if isinstance(branch, dict) else None
        then = (branch.get("then") if isinstance(branch, dict) else None) or {}
        targets = then.get("next") if isinstance(then, dict) else None
        if isinstance(targets, str | dict):
            targets = [targets]
        for target in targets or []:
            arc = _arc(target)
            if when is not None and arc.get("when") is None:
                arc["when"] = when
            arcs.append(_arc(arc))
    return {"spec": {"mode": mode}, "arcs": arcs}


def _arc(arc: Any) -> dict[str, Any]:
    if isinstance(arc, str):
        return {"step": arc}
    if not isinstance(arc, dict):
        return {"step": arc}
    arc = dict(arc)
    when = arc.get("when")
    if when is True or (isinstance(when, str) and when.strip().lower() in ("true", "{{ true }}")):
        arc.pop("when")
    elif when is not None and not isinstance(when, str):
        arc["when"] = str(when)
    return arc


def _validation_error(
    exc: ValidationError, document: dict[str, Any], label: str, lines: list[int]
) -> PlaybookError:
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"]]
    step_name = None
    line = None
    field_path = ".".join(location)
    if len(location) >= 2 and location[0] == "workflow" and location[1].isdigit():
        index = int(location[1])
        step_name = document["workflow"][index].get("step")
        line = lines[index] if index < len(lines) else None
        field_path = ".".join(location[2:]) or "step"
    message = first["msg"].removeprefix("Value error, ")
    return PlaybookError(message, playbook=label, step=step_name, field=field_path, line=line)


def _check_graph(playbook: Playbook, label: str, lines: list[int]) -> None:
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
