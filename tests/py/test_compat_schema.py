"""Walk NoETL's published JSON Schema: every construct in it is run or refused by name.

The schema (canonical v10, `noetl/core/dsl/playbook.schema.json` of NoETL) is read from a
NoETL checkout (NOETL_REF, default /work/noetl-ref) and skipped when none is present; the
list of its definitions and properties below is the copy this test always checks, so a
missing checkout never hides a forgotten key. For each schema definition the test knows
the level of our loader it maps to (noetl_pg.dsl_keys); every property must be accepted
(run), listed as having no effect, or refused with a reason, and every refused one is
put into a playbook to prove registration refuses it naming the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from noetl_pg.dsl import load_playbook
from noetl_pg.dsl_keys import ACCEPTED, NO_EFFECT, REFUSED
from noetl_pg.errors import PlaybookError
from noetl_pg.tools import tool_config_keys

SCHEMA_PATH = Path(os.environ.get("NOETL_REF", "/work/noetl-ref")) / \
    "noetl/core/dsl/playbook.schema.json"

# Schema definition -> our level. Definitions only reachable through a refused key
# (StepSpec under step.spec, FramePolicy under loop.spec.frame, ...) map to None.
LEVELS: dict[str, str | None] = {
    "<root>": "document",
    "Executor": "executor",
    "ExecutorSpecFull": "executor.spec",
    "ExecutorRequires": "executor.requires",
    "ExecutorPolicy": "executor.spec.policy",
    "Step": "step",
    "StepSpec": None,
    "StepPolicy": None,
    "AdmitPolicy": None,
    "ToolSpec": "task",
    "TaskSpec": "task.spec",
    "TaskPolicy": "policy",
    "ToolOutput": "task.output",
    "OutputStore": "task.output.store",
    "OutputSelect": None,
    "OutputAccumulate": None,
    "Loop": "loop",
    "LoopSpec": "loop.spec",
    "LoopPolicy": "loop.spec.policy",
    "FramePolicy": None,
    "CursorSpec": "loop.cursor",
    "NextRouter": "next",
    "NextSpec": "next.spec",
    "Arc": "arc",
    "WorkbookTask": "workbook",
}

# The schema's properties per definition (canonical v10), checked with or without a
# checkout; test_the_copy_matches_the_schema keeps it equal to the real file.
PROPERTIES: dict[str, list[str]] = {
    "<root>": ["apiVersion", "kind", "metadata", "executor", "workload", "keychain",
               "workbook", "workflow"],
    "Executor": ["profile", "version", "requires", "spec"],
    "ExecutorSpecFull": ["entry_step", "final_step", "no_next_is_error", "policy"],
    "ExecutorRequires": ["tools", "features"],
    "ExecutorPolicy": ["defaults", "results", "limits"],
    "Step": ["step", "desc", "spec", "input", "loop", "tool", "next", "set"],
    "ToolSpec": ["kind", "spec", "output"],
    "TaskSpec": ["timeout", "policy"],
    "TaskPolicy": ["mode", "on_unmatched", "rules", "before", "after", "finally"],
    "ToolOutput": ["store", "select", "accumulate", "inline_max_bytes", "preview_max_bytes",
                   "scope", "as"],
    "OutputStore": ["kind", "driver", "bucket", "prefix", "ttl", "compression",
                    "credential"],
    "Loop": ["in", "cursor", "iterator", "spec"],
    "LoopSpec": ["mode", "max_in_flight", "policy", "frame"],
    "LoopPolicy": ["exec"],
    "CursorSpec": ["kind", "auth", "claim", "options"],
    "NextRouter": ["spec", "arcs"],
    "NextSpec": ["mode", "on_no_match", "policy"],
    "Arc": ["step", "when", "set", "spec"],
    "WorkbookTask": ["name", "tool"],
}


def _schema() -> dict[str, Any]:
    if not SCHEMA_PATH.exists():
        pytest.skip(f"no NoETL checkout at {SCHEMA_PATH.parent}")
    return json.loads(SCHEMA_PATH.read_text())


def _definitions(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"<root>": schema, **schema["$defs"]}


def test_the_copy_matches_the_schema() -> None:
    definitions = _definitions(_schema())
    assert set(definitions) == set(LEVELS), "a schema definition has no level here"
    for name, definition in definitions.items():
        if LEVELS[name] is not None:
            assert list(definition.get("properties", {})) == PROPERTIES[name], name


@pytest.mark.parametrize("definition", sorted(PROPERTIES))
def test_every_property_is_run_no_effect_or_refused(definition: str) -> None:
    level = LEVELS[definition]
    assert level is not None
    neither = [key for key in PROPERTIES[definition]
               if key not in ACCEPTED.get(level, frozenset())
               and key not in NO_EFFECT.get(level, frozenset())
               and key not in REFUSED.get(level, {})]
    assert neither == [], f"{definition} ({level}): neither run nor refused: {neither}"


def test_definitions_without_a_level_sit_under_a_refused_key() -> None:
    """A definition we do not walk must only be reachable through a refused property."""
    definitions = _definitions(_schema())
    for name, definition in definitions.items():
        level = LEVELS[name]
        if level is None:
            continue
        for key, prop in definition.get("properties", {}).items():
            for ref in _refs(prop):
                if LEVELS[ref] is None:
                    assert key in REFUSED.get(level, {}), f"{name}.{key} -> {ref}"


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if "$ref" in node else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    return set()


# A playbook with `key: 1` placed at each level, to show the refusal really happens.
def _with_key(level: str, key: str) -> tuple[str, str]:
    """(playbook YAML, the field the error must name) with `key` added at `level`."""
    step = {"step": "s", "tool": {"kind": "noop"}}
    document: dict[str, Any] = {"apiVersion": "noetl.io/v2", "kind": "Playbook",
                                "metadata": {"path": "compat/schema"}, "workflow": [step]}
    holder: dict[str, Any]
    if level == "document":
        holder, prefix = document, ""
    elif level.startswith("executor"):
        document["executor"] = {"spec": {"policy": {}}, "requires": {}}
        holder = {"executor": document["executor"],
                  "executor.spec": document["executor"]["spec"],
                  "executor.spec.policy": document["executor"]["spec"]["policy"],
                  "executor.requires": document["executor"]["requires"]}[level]
        prefix = level + "."
    elif level == "step":
        holder, prefix = step, ""
    elif level.startswith("task"):
        step["tool"] = {"kind": "noop", "spec": {}, "output": {"store": {}}}
        holder = {"task": step["tool"], "task.spec": step["tool"]["spec"],
                  "task.output": step["tool"]["output"],
                  "task.output.store": step["tool"]["output"]["store"]}[level]
        prefix = level.replace("task", "tool") + "."
        prefix = "tool." if level == "task" else prefix
    elif level == "policy":
        step["tool"] = {"kind": "noop", "spec": {"policy": {"rules": []}}}
        holder, prefix = step["tool"]["spec"]["policy"], "tool.spec.policy."
    elif level.startswith("loop"):
        step["loop"] = {"in": "{{ [1] }}", "iterator": "x", "spec": {"policy": {}}}
        holder = {"loop": step["loop"], "loop.spec": step["loop"]["spec"],
                  "loop.spec.policy": step["loop"]["spec"]["policy"]}[level]
        prefix = level + "."
    elif level in ("next", "next.spec", "arc"):
        document["workflow"].append({"step": "t", "tool": {"kind": "noop"}})
        step["next"] = {"spec": {}, "arcs": [{"step": "t"}]}
        holder = {"next": step["next"], "next.spec": step["next"]["spec"],
                  "arc": step["next"]["arcs"][0]}[level]
        prefix = {"next": "next.", "next.spec": "next.spec.", "arc": "next.arcs[0]."}[level]
    else:
        raise AssertionError(f"no placement for {level}")
    holder[key] = 1
    return json.dumps(document), prefix + key


REFUSED_SCHEMA_KEYS = [
    (definition, key) for definition, keys in PROPERTIES.items() for key in keys
    if key in REFUSED.get(LEVELS[definition] or "", {}) and definition != "WorkbookTask"
]


@pytest.mark.parametrize(("definition", "key"), REFUSED_SCHEMA_KEYS,
                         ids=[f"{d}.{k}" for d, k in REFUSED_SCHEMA_KEYS])
def test_refused_schema_keys_are_refused_at_registration(definition: str, key: str) -> None:
    level = LEVELS[definition]
    assert level is not None
    text, field = _with_key(level, key)
    with pytest.raises(PlaybookError) as caught:
        load_playbook(text)
    assert caught.value.field == field
    assert caught.value.message == REFUSED[level][key]


def test_every_schema_tool_kind_runs_or_is_refused_by_name() -> None:
    kinds = _schema()["$defs"]["ToolSpec"]["properties"]["kind"]["enum"]
    known = tool_config_keys()
    for kind in kinds:
        text = json.dumps({"metadata": {"path": "k"},
                           "workflow": [{"step": "s", "tool": {"kind": kind}}]})
        if kind in known:
            assert load_playbook(text).workflow[0].tool.kind == kind  # type: ignore[union-attr]
            continue
        with pytest.raises(PlaybookError) as caught:
            load_playbook(text)
        assert f"'{kind}'" in caught.value.message
        assert caught.value.field == "tool.kind"


@pytest.mark.parametrize(("definition", "prop", "place"), [
    ("LoopSpec", "mode", lambda v: {"loop": {"in": "{{ [1] }}", "iterator": "x",
                                             "spec": {"mode": v}}}),
    ("NextSpec", "mode", lambda v: {"next": {"spec": {"mode": v}, "arcs": [{"step": "s"}]}}),
    ("NextSpec", "on_no_match",
     lambda v: {"next": {"spec": {"on_no_match": v}, "arcs": [{"step": "s"}]}}),
    ("LoopPolicy", "exec", lambda v: {"loop": {"in": "{{ [1] }}", "iterator": "x",
                                               "spec": {"policy": {"exec": v}}}}),
    ("TaskPolicy", "mode",
     lambda v: {"tool": {"kind": "noop", "spec": {"policy": {"mode": v, "rules": []}}}}),
    ("OutputStore", "kind", lambda v: {"tool": {"kind": "noop", "output": {"store": {"kind": v}}}}),
])
def test_every_enumerated_value_runs_or_is_refused(definition: str, prop: str,
                                                  place: Any) -> None:
    values = _schema()["$defs"][definition]["properties"][prop]["enum"]
    outcomes = {}
    for value in values:
        step = {"step": "s", "tool": {"kind": "noop"}, **place(value)}
        text = json.dumps({"metadata": {"path": "e"}, "workflow": [step]})
        try:
            load_playbook(text)
            outcomes[value] = "run"
        except PlaybookError as exc:
            assert repr(value) in exc.message, exc
            assert exc.field and exc.field.endswith(prop), exc
            outcomes[value] = "refused"
    assert "run" in outcomes.values(), outcomes
