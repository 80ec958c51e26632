"""Rendering is pure: the executor loads the stored results a command reads before it
renders, and templating renders what it is given.

No database: a counting fake store stands for the result store, a recording tool for the
python tool. Proves that a referenced stored result is loaded before rendering, that an
unreferenced one (and a ref only the step's arcs name, in a loop's iterations) is never
loaded, that a loop's list of refs is loaded once per command however many templates read
it, and that a ref that cannot be read fails the command in one line naming the step.
"""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from noetl_pg.dsl import load_playbook
from noetl_pg.errors import TemplateError
from noetl_pg.executor import CommandRunner
from noetl_pg.namespace import StoredReads, command_namespace
from noetl_pg.results import CommandResults
from noetl_pg.store import ResultMissing
from noetl_pg.template_reads import Use, template_uses
from noetl_pg.templating import RefDict, render_string, render_value
from noetl_pg.tools.base import ToolContext


def _ref(name: str) -> dict[str, Any]:
    return {"result_ref": f"noetl://execution/1/result/{name}", "store_tier": "db",
            "bytes_size": 10, "sha256": "0" * 64, "content_type": "application/json"}


class _Store:
    """The store calls the executor makes, with every read counted by ref name."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.reads: Counter[str] = Counter()

    def resolve(self, uri: str) -> Any:
        name = uri.rsplit("/result/", 1)[1]
        self.reads[name] += 1
        if name not in self.values:
            raise ResultMissing(f"{uri}: no such result ref")
        return self.values[name]

    def externalize(self, *args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(value=args[3], fallbacks=[], ref=None)


class _Recorder:
    """A python tool that returns its rendered config and counts store reads at run."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.configs: list[dict[str, Any]] = []
        self.reads_at_run: list[int] = []

    def run(self, config: Any, context: ToolContext) -> Any:
        self.configs.append(config)
        self.reads_at_run.append(sum(self.store.reads.values()))
        return {"ok": True}


PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: pure, path: test/pure}
workflow:
  - step: fetch
    tool: {kind: python, code: "pass"}
  - step: big
    tool: {kind: python, code: "pass"}
  - step: agg
    tool: {kind: python, code: "pass"}
  - step: read
    tool:
      kind: python
      code: "pass"
      input:
        count: "{{ fetch.rows | length }}"
        ref: "{{ fetch_ref }}"
        second: "{{ agg.results[1].n }}"
        refs: "{{ agg.results | length }}"
  - step: whole
    tool:
      kind: python
      code: "pass"
      input:
        stored_list: "{{ agg.results }}"
        as_json: "{{ agg | tojson }}"
        refs: "{{ agg.results | length }}"
  - step: each
    tool:
      kind: python
      code: "pass"
      input:
        ns: "{% for r in agg.results %}{{ r.n }}{% endfor %}"
        again: "{{ agg.results | map(attribute='n') | list }}"
        first: "{{ agg.results[0].n }}"
  - step: on_chunk
    tool: {kind: python, code: "pass", input: {rows: "{{ chunk.rows }}"}}
  - step: iterate
    loop: {in: "{{ [1, 2, 3] }}", iterator: n}
    tool: {kind: python, code: "pass", input: {n: "{{ n }}"}}
    next:
      - {step: read, when: "{{ big.flag }}"}
  - step: fused
    tool: {kind: python, code: "pass", input: {n: 1}}
    next:
      - {step: read, when: "{{ big.flag }}"}
      - {step: each}
