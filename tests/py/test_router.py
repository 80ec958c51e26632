"""noetl_pg.router without a database: arc choice, the route scope and the plan facts."""

from __future__ import annotations

from typing import Any

import pytest

from noetl_pg import router
from noetl_pg.dsl import Arc, load_playbook


def _arcs(*specs: dict[str, Any]) -> list[Arc]:
    return [Arc(**spec) for spec in specs]


def _steps(chosen: list[dict[str, Any]]) -> list[str]:
    return [target["step"] for target in chosen]


ARCS = _arcs(
    {"step": "big", "when": "{{ n > 10 }}"},
    {"step": "positive", "when": "{{ n > 0 }}", "set": {"ctx.sign": "+{{ n }}"}},
    {"step": "always"},
)


@pytest.mark.parametrize(("mode", "n", "expected"), [
    ("exclusive", 20, ["big"]),
    ("exclusive", 5, ["positive"]),
    ("exclusive", -1, ["always"]),
    ("inclusive", 20, ["big", "positive", "always"]),
    ("inclusive", 5, ["positive", "always"]),
    ("inclusive", -1, ["always"]),
])
def test_exclusive_takes_the_first_match_inclusive_every_match(
    mode: str, n: int, expected: list[str]
) -> None:
    assert _steps(router.choose(ARCS, mode, "call.done", {"n": n})) == expected


def test_set_is_rendered_in_the_scope_for_chosen_arcs_only() -> None:
    chosen = router.choose(ARCS, "exclusive", "call.done", {"n": 5})
    assert chosen == [{"step": "positive", "set": {"ctx.sign": "+5"}}]


def test_an_arc_without_when_is_never_taken_after_an_error() -> None:
    arcs = _arcs({"step": "next"}, {"step": "cleanup",
                                    "when": "{{ event.name == 'call.error' }}"})
    scope = {"event": {"name": "call.error"}}
    assert _steps(router.choose(arcs, "inclusive", "call.error", scope)) == ["cleanup"]
    assert router.choose(arcs[:1], "exclusive", "call.error", scope) == []


def test_a_case_branch_is_one_choice_with_all_its_targets() -> None:
    arcs = _arcs(
        {"step": "a", "when": "{{ flag }}", "group": 0},
        {"step": "b", "when": "{{ flag }}", "group": 0},
        {"step": "c", "group": 1},
    )
    assert _steps(router.choose(arcs, "exclusive", "call.done", {"flag": True})) == ["a", "b"]
    assert _steps(router.choose(arcs, "exclusive", "call.done", {"flag": False})) == ["c"]


def test_route_scope_after_success_has_output_and_http() -> None:
    own = {"status_code": 201, "headers": {"x": "1"}, "data": {"id": 4}}
    scope = router.route_scope({"fetch": own, "region": "eu"}, "fetch", "call.done")
    assert scope["event"] == {"name": "call.done", "step": "fetch", "type": "tool.completed"}
    assert scope["result"] is own
    assert scope["output"] == {"status": "ok", "data": own,
                               "http": {"status": 201, "headers": {"x": "1"}}}
    assert scope["region"] == "eu"


def test_route_scope_after_error_has_the_error_object() -> None:
    own = {"status": "error", "error": "http GET /x returned 503",
           "output": {"http": {"status": 503}, "data": "busy"}}
    scope = router.route_scope({"fetch": own}, "fetch", "call.error", own["error"])
    error = scope["output"]["error"]
    assert error == {"kind": "http", "retryable": True, "code": "HTTP_503",
                     "status_code": 503, "message": "http GET /x returned 503"}
    assert str(error) == "http GET /x returned 503"
    assert scope["output"]["http"] == {"status": 503}
    assert scope["output"]["data"] == "busy"
    assert scope["error"] == "http GET /x returned 503"


def test_route_scope_error_without_http_is_a_tool_error() -> None:
    scope = router.route_scope({"s": None}, "s", "call.error", "boom")
    assert scope["output"]["error"]["kind"] == "tool_error"
    assert scope["output"]["error"]["retryable"] is False
    assert scope["output"]["http"] == {"status": None}
    assert router.route_scope({}, "s", "call.error", "s timed out after 1s")["output"][
        "error"]["retryable"] is True


def test_fanin_is_in_scope_after_a_fanout() -> None:
    own = {"results": [], "fanin": {"status": "partial", "done": 1, "failed": 1}}
    assert router.route_scope({"s": own}, "s", "loop.done")["fanin"]["status"] == "partial"


@pytest.mark.parametrize(("arcs", "mode", "expected"), [
    ([{"step": "a"}, {"step": "b"}], "exclusive", ["a"]),
    ([{"step": "a"}, {"step": "b"}], "inclusive", ["a", "b"]),
    ([{"step": "a", "group": 0}, {"step": "b", "group": 0}], "exclusive", ["a", "b"]),
    ([{"step": "a", "when": "{{ x }}"}, {"step": "b"}], "exclusive", None),
    ([{"step": "a", "set": {"ctx.k": 1}}], "exclusive", None),
])
def test_direct_targets(arcs: list[dict[str, Any]], mode: str,
                        expected: list[str] | None) -> None:
    assert router.direct_targets(_arcs(*arcs), mode) == expected


def test_join_steps_are_reached_from_more_than_one_step() -> None:
    successors = {"start": ["a", "b"], "a": ["join"], "b": ["join", "join"], "join": []}
    assert router.join_steps(successors) == {"join"}
    assert router.join_steps({"start": ["a", "a"], "a": []}) == set()


def test_plan_builder_uses_the_router_rules() -> None:
    playbook = load_playbook("""
workflow:
  - step: start
    tool: {kind: noop}
    case:
      - when: "{{ event.name == 'call.done' }}"
        then: {next: [{step: a}, {step: b}]}
  - step: a
    tool: {kind: noop}
    next: join
  - step: b
    tool: {kind: noop}
    next: [{step: join}]
  - step: join
    tool: {kind: noop}
""")
    plans = playbook.to_spec()["workflow"]
    by_name = {step["step"]: step["plan"] for step in plans}
    assert by_name["start"]["route_mode"] == "router"
    assert by_name["a"]["route_mode"] == "direct"
    assert by_name["a"]["direct_targets"] == ["join"]
    assert by_name["join"]["is_join"] is True
    assert by_name["a"]["is_join"] is False
