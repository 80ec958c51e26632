"""NoETL compatibility of the language: every key is run or refused at registration, and
`case` runs in full (then as a dict, a list of actions, several branches, else).

The refusal table names, per playbook, the step, the field and the line the error must
give; the accepted table shows each older form normalised into arcs; the runtime tests
run playbooks written the way NoETL users write them and assert which steps ran, how
often and with what output.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any

import pytest
from engine_harness import Engine

from noetl_pg.dsl import load_playbook
from noetl_pg.dsl_keys import NO_EFFECT
from noetl_pg.errors import PlaybookError


def _doc(body: str) -> str:
    return "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: t, path: compat/t}\n" \
        + textwrap.dedent(body)


def _ran(engine: Engine, execution_id: int) -> Counter[str]:
    """How often each step finished (done or failed), from the event log."""
    return Counter(event["node_name"] for event in engine.events(execution_id)
                   if event["event_type"] in ("call.done", "call.error")
                   and event["node_name"])


# (id, playbook body, step, field, line, words the message must contain)
REFUSED = [
    ("document-vars", """\
        vars: {a: 1}
        workflow:
          - step: s
            tool: {kind: noop}
        """, None, "vars", 4, "use `workload`"),
    ("document-unknown", """\
        workflow:
          - step: s
            tool: {kind: noop}
        schedule: daily
        """, None, "schedule", 7, "unknown key 'schedule'"),
    ("step-unknown", """\
        workflow:
          - step: s
            tool: {kind: noop}
            retries: 3
        """, "s", "retries", 7, "unknown key 'retries'"),
    ("step-when", """\
        workflow:
          - step: s
            when: "{{ true }}"
            tool: {kind: noop}
        """, "s", "when", 6, "next.arcs[].when"),
    ("step-spec", """\
        workflow:
          - step: s
            spec: {policy: {admit: {rules: []}}}
            tool: {kind: noop}
        """, "s", "spec", 6, "step.spec"),
    ("tool-unknown-key", """\
        workflow:
          - step: s
            tool:
              kind: python
              code: "result = 1"
              interpreter: pypy
        """, "s", "tool.interpreter", 9, "unknown key 'interpreter'"),
    ("tool-key-of-another-kind", """\
        workflow:
          - step: s
            tool: {kind: noop, url: "http://x"}
        """, "s", "tool.url", 6, "unknown key 'url'"),
    ("tool-eval", """\
        workflow:
          - step: s
            tool:
              kind: python
              code: "result = 1"
              eval: [{expr: x}]
        """, "s", "tool.eval", 9, "policy.rules"),
    ("tool-unknown-kind", """\
        workflow:
          - step: s
            tool: {kind: teleport}
        """, "s", "tool.kind", 6, "unknown tool kind 'teleport'"),
    ("pipeline-task-unknown-key", """\
        workflow:
          - step: s
            tool:
              - {name: a, kind: noop}
              - {name: b, kind: python, code: "result = 1", cache: true}
        """, "s", "tool[1].cache", 8, "unknown key 'cache'"),
    ("task-spec-unknown", """\
        workflow:
          - step: s
            tool:
              kind: noop
              spec: {priority: high}
        """, "s", "tool.spec.priority", 8, "unknown key 'priority'"),
    ("task-output-select", """\
        workflow:
          - step: s
            tool:
              kind: noop
              output:
                select: [{path: $.x, as: x}]
        """, "s", "tool.output.select", 9, "output.select"),
    ("retry-unknown", """\
        workflow:
          - step: s
            tool:
              kind: noop
              retry: {max_attempts: 2, jitter: true}
        """, "s", "tool.retry.jitter", 8, "unknown key 'jitter'"),
    ("policy-on-unmatched", """\
        workflow:
          - step: s
            tool:
              kind: noop
              spec:
                policy:
                  on_unmatched: fail
                  rules: []
        """, "s", "tool.spec.policy.on_unmatched", 10, "else"),
    ("policy-inclusive", """\
        workflow:
          - step: s
            tool:
              kind: noop
              spec:
                policy:
                  mode: inclusive
                  rules: []
        """, "s", "tool.spec.policy.mode", 10, "'inclusive' is not supported"),
    ("policy-rule-unknown", """\
        workflow:
          - step: s
            tool:
              kind: noop
              spec:
                policy:
                  rules:
                    - when: "{{ true }}"
                      unless: "{{ false }}"
                      then: {do: continue}
        """, "s", "tool.spec.policy.rules[0].unless", 12, "unknown key 'unless'"),
    ("policy-then-unknown-do", """\
        workflow:
          - step: s
            tool:
              kind: noop
              spec:
                policy:
                  rules:
                    - when: "{{ true }}"
                      then: {do: skip}
        """, "s", "tool.spec.policy.rules[0].then.do", 12, "'skip' is not supported"),
    ("policy-then-unknown-key", """\
        workflow:
          - step: s
            tool:
              kind: noop
              spec:
                policy:
                  rules:
                    - else:
                        then: {do: continue, notify: ops}
        """, "s", "tool.spec.policy.rules[0].else.then.notify", 12,
     "unknown key 'notify'"),
    ("loop-cursor-reclaim", """\
        workflow:
          - step: s
            loop:
              iterator: row
              cursor:
                kind: postgres
                auth: pg
                claim: "select 1"
                options: {reclaim_after: 300}
            tool: {kind: noop}
        """, "s", "loop.cursor.options.reclaim_after", 12, "offered again by the engine"),
    ("loop-unknown", """\
        workflow:
          - step: s
            loop:
              in: "{{ [1, 2] }}"
              iterator: x
              batch: 10
            tool: {kind: noop}
        """, "s", "loop.batch", 9, "unknown key 'batch'"),
    ("loop-spec-unknown", """\
        workflow:
          - step: s
            loop:
              in: "{{ [1, 2] }}"
              iterator: x
              spec: {mode: parallel, ordered: true}
            tool: {kind: noop}
        """, "s", "loop.spec.ordered", 9, "unknown key 'ordered'"),
    ("loop-mode-cursor", """\
        workflow:
          - step: s
            loop:
              in: "{{ [1, 2] }}"
              iterator: x
              spec: {mode: cursor}
            tool: {kind: noop}
        """, "s", "loop.spec.mode", 9, "mode 'cursor' needs loop.cursor"),
    ("loop-max-in-flight-zero", """\
        workflow:
          - step: s
            loop:
              in: "{{ [1, 2] }}"
              iterator: x
              spec: {mode: parallel, max_in_flight: 0}
            tool: {kind: noop}
        """, "s", "loop.spec.max_in_flight", 9, "must be an integer >= 1"),
    ("next-unknown", """\
        workflow:
          - step: s
            tool: {kind: noop}
            next:
              spec: {mode: exclusive}
              arcs: [{step: t}]
              fallback: t
          - step: t
            tool: {kind: noop}
        """, "s", "next.fallback", 10, "unknown key 'fallback'"),
    ("next-spec-policy", """\
        workflow:
          - step: s
            tool: {kind: noop}
            next:
              spec: {mode: exclusive, policy: {dedupe: true}}
              arcs: [{step: t}]
          - step: t
            tool: {kind: noop}
        """, "s", "next.spec.policy", 8, "next.spec.policy"),
    ("arc-unknown", """\
        workflow:
          - step: s
            tool: {kind: noop}
            next:
              arcs:
                - {step: t, priority: 1}
          - step: t
            tool: {kind: noop}
        """, "s", "next.arcs[0].priority", 9, "unknown key 'priority'"),
    ("old-next-data", """\
        workflow:
          - step: s
            tool: {kind: noop}
            next:
              - step: t
                data: {alerts: "{{ s }}"}
          - step: t
            tool: {kind: noop}
        """, "s", "next[0].data", 9, "`data` on an arc"),
    ("arc-set-step-scope", """\
        workflow:
          - step: s
            tool: {kind: noop}
            next:
              arcs:
                - step: t
                  set: {step.flag: true}
          - step: t
            tool: {kind: noop}
        """, "s", "next.arcs[0].set.step.flag", 10, "writes ctx.*"),
    ("step-set-unknown-scope", """\
        workflow:
          - step: s
            tool: {kind: noop}
            set: {vars.total: 3}
        """, "s", "set.vars.total", 7, "not 'vars.total'"),
    ("case-branch-unknown", """\
        workflow:
          - step: s
            tool: {kind: noop}
            case:
              - when: "{{ true }}"
                then: {next: [{step: t}]}
                priority: 2
          - step: t
            tool: {kind: noop}
        """, "s", "case[0].priority", 10, "unknown key 'priority'"),
    ("case-then-retry", """\
        workflow:
          - step: s
            tool: {kind: noop}
            case:
              - when: "{{ event.name == 'call.error' }}"
                then:
                  retry: {delay: 5}
        """, "s", "case[0].then.retry", 10, "do: retry"),
    ("case-then-sink", """\
        workflow:
          - step: s
            tool: {kind: noop}
            case:
              - when: "{{ event.name == 'call.done' }}"
                then:
                  - sink: {tool: postgres, table: t}
                  - next: [{step: t}]
          - step: t
            tool: {kind: noop}
        """, "s", "case[0].then[0].sink", 10, "then: sink"),
    ("case-then-named-task", """\
        workflow:
          - step: s
            tool: {kind: noop}
            case:
              - when: "{{ event.name == 'call.done' }}"
                then:
                  - save_it: {tool: {kind: noop}}
                  - next: [{step: t}]
          - step: t
            tool: {kind: noop}
        """, "s", "case[0].then[0].save_it", 10, "named tool task"),
    ("case-then-set-only", """\
        workflow:
          - step: s
            tool: {kind: noop}
            case:
              - when: "{{ event.name == 'call.done' }}"
                then: {set: {ctx.seen: true}}
        """, "s", "case[0].then", 9, "needs `next`"),
    ("case-target-unknown-key", """\
        workflow:
          - step: s
            tool: {kind: noop}
            case:
              - when: "{{ true }}"
                then:
                  next: [{step: t, with: {a: 1}}]
          - step: t
            tool: {kind: noop}
        """, "s", "case[0].then.next[0].with", 10, "unknown key 'with'"),
    ("case-and-next", """\
        workflow:
          - step: s
            tool: {kind: noop}
            next: t
            case:
              - when: "{{ true }}"
                then: {next: [{step: t}]}
          - step: t
            tool: {kind: noop}
        """, "s", "case", 8, "not both"),
    ("next-list-mixed", """\
        workflow:
          - step: s
            tool: {kind: noop}
            next:
              - step: t
              - when: "{{ true }}"
                then: [{step: t}]
          - step: t
            tool: {kind: noop}
        """, "s", "next", 7, "not both"),
    ("policy-else-without-then", """\
        workflow:
          - step: s
            tool:
              kind: noop
              spec:
                policy:
                  rules:
                    - else: {do: continue}
        """, "s", "tool.spec.policy.rules[0].else.do", 11, "else: {then: {do: ...}}"),
    ("executor-final-step", """\
        executor:
          spec: {entry_step: s, final_step: s}
        workflow:
          - step: s
            tool: {kind: noop}
        """, None, "executor.spec.final_step", 5, "final_step"),
    ("executor-requires-unknown-kind", """\
        executor:
          requires: {tools: [python, snowflake_ml]}
        workflow:
          - step: s
            tool: {kind: noop}
        """, None, "executor.requires.tools[1]", 5, "'snowflake_ml' is not available"),
    ("workbook-unknown", """\
        workbook:
          - name: w
            tool: {kind: python, code: "result = 1"}
            cache: 5
        workflow:
          - step: s
            tool: {kind: workbook, name: w}
        """, None, "workbook[0].cache", 7, "unknown key 'cache'"),
    ("workbook-tool-unknown", """\
        workbook:
          - name: w
            tool: {kind: python, code: "result = 1", sandbox: strict}
        workflow:
          - step: s
            tool: {kind: workbook, name: w}
        """, None, "workbook[0].tool.sandbox", 6, "unknown key 'sandbox'"),
]


@pytest.mark.parametrize(("body", "step", "field", "line", "words"),
                         [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_refused_keys_name_playbook_step_field_and_line(
    body: str, step: str | None, field: str, line: int, words: str
) -> None:
    with pytest.raises(PlaybookError) as caught:
        load_playbook(_doc(body), source="compat/t.yaml")
    error = caught.value
    assert (error.playbook, error.step, error.field, error.line) == (
        "compat/t.yaml", step, field, line), str(error)
    assert words in error.message
    assert "\n" not in str(error)


def test_no_effect_keys_are_one_list_and_load() -> None:
    assert NO_EFFECT["step"] >= {"desc"}
    playbook = load_playbook(_doc("""\
        executor: {profile: distributed, version: noetl-runtime/1, spec: {entry_step: s}}
        workflow:
          - step: s
            desc: greets
            description: also documentation
            tool: {kind: noop, desc: does nothing}
        """))
    assert playbook.workflow[0].desc == "greets"


def _arcs(body: str, step: str = "s") -> tuple[str, list[tuple[str, str | None, int | None]]]:
    next_spec = load_playbook(_doc(body)).step_named(step).next
    assert next_spec is not None
    return next_spec.mode, [(arc.step, arc.when, arc.group) for arc in next_spec.arcs]


TARGETS = """
  - step: a
    tool: {kind: noop}
  - step: b
    tool: {kind: noop}