"""

AGG_REFS = [_ref(f"agg/iter_{index}") for index in range(4)]


def _context() -> dict[str, Any]:
    return {"execution_id": 1, "workload": {}, "ctx": {}, "results": {
        "fetch": _ref("fetch/result"), "big": _ref("big/result"),
        "agg": {"results": AGG_REFS, "stats": {"total": 4}},
    }}


def _store() -> _Store:
    values: dict[str, Any] = {"fetch/result": {"rows": [1, 2, 3]},
                              "big/result": {"flag": True, "blob": "x" * 1000}}
    values.update({f"agg/iter_{index}": {"n": index} for index in range(4)})
    values["chunks/0"] = [{"id": 1}, {"id": 2}]
    return _Store(values)


def _runner(store: _Store) -> tuple[CommandRunner, _Recorder]:
    playbook = load_playbook(PLAYBOOK)
    tool = _Recorder(store)
    runner = CommandRunner(
        {"python": tool}, lambda catalog_id: playbook,
        lambda command, results, stream: ToolContext(execution_id=1, step=command["step_name"],
                                                     command_id=1, attempt=1, dsn=""),
        store=store,  # type: ignore[arg-type]
    )
    return runner, tool


def _command(step: str, kind: str = "step", **extra: Any) -> dict[str, Any]:
    return {"command_id": 1, "attempt": 1, "catalog_id": 1, "step_name": step, "kind": kind,
            "loop_id": None, "iter_index": None, "input": None, "item": None,
            "execution_id": 1, **extra}


def test_rendering_a_ref_dict_renders_the_dict_never_its_value() -> None:
    ref = _ref("fetch/result")
    context = {"fetch": ref, "fetch_ref": RefDict(ref)}
    assert render_string("{{ fetch }}", context) == ref
    assert render_value({"a": "{{ fetch.result_ref }}"}, context) == {"a": ref["result_ref"]}
    assert render_string("uri={{ fetch_ref }}", context) == f"uri={ref['result_ref']}"
    with pytest.raises(TemplateError, match="rows"):
        render_string("{{ fetch.rows }}", context)  # nothing to load it from: plain data


def test_template_uses_tell_count_whole_read_and_constant_indices() -> None:
    uses = template_uses("{{ a.xs | length }} {{ a.xs }} {{ a.xs[2].v }} "
                         "{% for x in b.ys %}{{ x }}{% endfor %} {{ c[i].z }} {{ d | tojson }}")
    assert uses is not None
    assert uses["a"] == {Use(("xs",), "count"), Use(("xs",), "whole"),
                         Use(("xs", 2, "v"), "whole")}
    assert uses["b"] == {Use(("ys",), "read")}
    assert uses["c"] == {Use((), "read")}       # a variable index: every element
    assert uses["d"] == {Use((), "whole")}
    tests = template_uses("{% if e.xs %}{{ 1 if not e.ys else 2 }}{% endif %}")
    assert tests is not None and tests["e"] == {Use(("xs",), "count"), Use(("ys",), "count")}
    assert template_uses("{{ broken") is None


def test_namespace_holds_loaded_values_of_what_the_command_reads_only() -> None:
    store = _store()
    playbook = load_playbook(PLAYBOOK)
    step = playbook.step_named("read")
    results = CommandResults(store)  # type: ignore[arg-type]
    context = _context()
    namespace = command_namespace(
        _command("read"), context, step, playbook, StoredReads(context, results),
        playbook.command_uses["read"].step, credentials=None, redactor=None, with_refs=True)
    assert namespace["fetch"] == {"rows": [1, 2, 3]}          # loaded before rendering
    assert namespace["big"] == _ref("big/result")             # never read: still its ref
    assert namespace["agg"]["results"] == [AGG_REFS[0], {"n": 1}, *AGG_REFS[2:]]
    assert namespace["fetch_ref"] == _ref("fetch/result")
    assert store.reads == {"fetch/result": 1, "agg/iter_1": 1}


def test_step_renders_referenced_results_loaded_before_it_and_skips_the_rest() -> None:
    store = _store()
    runner, tool = _runner(store)
    outcome = runner.run(_command("read"), _context())
    assert outcome["op"] == "done", outcome
    rendered = tool.configs[0]["input"]
    assert rendered["count"] == 3 and rendered["second"] == 1 and rendered["refs"] == 4
    assert rendered["ref"] == _ref("fetch/result")
    assert store.reads == {"fetch/result": 1, "agg/iter_1": 1}
    assert tool.reads_at_run == [2]                           # nothing loaded by rendering


def test_a_list_of_refs_used_whole_or_counted_is_the_refs_as_stored() -> None:
    store = _store()
    runner, tool = _runner(store)
    assert runner.run(_command("whole"), _context())["op"] == "done"
    rendered = tool.configs[0]["input"]
    assert rendered["stored_list"] == AGG_REFS and rendered["refs"] == 4
    assert json.loads(rendered["as_json"]) == {"results": AGG_REFS, "stats": {"total": 4}}
    assert store.reads == {}


def test_a_loop_results_list_of_refs_is_loaded_once_per_command() -> None:
    store = _store()
    runner, tool = _runner(store)
    assert runner.run(_command("each"), _context())["op"] == "done"
    rendered = tool.configs[0]["input"]
    assert rendered == {"ns": 123, "again": [0, 1, 2, 3], "first": 0}  # "0123", coerced
    assert store.reads == {f"agg/iter_{index}": 1 for index in range(4)}


def test_a_ref_only_arcs_read_is_loaded_by_the_route_not_by_iterations() -> None:
    store = _store()
    runner, _ = _runner(store)
    for index in range(3):
        iteration = _command("iterate", loop_id=7, iter_index=index, item=index + 1,
                             input={"loop_total": 3})
        assert runner.run(iteration, _context())["op"] == "done"
    assert store.reads == {}
    route = runner.run(_command("iterate", kind="route", input={"event": "loop.done"}),
                       _context())
    assert route["op"] == "route" and route["targets"] == [{"step": "read", "set": None}]
    assert store.reads == {"big/result": 1}


def test_fused_arcs_load_what_they_read_once() -> None:
    store = _store()
    runner, _ = _runner(store)
    outcome = runner.run(_command("fused"), _context())
    assert outcome["op"] == "done" and {"step": "read", "set": None} in outcome["targets"]
    assert store.reads == {"big/result": 1}


def test_a_ref_that_cannot_be_read_fails_the_command_naming_the_step() -> None:
    store = _store()
    del store.values["fetch/result"]
    runner, tool = _runner(store)
    outcome = runner.run(_command("read"), _context())
    assert outcome["op"] == "fail"
    assert outcome["error"] == ("step 'read': noetl://execution/1/result/fetch/result:"
                                " no such result ref")
    assert tool.configs == []


def test_a_chunk_s_rows_by_ref_are_loaded_only_for_a_command_that_names_chunk() -> None:
    store = _store()
    runner, tool = _runner(store)
    chunk = {"chunk": {"rows": _ref("chunks/0"), "index": 0, "has_more": False}}
    assert runner.run(_command("on_chunk", input=chunk), _context())["op"] == "done"
    assert tool.configs[0]["input"] == {"rows": [{"id": 1}, {"id": 2}]}
    assert runner.run(_command("fused", input=chunk), _context())["op"] == "done"
    assert store.reads["chunks/0"] == 1
