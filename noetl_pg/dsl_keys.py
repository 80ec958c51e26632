"""Run it or refuse it: the keys every level of a playbook accepts, checked before loading.

`check_document(document, lines, label)` walks the YAML as written (every older form
included) and raises a PlaybookError naming the playbook, step, field and the key's own
line for any key this engine does not run. Three tables say what each level holds:

- ACCEPTED: keys that are run (or normalised into keys that are run);
- NO_EFFECT: keys NoETL accepts that change nothing here (documentation), kept in the
  stored spec and otherwise ignored. This is the ONE list of such keys;
- REFUSED: keys NoETL defines that we do not run, with the reason the error gives.
A key in none of them is refused as unknown. Tool kinds add their own keys: each tool
class declares `config_keys` (and `spec_keys` for `tool.spec`), collected by
`noetl_pg.tools.tool_config_keys()`. tests/py/test_compat_schema.py walks NoETL's JSON
Schema and fails for any property that is in none of the tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from noetl_pg.errors import PlaybookError
from noetl_pg.stream import MAX_CHUNK_ROWS

Path = tuple[str | int, ...]

ACCEPTED: dict[str, frozenset[str]] = {
    "document": frozenset({"apiVersion", "kind", "metadata", "workload", "workbook",
                           "workflow", "executor", "keychain"}),
    "executor": frozenset({"spec", "requires"}),
    "executor.spec": frozenset({"entry_step", "no_next_is_error", "policy"}),
    # The command budget of each execution (noetl_pg.budget, sql/functions/budget.sql).
    "executor.spec.policy": frozenset({"limits"}),
    "executor.spec.policy.limits": frozenset({"max_commands"}),
    "executor.requires": frozenset({"tools"}),
    "workbook": frozenset({"name", "tool"}),
    "step": frozenset({"step", "tool", "input", "loop", "set", "next", "case"}),
    # Keys of every task (a step's `tool`, a pipeline task, a workbook tool); each tool
    # kind adds its own (tool_config_keys()). `args` is the older name of `input`.
    "task": frozenset({"kind", "name", "input", "args", "spec", "retry", "output", "set"}),
    "task.spec": frozenset({"timeout", "policy"}),
    "task.retry": frozenset({"max_attempts", "retry_on", "backoff", "delay"}),
    # `stream` (noetl_pg.stream) is ours: NoETL has no spelling for streamed results.
    "task.output": frozenset({"store", "stream"}),
    "task.output.store": frozenset({"kind"}),
    "task.output.stream": frozenset({"chunk_rows"}),
    "policy": frozenset({"rules", "mode"}),
    "policy.rule": frozenset({"when", "then", "else"}),
    "policy.else": frozenset({"then"}),
    "policy.then": frozenset({"do", "attempts", "backoff", "delay", "to", "set"}),
    # `mode` and `concurrency` are the older spellings of spec.mode and spec.max_in_flight.
    "loop": frozenset({"in", "cursor", "iterator", "spec", "mode", "concurrency"}),
    # NoETL's CursorSpec (a pull-model loop, noetl_pg.cursor): the claim runs on `auth`'s
    # database; `options.key` (ours) names the columns that identify a claimed row.
    "loop.cursor": frozenset({"kind", "auth", "claim", "options"}),
    "loop.cursor.options": frozenset({"key", "timeout"}),
    "loop.spec": frozenset({"mode", "max_in_flight", "policy", "loop_mode", "fanout",
                            "on_error"}),
    "loop.spec.policy": frozenset({"exec"}),
    "loop.spec.fanout": frozenset({"max_shard_retries"}),
    "next": frozenset({"spec", "arcs"}),
    "next.spec": frozenset({"mode", "on_no_match"}),
    # `on: call.partial`: the arc is taken per chunk of a streamed step (noetl_pg.stream),
    # never after call.done; NoETL has no spelling for it.
    "arc": frozenset({"step", "when", "set", "on"}),
    # The older conditional list items: `next: [{when, then: [...]}, {else: [...]}]`.
    "next.branch": frozenset({"when", "then", "else"}),
    "case": frozenset({"when", "then", "else"}),
    # A `then` action of a case branch (a `step` item is a target, as in `then: [{step}]`).
    "then": frozenset({"next", "set", "step"}),
    "then.target": frozenset({"step"}),
}

NO_EFFECT: dict[str, frozenset[str]] = {
    "step": frozenset({"desc", "description"}),
    "task": frozenset({"desc", "description"}),
    "workbook": frozenset({"desc", "description"}),
    # Every execution here runs distributed through the database: the profile and the
    # runtime contract version choose nothing.
    "executor": frozenset({"profile", "version"}),
}

REFUSED: dict[str, dict[str, str]] = {
    "document": {
        "vars": "root `vars` is not NoETL v10: use `workload` (and `set` for ctx.*)",
    },
    "executor.spec": {
        "final_step": "executor.spec.final_step is not supported",
    },
    "executor.spec.policy": {
        "defaults": "executor.spec.policy.defaults (global defaults) is not supported: set "
                    "timeouts and policy on each tool's spec",
        "results": "executor.spec.policy.results is not supported",
    },
    "executor.spec.policy.limits": {
        "max_payload_bytes": "executor.spec.policy.limits.max_payload_bytes is not "
                             "supported: the payload limit is the database's "
                             "noetl.engine_limit 'max_payload_bytes'",
    },
    "executor.requires": {
        "features": "executor.requires.features is not supported",
    },
    "step": {
        "spec": "step.spec (admission, lifecycle, failure, emit, timeout) is not "
                "supported: put `timeout` and `policy` on the tool's spec",
        "when": "a step-level `when` is not NoETL v10: guard the arc that leads here "
                "(next.arcs[].when)",
        "type": "`type` is not NoETL v10: use tool.kind",
        "vars": "step `vars` is not NoETL v10: use `set` (ctx.*, step.*)",
        "sink": "`sink` is not supported: write with a postgres or duckdb task",
    },
    "task": {
        "eval": "`eval` is not NoETL v10: use tool.spec.policy.rules",
        "sink": "`sink` is not supported: write with a postgres or duckdb task",
    },
    "task.output.store": {
        key: f"tool.output.store.{key} is not supported: tiers are configured on the "
             "worker (NOETL_STORE_*)"
        for key in ("driver", "bucket", "prefix", "ttl", "compression", "credential")
    },
    "task.output": {
        "select": "tool.output.select is not supported: use `set` with a template",
        "accumulate": "tool.output.accumulate is not supported",
        "inline_max_bytes": "tool.output.inline_max_bytes is not supported: the inline "
                            "limit is the store's (NOETL_INLINE_MAX_BYTES)",
        "preview_max_bytes": "tool.output.preview_max_bytes is not supported",
        "scope": "tool.output.scope is not supported: results live with their execution",
        "as": "tool.output.as is not supported: a result is named by its step",
    },
    "policy.else": {
        key: f"an else rule is `else: {{then: {{{key}: ...}}}}`"
        for key in ("do", "attempts", "backoff", "delay", "to", "set")
    },
    "policy": {
        "on_unmatched": "policy.on_unmatched is not supported: end the rules with an "
                        "`else` rule",
        "before": "policy.before hooks are not supported",
        "after": "policy.after hooks are not supported",
        "finally": "policy.finally hooks are not supported",
    },
    "loop.cursor.options": {
        "reclaim_after": "loop.cursor.options.reclaim_after is not needed: rows claimed by "
                         "a worker that died are offered again by the engine "
                         "(docs/dsl.md, cursor loops)",
        "max_attempts": "loop.cursor.options.max_attempts is not supported: retry a row "
                        "with the tool's retry policy",
        "max_iterations": "loop.cursor.options.max_iterations is not supported: a slot "
                          "claims until the claim returns no row",
        "pool_size": "loop.cursor.options.pool_size is not supported: the worker's pool "
                     "is sized by NOETL_PG_POOL_MAX_SIZE",
    },
    "loop.spec": {
        "frame": "loop.spec.frame (cursor frames) is not supported",
    },
    "next.spec": {
        "policy": "next.spec.policy is not supported",
    },
    "arc": {
        "spec": "arc `spec` is not supported",
        "data": "`data` on an arc is not supported: use the arc's `set` (ctx.*) or the "
                "target's `input`",
        "with": "`with` on an arc is not supported: use the arc's `set` (ctx.*) or the "
                "target's `input`",
    },
    "then": {
        "retry": "case `then: retry` is not supported: use tool.spec.policy.rules with "
                 "`do: retry`",
        "sink": "case `then: sink` is not supported: write with a postgres or duckdb step",
        "collect": "case `then: collect` (pagination) is not supported",
        "next_call": "case `then: next_call` (pagination) is not supported",
    },
}

# Values that are run, where a key is accepted only with some values.
ACCEPTED_VALUES: dict[tuple[str, str], frozenset[Any]] = {
    ("policy", "mode"): frozenset({"exclusive"}),
    ("policy.then", "do"): frozenset({"continue", "retry", "fail", "break", "jump"}),
    ("loop", "mode"): frozenset({"sequential", "parallel", "async"}),
    ("loop.spec", "mode"): frozenset({"sequential", "parallel", "async", "cursor"}),
    ("loop.cursor", "kind"): frozenset({"postgres"}),
    ("loop.spec.policy", "exec"): frozenset({"local", "distributed"}),
    ("loop.spec", "on_error"): frozenset({"fail", "continue"}),
    ("executor.spec", "no_next_is_error"): frozenset({True, False}),
    ("next.spec", "mode"): frozenset({"exclusive", "inclusive"}),
    # With no arc matching, a branch ends here; the execution completes when all end.
    ("next.spec", "on_no_match"): frozenset({"complete"}),
    ("arc", "on"): frozenset({"call.partial"}),
}

# `tool.output.store` (a name, or NoETL's `{kind: ...}`) -> the tier of noetl_pg.store it
# forces; None: the default choice by size (NoETL's `auto`). Other NoETL kinds (memory,
# kv, gcs, duckdb, eventlog) have no tier here and are refused.
STORE_TIERS: dict[str, str | None] = {
    "auto": None, "disk": "fs", "object": "fs", "fs": "fs", "pvc": "pvc", "db": "db",
    "s3": "s3", "minio": "minio",
}

# Which scopes a `set` at each place writes: `ctx.x` (and bare `x`, a ctx write) for the
# execution, `step.x` for this step's result, `iter.x` for this iteration.
SET_SCOPES: dict[str, frozenset[str]] = {
    "step": frozenset({"ctx", "step"}),
    "arc": frozenset({"ctx"}),
    "task": frozenset({"ctx", "iter"}),
    "policy": frozenset({"ctx", "iter", "step"}),
}


def key_lines(root: yaml.Node | None) -> dict[Path, int]:
    """The 1-based line of every key and list item, by its path in the document."""
    lines: dict[Path, int] = {}

    def walk(node: yaml.Node, path: Path) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                lines.setdefault(child, key.start_mark.line + 1)
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, index)
                lines.setdefault(child, item.start_mark.line + 1)
                walk(item, child)

    if root is not None:
        walk(root, ())
    return lines


def field_name(path: Path) -> str:
    """`tool.spec.policy.rules[0].then` from a path (a step's own path prefix dropped)."""
    parts: list[str] = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]" if parts else f"workflow[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts)


