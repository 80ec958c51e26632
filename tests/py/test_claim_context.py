"""A claim carries only what its step reads (issue 13 item 1).

The plan of each step names the earlier results (and their top-level keys) its templates
read (dsl `reads`/`loop_reads`); noetl.describe_commands, which builds every claim's
payload, sends only those. Measured here as the bytes of the context of real commands of
real runs: they must not grow with the part of a result a step does not read.
"""

from __future__ import annotations

from typing import Any

import pytest
from engine_harness import Engine

from noetl_pg.dsl import load_playbook

PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: claim_context, path: test/claim_context}
workload: {n: 10, pad: 10}
workflow:
  - step: start
    tool:
      kind: python
      input: {n: "{{ n }}", pad: "{{ pad }}"}
      code: |
        result = {"xs": list(range(n)), "factor": 3, "pad": "p" * pad}
    next: work
  - step: work
    loop: {in: "{{ start.xs }}", iterator: x, spec: {mode: parallel, max_in_flight: 4}}
    tool:
      kind: python
      input: {x: "{{ x }}", factor: "{{ start.factor }}"}
      code: |
        result = x * factor
    next: sum
  - step: sum
    tool:
      kind: python
      input: {values: "{{ work.results }}", factor: "{{ start.data.factor }}"}
      code: |
        result = {"total": sum(values), "factor": factor}
"""


def _context_of(engine: Engine, execution_id: int, where: str) -> dict[str, Any]:
    """The claim payload's context of the first command of `execution_id` matching `where`
    (describe_commands builds exactly what claim_commands and finish_and_claim return)."""
    rows = engine.sql(
        f"""select d.context, octet_length((d.context -> 'results')::text) as result_bytes
            from noetl.command as c,
                 noetl.describe_commands(array[c.command_id]) as d
            where c.execution_id = %s and {where}
            order by c.command_id limit 1""",
        execution_id,
    )
    assert rows, where
    return rows[0]


def _run(engine: Engine, path: str, n: int, pad: int) -> int:
    row = engine.wait(engine.start(path, {"n": n, "pad": pad}), timeout=120)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"total": 3 * n * (n - 1) // 2, "factor": 3}
    return int(row["execution_id"])


def test_claim_context_does_not_grow_with_results_the_step_does_not_read(
    engine: Engine,
) -> None:
    path = engine.register(PLAYBOOK)
    small = _run(engine, path, n=10, pad=10)
    large = _run(engine, path, n=2_000, pad=40_000)

    # The unread parts really are large: the whole-context form carries them.
    whole = engine.sql("select octet_length(noetl.command_context(%s)::text) as bytes", large)
    assert whole[0]["bytes"] > 45_000

    iteration = "c.step_name = 'work' and c.loop_id is not null"
    assert (_context_of(engine, large, iteration)["result_bytes"]
            == _context_of(engine, small, iteration)["result_bytes"])
    # An iteration gets start.factor only: not the collection, not its loop's results.
    assert _context_of(engine, large, iteration)["context"]["results"] == {
        "start": {"factor": 3}
    }
    # The step after the loop reads the loop's result whole (it grows with n, as it must)
    # and only start's factor (for `start.data.factor`: also `data`, had start one).
    after = _context_of(engine, large, "c.step_name = 'sum'")["context"]["results"]
    assert set(after) == {"start", "work"}
    assert after["start"] == {"factor": 3}
    # The loop command renders the collection: it gets start.xs, not start.pad.
    loop_command = _context_of(engine, large, "c.kind = 'loop'")["context"]["results"]
    assert loop_command == {"start": {"xs": list(range(2_000))}}


UNPARSABLE = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: claim_context_all, path: test/claim_context_all}
workflow:
  - step: start
    tool: {kind: python, code: "result = {'a': 1, 'b': 2}"}
    next: other
  - step: other
    tool: {kind: python, code: "result = 5"}
    next: last
  - step: last
    tool:
      kind: python
      input: {a: "{{ start.a }}", broken: "{{ 'unterminated }}"}
      code: "result = a"
"""


def test_a_step_whose_templates_cannot_be_analysed_reads_everything() -> None:
    plans = {step["step"]: step["plan"] for step in load_playbook(UNPARSABLE).to_spec()["workflow"]}
    assert plans["last"]["reads"] is None
    assert plans["start"]["reads"] == {}


def test_a_command_names_as_none_only_the_steps_its_templates_read() -> None:
    """The namespace gives a step that has not run None for the names a command's templates
    (arcs included) may read, not for every step: a 2,000-step chain's command costs the
    same as a short one's. A step whose templates cannot be analysed gets every step."""
    lines = ["metadata: {name: long_chain, path: test/long_chain}", "workflow:"]
    for index in range(2000):
        source = "1" if index == 0 else f"{{{{ s{index - 1}.v if s{index - 1} else s0 }}}}"
        lines += [f"  - step: s{index}", f"    tool: {{kind: noop, input: {{v: '{source}'}}}}"]
        if index + 1 < 2000:
            lines.append(f"    next: [{{step: s{index + 1}, when: '{{{{ s{index}.v }}}}'}}]")
    chain = load_playbook("\n".join(lines) + "\n")
    assert chain.step_names_read["s0"] == ("s0",)  # its arc reads its own result
    assert chain.step_names_read["s1500"] == ("s0", "s1499", "s1500")
    assert chain.step_named("s1999").step == "s1999"
    with pytest.raises(KeyError):
        chain.step_named("s2000")
    everything = load_playbook(UNPARSABLE).step_names_read
    assert everything["last"] == ("start", "other", "last")
    assert everything["other"] == ()


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ start.xs }}", {"start": ["xs"]}),
        ("{{ start['xs'] }}", {"start": ["xs"]}),
        ("{{ start.data.xs }}", {"start": ["data", "xs"]}),
        ("{{ start.data }}", {"start": True}),
        ("{{ start }}", {"start": True}),
        ("{{ start | tojson }}", {"start": True}),
        ("{{ start[key] }}", {"start": True}),
        ("{{ start.xs[i].y }}", {"start": ["xs"]}),
        ("{{ start.get('xs') }}", {"start": True}),
        ("{{ start_ref }}", {"start": True}),
        ("{% for s in start.xs %}{{ s }}{% endfor %}", {"start": ["xs"]}),
        ("{% set start = 1 %}{{ start }}", {}),
        ("{{ other.a }} {{ other.b }}", {"other": ["a", "b"]}),
        ("{{ not_a_step.xs }} {{ workload.x }}", {}),
    ],
)
def test_reads_names_the_results_and_keys_a_template_reads(
    template: str, expected: dict[str, Any]
) -> None:
    text = f"""
workflow:
  - step: start
    tool: {{kind: noop}}
    next: other
  - step: other
    tool: {{kind: noop}}
    next: last
  - step: last
    tool: {{kind: noop, input: {{v: {template!r}}}}}
"""
    plans = {step["step"]: step["plan"] for step in load_playbook(text).to_spec()["workflow"]}
    assert plans["last"]["reads"] == expected


def test_bare_conditions_and_route_commands_read_what_their_arcs_name() -> None:
    text = """
workflow:
  - step: start
    tool: {kind: noop}
    next:
      - step: other
        when: "other.ok and start.flag"
  - step: other
    tool: {kind: noop}
"""
    plans = {step["step"]: step["plan"] for step in load_playbook(text).to_spec()["workflow"]}
    assert plans["start"]["reads"] == {"other": ["ok"], "start": ["flag"]}
