"""`noetl validate FILE`: parse and plan a playbook, and check its templates' names, without
registering or running anything.

A template may name: the workload's keys, `workload`, `ctx` and every `ctx` key some `set:`
writes, step names (their results) and `<step>_ref`, the loop iterator and `iter`/`loop`
inside the loop's step, the step's own `input` keys, `result`/`output` (the step's outcome),
`event`, `fanin`, `keychain`, `execution_id`, a pipeline's task names, and Jinja's globals.
Anything else is reported with the step and field holding it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, meta

from noetl_pg.dsl import Playbook, load_playbook

ALWAYS_KNOWN = frozenset({
    "workload", "ctx", "execution_id", "keychain", "result", "output", "iter", "loop",
    "event", "fanin", "step",
    "range", "dict", "lipsum", "cycler", "joiner", "namespace", "true", "false", "none",
    "True", "False", "None",
})
_ENV = Environment()


@dataclass(frozen=True)
class Problem:
    step: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"step '{self.step}', " if self.step else ""
        return f"{where}field '{self.field}': {self.message}"


def _strings(value: Any, field: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            yield field, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{field}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{field}[{index}]")


def _set_keys(value: Any) -> set[str]:
    keys: set[str] = set()
    if isinstance(value, dict):
        for key in value:
            keys.add(str(key).removeprefix("ctx.").split(".")[0])
    return keys


def _known_names(playbook: Playbook) -> set[str]:
    known = set(ALWAYS_KNOWN) | set(playbook.workload)
    for step in playbook.workflow:
        known |= {step.step, f"{step.step}_ref"}
        known |= _set_keys(step.set)
        for arc in (step.next.arcs if step.next else []):
            known |= _set_keys(arc.set)
        for task in step.task_configs:
            known |= _set_keys(task.get("set"))
            known |= _set_keys(((task.get("spec") or {}).get("policy") or {}).get("set"))
    return known


def check_templates(playbook: Playbook) -> list[Problem]:
    """Every template name that nothing in the playbook defines, and every syntax error."""
    known = _known_names(playbook)
    # A streamed step's partial arcs and the steps they lead to read the chunk.
    chunk_steps: set[str] = set()
    for step in playbook.workflow:
        partial = step.next.partial_arcs if step.next else []
        if partial:
            chunk_steps |= {step.step, *(arc.step for arc in partial)}
    problems: list[Problem] = []
    for step in playbook.workflow:
        raw = step.model_dump(mode="json", by_alias=True, exclude_none=True)
        local = set(known) | set((step.input or {}).keys())
        if step.loop is not None:
            local.add(step.loop.iterator)
        if step.step in chunk_steps:
            local.add("chunk")
        for task in step.task_configs:
            # a pipeline task reads the tasks before it by name, and its own input keys
            local |= set((task.get("input") or {}).keys()) | {str(task.get("name", ""))}
        local |= {f"task_{number}" for number in range(1, len(step.task_configs) + 1)}
        for field, source in _strings({k: v for k, v in raw.items() if k != "step"}, ""):
            field = field.lstrip(".")
            if field.endswith(".code"):
                continue  # python source is not a template
            try:
                names = meta.find_undeclared_variables(_ENV.parse(source))
            except TemplateSyntaxError as exc:
                problems.append(Problem(step.step, field, f"template syntax error: {exc}"))
                continue
            for name in sorted(names - local):
                problems.append(Problem(step.step, field,
                                        f"template names '{name}', which nothing defines"))
    return problems


def validate_text(text: str, source: str) -> tuple[Playbook, dict[str, Any], list[Problem]]:
    """Parse (raising PlaybookError), plan, and check templates; nothing is stored."""
    playbook = load_playbook(text, source=source)
    spec = playbook.to_spec()
    return playbook, spec, check_templates(playbook)