@dataclass
class _Checker:
    label: str
    lines: dict[Path, int]
    tool_keys: Mapping[str, tuple[frozenset[str], frozenset[str]]]
    step: str | None = None
    step_path: Path = ()

    # --- reporting ------------------------------------------------------------------

    def fail(self, path: Path, message: str) -> PlaybookError:
        relative = path[len(self.step_path):] if self.step is not None else path
        line = None
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                break
        return PlaybookError(message, playbook=self.label, step=self.step,
                             field=field_name(relative) or "step", line=line)

    def keys(self, value: Any, path: Path, level: str,
             extra: frozenset[str] = frozenset()) -> dict[str, Any]:
        """`value` as a mapping whose every key is run here; else the refusal."""
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a mapping, got {_type_name(value)}")
        accepted = ACCEPTED.get(level, frozenset()) | NO_EFFECT.get(level, frozenset()) | extra
        for key in value:
            if key in accepted:
                allowed = ACCEPTED_VALUES.get((level, str(key)))
                if allowed is not None and _hashable(value[key]) not in allowed:
                    raise self.fail((*path, key), f"{value[key]!r} is not supported "
                                    f"(supported: {', '.join(sorted(map(str, allowed)))})")
                continue
            reason = REFUSED.get(level, {}).get(str(key))
            if reason is None:
                reason = f"unknown key '{key}'" + _known(accepted)
            raise self.fail((*path, key), reason)
        return dict(value)

    # --- levels ---------------------------------------------------------------------

    def document(self, document: Mapping[str, Any]) -> None:
        self.keys(document, (), "document")
        if "executor" in document and document["executor"] is not None:
            self.executor(document["executor"])
        for index, entry in enumerate(document.get("workbook") or []):
            path: Path = ("workbook", index)
            entry = self.keys(entry, path, "workbook")
            if "tool" in entry:
                self.task(entry["tool"], (*path, "tool"))
        for index, step in enumerate(document.get("workflow") or []):
            if isinstance(step, Mapping):
                self.step_keys(step, ("workflow", index))

    def executor(self, executor: Any) -> None:
        executor = self.keys(executor, ("executor",), "executor")
        if executor.get("spec") is not None:
            spec = self.keys(executor["spec"], ("executor", "spec"), "executor.spec")
            if spec.get("policy") is not None:
                path: Path = ("executor", "spec", "policy")
                policy = self.keys(spec["policy"], path, "executor.spec.policy")
                if policy.get("limits") is not None:
                    self.keys(policy["limits"], (*path, "limits"),
                              "executor.spec.policy.limits")
        requires = executor.get("requires")
        if requires is not None:
            requires = self.keys(requires, ("executor", "requires"), "executor.requires")
            for index, kind in enumerate(requires.get("tools") or []):
                if kind not in self.tool_keys:
                    raise self.fail(("executor", "requires", "tools", index),
                                    f"required tool kind '{kind}' is not available"
                                    + _known(frozenset(self.tool_keys)))

    def step_keys(self, step: Mapping[str, Any], path: Path) -> None:
        name = step.get("step")
        self.step, self.step_path = (str(name) if name else None), path
        try:
            self.keys(step, path, "step")
            tool = step.get("tool")
            if tool in ({}, []):
                tool = None  # dsl._normalise_step reports a step without a tool
            if isinstance(tool, list):
                for index, task in enumerate(tool):
                    self.task(task, (*path, "tool", index))
            elif tool is not None:
                self.task(tool, (*path, "tool"))
            if step.get("loop") is not None:
                self.loop(step["loop"], (*path, "loop"))
            if step.get("set") is not None:
                self.set_keys(step["set"], (*path, "set"), "step")
            if step.get("next") is not None and step.get("case") is not None:
                raise self.fail((*path, "case"), "a step routes with `next` or with `case`, "
                                "not both")
            if step.get("next") is not None:
                self.next(step["next"], (*path, "next"))
            if step.get("case") is not None:
                self.case(step["case"], (*path, "case"))
        finally:
            self.step, self.step_path = None, ()

    def task(self, task: Any, path: Path) -> None:
        if not isinstance(task, Mapping):
            raise self.fail(path, f"a tool must be a mapping, got {_type_name(task)}")
        kind = task.get("kind")
        if not isinstance(kind, str) or not kind:
            raise self.fail((*path, "kind"), "a tool needs `kind`")
        if kind not in self.tool_keys:
            raise self.fail((*path, "kind"), f"unknown tool kind '{kind}' (known: "
                            f"{', '.join(sorted(self.tool_keys))})")
        config_keys, spec_keys = self.tool_keys[kind]
        if "*" in config_keys:
            # A NoETL kind that needs a service we lack (tools/unavailable.py): its keys are
            # NoETL's; it registers with a warning and fails if a step of it is reached.
            return
        task = self.keys(task, path, "task", extra=config_keys)
        if task.get("spec") is not None:
            spec = self.keys(task["spec"], (*path, "spec"), "task.spec", extra=spec_keys)
            if spec.get("policy") is not None:
                self.policy(spec["policy"], (*path, "spec", "policy"))
        if task.get("retry") is not None:
            self.keys(task["retry"], (*path, "retry"), "task.retry")
        if task.get("output") is not None:
            output = self.keys(task["output"], (*path, "output"), "task.output")
            if output.get("store") is not None:
                self.store(output["store"], (*path, "output", "store"))
            if output.get("stream") is not None:
                self.stream(output["stream"], (*path, "output", "stream"))
        if task.get("set") is not None:
            self.set_keys(task["set"], (*path, "set"), "task")

    def store(self, store: Any, path: Path) -> None:
        if isinstance(store, Mapping):
            store = self.keys(store, path, "task.output.store").get("kind", "auto")
            path = (*path, "kind")
        if store not in STORE_TIERS:
            raise self.fail(path, f"store {store!r} is not supported (supported: "
                            f"{', '.join(STORE_TIERS)})")

    def stream(self, stream: Any, path: Path) -> None:
        stream = self.keys(stream, path, "task.output.stream")
        rows = stream.get("chunk_rows")
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_CHUNK_ROWS:
            raise self.fail((*path, "chunk_rows"), f"must be an integer from 1 to "
                            f"{MAX_CHUNK_ROWS:,}, got {rows!r}")

    def policy(self, policy: Any, path: Path) -> None:
        policy = self.keys(policy, path, "policy")
        rules = policy.get("rules") or []
        if not isinstance(rules, list):
            raise self.fail((*path, "rules"), "must be a list of rules")
        for index, rule in enumerate(rules):
            rule_path = (*path, "rules", index)
            rule = self.keys(rule, rule_path, "policy.rule")
            if "else" in rule:
                otherwise = self.keys(rule["else"] or {}, (*rule_path, "else"), "policy.else")
                self.policy_then(otherwise.get("then") or {}, (*rule_path, "else", "then"))
            if "then" in rule:
                self.policy_then(rule["then"] or {}, (*rule_path, "then"))

    def policy_then(self, then: Any, path: Path) -> None:
        then = self.keys(then, path, "policy.then")
        if then.get("set") is not None:
            self.set_keys(then["set"], (*path, "set"), "policy")

    def loop(self, loop: Any, path: Path) -> None:
        loop = self.keys(loop, path, "loop")
        if "concurrency" in loop:
            self.in_flight(loop["concurrency"], (*path, "concurrency"))
        spec = loop.get("spec")
        if loop.get("cursor") is not None:
            self.cursor(loop, (*path, "cursor"))
        elif isinstance(spec, Mapping) and spec.get("mode") == "cursor":
            raise self.fail((*path, "spec", "mode"), "mode 'cursor' needs loop.cursor "
                            "(kind, auth, claim)")
        if spec is not None:
            spec = self.keys(spec, (*path, "spec"), "loop.spec")
            if "max_in_flight" in spec:
                self.in_flight(spec["max_in_flight"], (*path, "spec", "max_in_flight"))
            if spec.get("policy") is not None:
                self.keys(spec["policy"], (*path, "spec", "policy"), "loop.spec.policy")
            if spec.get("fanout") is not None:
                self.keys(spec["fanout"], (*path, "spec", "fanout"), "loop.spec.fanout")

    def cursor(self, loop: Mapping[str, Any], path: Path) -> None:
        """loop.cursor: NoETL's CursorSpec, alone as the loop's source."""
        cursor = self.keys(loop["cursor"], path, "loop.cursor")
        for key in ("kind", "auth", "claim"):
            if not isinstance(cursor.get(key), str) or not cursor[key].strip():
                raise self.fail((*path, key), f"loop.cursor needs `{key}` (a string)")
        if loop.get("in") is not None:
            raise self.fail((*path[:-1], "in"), "a loop has `in` or `cursor`, not both")
        if cursor.get("options") is not None:
            options = self.keys(cursor["options"], (*path, "options"), "loop.cursor.options")
            columns = options.get("key")
            if columns is not None and (not isinstance(columns, list) or not columns or not all(
                    isinstance(column, str) and column for column in columns)):
                raise self.fail((*path, "options", "key"), "must be a list of column names")
        raw_spec = loop.get("spec")
        spec: Mapping[str, Any] = raw_spec if isinstance(raw_spec, Mapping) else {}
        mode = spec.get("mode", loop.get("mode"))
        if mode not in (None, "cursor"):
            raise self.fail((*path[:-1], "spec", "mode"), f"a cursor loop runs in mode "
                            f"'cursor', not {mode!r}")
        raw_policy = spec.get("policy")
        policy: Mapping[str, Any] = raw_policy if isinstance(raw_policy, Mapping) else {}
        if policy.get("exec") == "distributed" or spec.get("loop_mode") == "fanout":
            raise self.fail((*path[:-1], "spec"), "a cursor loop cannot be a fan-out "
                            "(spec.policy.exec: distributed, spec.loop_mode: fanout): its "
                            "slots already run on any worker")

    def in_flight(self, bound: Any, path: Path) -> None:
        """An integer >= 1, or a template rendered when the loop starts."""
        if isinstance(bound, str) and "{{" in bound:
            return
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
            raise self.fail(path, f"must be an integer >= 1 or a template, got {bound!r}")

    def set_keys(self, writes: Any, path: Path, place: str) -> None:
        """Each key of a `set` names a scope this place writes (a bare name is ctx)."""
        if not isinstance(writes, Mapping):
            raise self.fail(path, f"must be a mapping, got {_type_name(writes)}")
        scopes = SET_SCOPES[place]
        for key in writes:
            scope, dot, rest = str(key).partition(".")
            if (scope in scopes and rest) or (not dot and "ctx" in scopes):
                continue
            raise self.fail((*path, key), f"a {place} `set` writes "
                            f"{', '.join(sorted(s + '.*' for s in scopes))}, not '{key}'")

    def next(self, value: Any, path: Path) -> None:
        if isinstance(value, str):
            return
        if isinstance(value, list):
            conditional = [is_branch(item) for item in value]
            if any(conditional) and not all(conditional):
                raise self.fail(path, "a `next` list is either steps or when/then/else "
                                "branches, not both")
            for index, item in enumerate(value):
                if conditional[index]:
                    self.branch(item, (*path, index), "next.branch")
                else:
                    self.arc(item, (*path, index))
            return
        if isinstance(value, Mapping) and "arcs" in value:
            value = self.keys(value, path, "next")
            if value.get("spec") is not None:
                self.keys(value["spec"], (*path, "spec"), "next.spec")
            arcs = value.get("arcs") or []
            if not isinstance(arcs, list):
                raise self.fail((*path, "arcs"), "must be a list of arcs")
            for index, arc in enumerate(arcs):
                self.arc(arc, (*path, "arcs", index))
            return
        self.arc(value, path)

    def arc(self, arc: Any, path: Path) -> None:
        if isinstance(arc, str):
            return
        arc = self.keys(spelled_arc(arc), path, "arc")
        if not isinstance(arc.get("step"), str):
            raise self.fail((*path, "step"), "an arc needs `step`, the name of a step")
        if arc.get("set") is not None:
            self.set_keys(arc["set"], (*path, "set"), "arc")

    def case(self, value: Any, path: Path) -> None:
        if not isinstance(value, list):
            raise self.fail(path, "`case` must be a list of when/then branches")
        for index, branch in enumerate(value):
            self.branch(branch, (*path, index), "case")

    def branch(self, branch: Any, path: Path, level: str) -> None:
        branch = self.keys(branch, path, level)
        if "else" in branch:
            if len(branch) > 1:
                raise self.fail(path, "an `else` branch has no `when` or `then`")
            self.then(branch["else"], (*path, "else"))
            return
        if "when" not in branch or "then" not in branch:
            raise self.fail(path, "a branch needs `when` and `then`")
        self.then(branch["then"], (*path, "then"))

    def then(self, then: Any, path: Path) -> None:
        if isinstance(then, Mapping) and set(then) == {"then"}:
            then, path = then["then"], (*path, "then")
        actions = then if isinstance(then, list) else [then]
        routes = False
        for index, action in enumerate(actions):
            action_path = (*path, index) if isinstance(then, list) else path
            if isinstance(action, str):
                routes = True
                continue
            action = self.keys(action, action_path, "then",
                               extra=_named_task_keys(action))
            for key, value in action.items():
                if key not in ACCEPTED["then"]:
                    raise self.fail((*action_path, key), f"case action '{key}' (a named tool "
                                    "task) is not supported: make it a step and route to it")
                if key == "set" and value is not None:
                    self.set_keys(value, (*action_path, "set"), "arc")
                if key == "next":
                    self.then_targets(value, (*action_path, "next"))
            if "step" in action:
                if set(action) - {"step"}:
                    raise self.fail(action_path, "a target `{step: ...}` has no other keys")
                routes = True
            routes = routes or action.get("next") is not None
        if not routes:
            raise self.fail(path, "a branch that only sets values is not supported: it "
                            "needs `next` (put unconditional writes in the step's `set`)")

    def then_targets(self, value: Any, path: Path) -> None:
        targets = value if isinstance(value, list) else [value]
        for index, target in enumerate(targets):
            target_path = (*path, index) if isinstance(value, list) else path
            if isinstance(target, str):
                continue
            target = self.keys(target, target_path, "then.target")
            if not isinstance(target.get("step"), str):
                raise self.fail((*target_path, "step"), "a target needs `step`")