"""

ACCEPTED = [
    ("next-string", "next: a", ("exclusive", [("a", None, None)])),
    ("next-list", "next: [{step: a}, {step: b}]",
     ("inclusive", [("a", None, None), ("b", None, None)])),
    ("next-list-of-names", "next: [a, b]",
     ("inclusive", [("a", None, None), ("b", None, None)])),
    ("next-when-true", "next: [{step: a, when: true}]", ("inclusive", [("a", None, None)])),
    ("next-conditional-list", """next:
      - when: "{{ x }}"
        then: [{step: a}]
      - else: [{step: b}]""", ("exclusive", [("a", "{{ x }}", 0), ("b", None, 1)])),
    ("case-then-dict", """case:
      - when: "{{ x }}"
        then: {next: [{step: a}, {step: b}]}""",
     ("exclusive", [("a", "{{ x }}", 0), ("b", "{{ x }}", 0)])),
    ("case-then-list", """case:
      - when: "{{ event.name == 'call.done' }}"
        then: [{next: [{step: a}]}]""",
     ("exclusive", [("a", "{{ event.name == 'call.done' }}", 0)])),
    ("case-then-targets", """case:
      - when: "{{ x }}"
        then: [{step: a}]
      - else:
          then: {next: b}""", ("exclusive", [("a", "{{ x }}", 0), ("b", "{{ true }}", 1)])),
]


@pytest.mark.parametrize(("routing", "expected"), [case[1:] for case in ACCEPTED],
                         ids=[case[0] for case in ACCEPTED])
def test_older_routing_forms_become_arcs(routing: str, expected: Any) -> None:
    body = "workflow:\n  - step: s\n    tool: {kind: noop}\n    " + routing + TARGETS
    assert _arcs(body) == expected


# --- case at runtime -----------------------------------------------------------------


def test_seed_regression_case_with_then_as_a_list_runs_both_steps(engine: Engine) -> None:
    """The seeds' example: `then` is a LIST of actions; it used to complete after test1."""
    row = engine.run(_doc("""\
        workflow:
          - step: test1
            tool: {kind: python, code: "result = {'n': 1}"}
            case:
              - when: "{{ event.name == 'call.done' }}"
                then:
                  - next:
                      - step: test2
          - step: test2
            tool: {kind: python, input: {n: "{{ test1.n }}"}, code: "result = {'n': n + 1}"}
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert _ran(engine, row["execution_id"]) == {"test1": 1, "test2": 1}
    assert row["result"] == {"n": 2}


def test_case_then_list_with_set_and_next(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workload: {threshold: 2}
        workflow:
          - step: count
            tool: {kind: python, code: "result = {'n': 5}"}
            case:
              - when: "{{ event.name == 'call.done' and count.n > threshold }}"
                then:
                  - set: {ctx.level: high, ctx.seen: "{{ count.n }}"}
                  - next: [{step: report}]
          - step: report
            tool:
              kind: python
              input: {level: "{{ ctx.level }}", seen: "{{ seen }}"}
              code: "result = {'level': level, 'seen': seen}"
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"level": "high", "seen": 5}


def test_case_branch_with_two_targets_starts_both(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workflow:
          - step: start
            tool: {kind: noop}
            case:
              - when: "{{ event.name == 'call.done' }}"
                then:
                  next: [{step: left}, {step: right}]
          - step: left
            tool: {kind: python, code: "result = {'side': 'left'}"}
          - step: right
            tool: {kind: python, code: "result = {'side': 'right'}"}
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert _ran(engine, row["execution_id"]) == {"start": 1, "left": 1, "right": 1}


@pytest.mark.parametrize(("amount", "expected"), [(500, "large"), (50, "medium"), (5, "small")])
def test_case_several_branches_first_match_wins_and_else(
    engine: Engine, amount: int, expected: str
) -> None:
    row = engine.run(_doc("""\
        workload: {amount: 0}
        workflow:
          - step: classify
            tool: {kind: python, input: {amount: "{{ amount }}"}, code: "result = {'a': amount}"}
            case:
              - when: "{{ classify.a > 100 }}"
                then: {next: [{step: large}]}
              - when: "{{ classify.a > 10 }}"
                then: {next: [{step: medium}]}
              - else:
                  - step: small
          - step: large
            tool: {kind: python, code: "result = 'large'"}
          - step: medium
            tool: {kind: python, code: "result = 'medium'"}
          - step: small
            tool: {kind: python, code: "result = 'small'"}
        """), {"amount": amount})
    assert row["status"] == "COMPLETED", row["error"]
    ran = _ran(engine, row["execution_id"])
    assert ran == {"classify": 1, expected: 1}
    assert row["result"] == expected


def test_case_routes_call_error_to_a_handler(engine: Engine) -> None:
    row = engine.run(_doc("""\
        workflow:
          - step: risky
            tool: {kind: python, code: "raise RuntimeError('disk full')"}
            case:
              - when: "{{ event.name == 'call.error' }}"
                then:
                  - set: {ctx.why: "{{ error }}", ctx.kind: "{{ output.error.kind }}"}
                  - next: [{step: handle}]
              - when: "{{ event.name == 'call.done' }}"
                then: {next: [{step: fine}]}
          - step: handle
            tool:
              kind: python
              input: {why: "{{ ctx.why }}", kind: "{{ ctx.kind }}"}
              code: "result = {'why': why, 'kind': kind}"
          - step: fine
            tool: {kind: noop}
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert _ran(engine, row["execution_id"]) == {"risky": 1, "handle": 1}
    assert "disk full" in row["result"]["why"]
    assert row["result"]["kind"] == "tool_error"


def test_case_else_is_taken_after_an_error_no_branch_held(engine: Engine) -> None:
    """NoETL's case `else` fires when no branch held, after call.error too."""
    row = engine.run(_doc("""\
        workflow:
          - step: risky
            tool: {kind: python, code: "raise RuntimeError('nope')"}
            case:
              - when: "{{ event.name == 'call.done' }}"
                then: {next: [{step: fine}]}
              - else:
                  - next: [{step: fallback}]
          - step: fine
            tool: {kind: noop}
          - step: fallback
            tool: {kind: python, code: "result = 'fell back'"}
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == "fell back"
    assert _ran(engine, row["execution_id"]) == {"risky": 1, "fallback": 1}


def test_retry_backoff_may_be_a_factor() -> None:
    step = _step("""\
        - step: s
          tool: {kind: noop, retry: {max_attempts: 3, backoff: 1.5, delay: 0.1}}
        """)
    assert step.tool.retry.backoff == 1.5  # type: ignore[union-attr]


def test_conditional_next_list_with_else(engine: Engine) -> None:
    text = _doc("""\
        workload: {state: idle}
        workflow:
          - step: start
            tool: {kind: noop}
            next:
              - when: '{{ workload.state == "ready" }}'
                then:
                  - step: work
              - else:
                  - step: end
          - step: work
            tool: {kind: python, code: "result = 'worked'"}
          - step: end
            tool: {kind: python, code: "result = 'ended'"}
        """)
    ready = engine.run(text, {"state": "ready"})
    idle = engine.run(text)
    assert (ready["status"], ready["result"]) == ("COMPLETED", "worked")
    assert (idle["status"], idle["result"]) == ("COMPLETED", "ended")
    assert _ran(engine, idle["execution_id"]) == {"start": 1, "end": 1}


def test_case_in_a_chain_runs_each_step_once(engine: Engine) -> None:
    """The regression master's sequential form: a chain of case/then steps."""
    steps = []
    for index in range(1, 5):
        routing = (f"""
    case:
      - when: "{{{{ event.name == 'call.done' }}}}"
        then:
          - next:
              - step: t{index + 1}""" if index < 4 else "")
        steps.append(f"""
  - step: t{index}
    tool: {{kind: python, input: {{i: {index}}}, code: "result = {{'i': i}}"}}{routing}""")
    row = engine.run(_doc("workflow:" + "".join(steps) + "\n"))
    assert row["status"] == "COMPLETED", row["error"]
    assert _ran(engine, row["execution_id"]) == {"t1": 1, "t2": 1, "t3": 1, "t4": 1}
    assert row["result"] == {"i": 4}


def test_a_refused_playbook_is_not_stored(engine: Engine) -> None:
    before = engine.sql("select count(*) as n from noetl.catalog")[0]["n"]
    with pytest.raises(PlaybookError, match="unknown key 'retries'"):
        engine.register(_doc("""\
            workflow:
              - step: s
                tool: {kind: noop}
                retries: 3
            """))
    assert engine.sql("select count(*) as n from noetl.catalog")[0]["n"] == before


# --- the other older forms ------------------------------------------------------------


def _step(body: str) -> Any:
    return load_playbook(_doc("workflow:\n" + textwrap.indent(textwrap.dedent(body), "  "))
                         ).workflow[0]


def test_older_loop_tool_and_store_forms_normalise() -> None:
    looped = _step("""\
        - step: s
          loop: {in: "{{ xs }}", iterator: x, mode: async, concurrency: 4}
          tool: {kind: python, args: {a: 1}, code: "result = a"}
        """)
    assert (looped.loop.spec.mode, looped.loop.spec.max_in_flight) == ("parallel", 4)
    assert looped.task_configs[0]["input"] == {"a": 1}
    assert "args" not in looped.task_configs[0]
    child = _step("""\
        - step: s
          tool: {kind: playbook, path: lib/child, payload: {n: 2}}
        """)
    assert child.task_configs[0]["input"] == {"n": 2}
    stores = [_step(f"""\
        - step: s
          tool: {{kind: noop, output: {{store: {store}}}}}
        """).task_configs[0].get("output", {}).get("store")
        for store in ("{kind: disk}", "{kind: object}", "s3", "{kind: auto}", "db")]
    assert stores == ["fs", "fs", "s3", None, "db"]


def test_a_stored_spec_reads_back_unchanged() -> None:
    """Workers rebuild the playbook from the catalog's spec (plan and entry_step included)."""
    from noetl_pg.dsl import Playbook

    playbook = load_playbook(_doc("""\
        keychain: [{name: api, kind: secret_manager}]
        workflow:
          - step: s
            tool: {kind: noop}
            case:
              - when: "{{ true }}"
                then: {next: [{step: t}], set: {ctx.k: 1}}
          - step: t
            tool: {kind: noop}
        """))
    spec = playbook.to_spec()
    again = Playbook.model_validate(spec)
    assert again.to_spec() == spec
    assert spec["workflow"][0]["next"]["arcs"] == [
        {"step": "t", "set": {"ctx.k": 1}, "group": 0}]


def test_tool_keys_are_the_same_without_the_duckdb_extra() -> None:
    """Registration runs where the duckdb package may be missing: its stand-in declares the
    same keys (and is rendered, streamed and given scripts alike), so the same playbooks
    are accepted and refused."""
    from noetl_pg.extras import missing_extra_tool
    from noetl_pg.tools.duckdb import DuckdbTool
    from noetl_pg.tools.postgres import DuckdbKind

    stand_in = missing_extra_tool(DuckdbKind, extra="duckdb")
    assert stand_in.config_keys == DuckdbTool.config_keys
    for declared in ("kind", "sql_text", "streams", "script_field"):
        assert getattr(stand_in, declared) == getattr(DuckdbTool, declared)


@pytest.mark.parametrize(("value", "accepted"), [("continue", True), ("fail", True),
                                                 ("ignore", False)])
def test_loop_on_error_values(value: str, accepted: bool) -> None:
    body = f"""\
        workflow:
          - step: s
            loop: {{in: "{{{{ [1] }}}}", iterator: x, spec: {{on_error: {value}}}}}
            tool: {{kind: noop}}
        """
    if accepted:
        assert load_playbook(_doc(body)).workflow[0].loop.spec.on_error == value  # type: ignore[union-attr]
    else:
        with pytest.raises(PlaybookError, match="'ignore' is not supported"):
            load_playbook(_doc(body))


NO_MATCH = """\
    executor: {spec: {no_next_is_error: %s}}
    workflow:
      - step: s
        tool: {kind: python, code: "result = {'n': 1}"}
        next:
          arcs:
            - {step: t, when: "{{ s.n > 5 }}"}
      - step: t
        tool: {kind: noop}
    """


@pytest.mark.parametrize(("flag", "status"), [("true", "FAILED"), ("false", "COMPLETED")])
def test_no_next_is_error(engine: Engine, flag: str, status: str) -> None:
    row = engine.run(_doc(NO_MATCH % flag))
    assert row["status"] == status, row["error"]
    assert "t" not in _ran(engine, row["execution_id"])
    assert engine.sql("select count(*) as n from noetl.command where execution_id = %s "
                      "and step_name = 's' and kind <> 'route'", row["execution_id"])[0]["n"] == 1
    if status == "FAILED":
        assert "no arc matched" in row["error"]