def spelled_arc(arc: Any) -> Any:
    """An arc mapping with its `on` key as written: YAML 1.1 (PyYAML) reads a bare `on`
    key as the boolean true, which no other arc key can be."""
    if isinstance(arc, Mapping) and any(key is True for key in arc):
        return {("on" if key is True else key): value for key, value in arc.items()}
    return arc


def is_branch(item: Any) -> bool:
    """A when/then or else branch (of `case`, or of the older conditional `next` list)."""
    return isinstance(item, Mapping) and (("when" in item and "then" in item) or "else" in item)


def _named_task_keys(action: Any) -> frozenset[str]:
    """Keys of a then action that hold a tool (NoETL's named inline task): refused by
    name in `then()` rather than as unknown keys."""
    if not isinstance(action, Mapping):
        return frozenset()
    return frozenset(key for key, value in action.items()
                     if isinstance(value, Mapping) and "tool" in value
                     and key not in REFUSED["then"])


def _known(accepted: frozenset[str]) -> str:
    return f" (known: {', '.join(sorted(accepted))})" if accepted else ""


def _hashable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else repr(value)


def _type_name(value: Any) -> str:
    return "a list" if isinstance(value, list) else "nothing" if value is None else \
        f"a {type(value).__name__}"


def check_document(document: Mapping[str, Any], lines: dict[Path, int], label: str,
                   tool_keys: Mapping[str, tuple[frozenset[str], frozenset[str]]]) -> None:
    """Raise a PlaybookError for the first key of `document` that is not run here."""
    _Checker(label, lines, tool_keys).document(document)
