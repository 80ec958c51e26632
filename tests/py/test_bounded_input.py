"""Bounded input: alias bombs, deep nesting, huge workflows, runaway cycles, null characters
and lone surrogates end in one-line errors naming the playbook and the limit."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml
from engine_harness import REPO_ROOT, Engine

NOETL = [sys.executable, "-m", "noetl_pg.cli"]
MEMORY_CAP_BYTES = 1536 * 1024 * 1024

# The 469-byte document: nine levels of nine aliases, 9**9 strings once expanded.
ALIAS_BOMB = "\n".join(
    ['metadata: {name: bomb, path: security/bomb}', 'a: &a ["lol","lol","lol","lol","lol",'
     '"lol","lol","lol","lol"]']
    + [f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]"
       for prev, name in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["workflow: [{step: s, tool: {kind: noop}}]"]
)


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


def _register(dsn: str, file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOETL, "catalog", "register", str(file)], cwd=REPO_ROOT,
                          env={**os.environ, "NOETL_DSN": dsn, "COLUMNS": "1000", **env}, text=True,
                          capture_output=True, timeout=120, preexec_fn=_cap_memory)


def _chain(steps: int) -> str:
    lines = ["metadata: {name: chain, path: security/chain}", "workflow:"]
    for index in range(steps):
        lines.append(f"  - step: s{index}\n    tool: {{kind: noop}}")
        if index + 1 < steps:
            lines.append(f"    next: {{arcs: [{{step: s{index + 1}}}]}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("name", "text", "limit"), [
    ("alias bomb", ALIAS_BOMB, "YAML nodes (aliases included; NOETL_MAX_PLAYBOOK_NODES)"),
    ("deep nesting", "metadata: {path: security/deep}\nx: " + "[" * 5000 + "]" * 5000,
     "nests deeper than 64 levels"),
    ("deep block nesting", "metadata: {path: security/deep}\nx:\n"
     + "".join("  " * (i + 1) + "-\n" for i in range(500)), "nests deeper than 64 levels"),
    ("10001 steps", _chain(10_001), "more than 10000 steps (NOETL_MAX_PLAYBOOK_STEPS)"),
])
def test_register_refuses_in_one_line(fresh_dsn: str, tmp_path: Path, name: str, text: str,
                                      limit: str) -> None:
    file = tmp_path / "playbook.yaml"
    file.write_text(text)
    result = _register(fresh_dsn, file)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and limit in lines[0]
    assert "playbook" in lines[0]
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("select count(*) from noetl.catalog").fetchone() == (0,)


def _lines(node: yaml.Node) -> list[tuple[int, int]]:
    """Every node's start (line, column), depth first."""
    found = [(node.start_mark.line, node.start_mark.column)]
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found += _lines(key) + _lines(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found += _lines(item)
    return found


def test_the_fast_loader_gives_the_pure_loaders_documents_lines_and_errors() -> None:
    """load_bounded composes with libyaml, which is faster; what it returns (documents, the
    node lines errors name) and what it refuses are the pure-Python loader's."""
    from noetl_pg import yamlbound

    texts = [path.read_text() for path in sorted((REPO_ROOT / "examples").rglob("*.yaml"))]
    assert len(texts) > 20
    for text in texts:
        loader = yaml.SafeLoader(text)
        try:
            pure_root = loader.get_single_node()
            pure = loader.construct_document(pure_root)
        finally:
            loader.dispose()
        document, root = yamlbound.load_bounded(text, playbook="examples")
        assert document == pure
        assert root is not None and _lines(root) == _lines(pure_root)
    broken = "workflow:\n  - step: a\n    tool: {kind: noop\n"
    with pytest.raises(yaml.YAMLError) as pure_error:
        yaml.safe_load(broken)
    with pytest.raises(yaml.YAMLError) as error:
        yamlbound.load_bounded(broken, playbook="broken")
    assert str(error.value) == str(pure_error.value)


def test_alias_bomb_stays_small_in_bytes_too(fresh_dsn: str, tmp_path: Path) -> None:
    """Fewer, longer strings: the node count passes, the expanded bytes do not."""
    big = "x" * 2000
    text = (f"metadata: {{path: security/bytes}}\na: &a ['{big}']\n"
            + "b: &b [" + ", ".join(["*a"] * 300) + "]\n"
            + "c: [" + ", ".join(["*b"] * 300) + "]\n"
            + "workflow: [{step: s, tool: {kind: noop}}]\n")
    assert len(text) < 6000
    file = tmp_path / "bytes.yaml"
    file.write_text(text)
    result = _register(fresh_dsn, file)
    assert result.returncode == 2 and "bytes of values" in result.stderr, result.stderr
    assert "NOETL_MAX_PLAYBOOK_BYTES" in result.stderr


def test_spec_grows_linearly_with_a_chain(fresh_dsn: str, tmp_path: Path) -> None:
    """The routing plan stores arc targets, not every step each one reaches (which made a
    2,000-step chain a 17 MB spec): doubling the chain doubles the stored spec."""
    sizes = {}
    for steps in (1000, 2000, 4000):
        file = tmp_path / f"chain{steps}.yaml"
        file.write_text(_chain(steps).replace("security/chain", f"security/chain{steps}"))
        result = _register(fresh_dsn, file)
        assert result.returncode == 0, result.stderr
        with psycopg.connect(fresh_dsn) as conn:
            stored, text_bytes = conn.execute(
                "select jsonb_array_length(spec -> 'workflow'), octet_length(spec::text)"
                " from noetl.catalog where path = %s", (f"security/chain{steps}",)).fetchone()
        assert stored == steps
        sizes[steps] = text_bytes
    print(f"spec bytes by chain length: {sizes}")
    assert 1.8 < sizes[2000] / sizes[1000] < 2.2, sizes
    assert 1.8 < sizes[4000] / sizes[2000] < 2.2, sizes
    assert sizes[4000] < 4000 * 400, sizes  # a few hundred bytes a step


def test_four_thousand_step_chain_registers_and_runs(fresh_engine: Engine) -> None:
    path = fresh_engine.register(_chain(4000).replace("security/chain", "security/chain4k"))
    with fresh_engine.worker(slots=2):
        row = fresh_engine.wait(fresh_engine.start(path), timeout=600)
    assert row["status"] == "COMPLETED", row["error"]
    done = fresh_engine.sql(
        "select count(*) as commands, count(distinct step_name) as steps,"
        " bool_and(status = 'done') as all_done from noetl.command"
        " where execution_id = %s", row["execution_id"])[0]
    assert done == {"commands": 4000, "steps": 4000, "all_done": True}


CYCLE = {
    "metadata": {"name": "cycle", "path": "security/cycle"},
    "workflow": [
        {"step": "ping", "tool": {"kind": "noop"}, "next": {"arcs": [{"step": "pong"}]}},
        {"step": "pong", "tool": {"kind": "noop"}, "next": {"arcs": [{"step": "ping"}]}},
    ],
}


def test_runaway_cycle_fails_at_its_command_budget(fresh_engine: Engine) -> None:
    playbook = {**CYCLE, "executor": {"spec": {"policy": {"limits": {"max_commands": 25}}}}}
    with fresh_engine.worker(slots=2):
        row = fresh_engine.run(json.dumps(playbook), timeout=120)
    assert row["status"] == "FAILED"
    assert "security/cycle" in row["error"] and "more than 25 commands" in row["error"]
    assert "max_commands" in row["error"]
    counts = fresh_engine.sql("select count(*) filter (where status <> 'cancelled') as ran,"
                              " count(*) as issued from noetl.command")[0]
    assert counts["ran"] == 25 and counts["issued"] <= 26


def test_budget_default_from_environment_and_bad_field(fresh_engine: Engine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from noetl_pg.errors import PlaybookError

    monkeypatch.setenv("NOETL_MAX_COMMANDS", "9")
    path = fresh_engine.register(json.dumps(CYCLE))
    monkeypatch.delenv("NOETL_MAX_COMMANDS")
    with fresh_engine.worker(slots=2):
        row = fresh_engine.wait(fresh_engine.start(path), timeout=120)
    assert row["status"] == "FAILED" and "more than 9 commands" in row["error"]
    bad = {**CYCLE, "executor": {"spec": {"policy": {"limits": {"max_commands": "lots"}}}}}
    with pytest.raises(PlaybookError, match=r"executor\.spec\.policy\.limits\.max_commands"):
        fresh_engine.register(json.dumps(bad))


def test_payload_limit_is_a_table_a_session_cannot_raise(fresh_dsn: str) -> None:
    from noetl_pg import db
    from noetl_pg.catalog import register_text

    with db.connect(fresh_dsn) as conn:
        register_text(conn, json.dumps({"metadata": {"path": "security/p"},
                                        "workflow": [{"step": "s", "tool": {"kind": "noop"}}]}),
                      source="security/p")
        conn.execute("update noetl.engine_limit set value = 100"
                     " where name = 'max_payload_bytes'")
        # The old GUC no longer raises the limit.
        conn.execute("select set_config('noetl.max_payload_bytes', '100000000', false)")
        with pytest.raises(psycopg.Error, match="over the limit of 100 bytes"):
            conn.execute("select noetl.start_execution('security/p', %s)",
                         (json.dumps({"x": "y" * 200}),))


def test_null_character_in_cli_payload_names_the_field(fresh_dsn: str) -> None:
    result = subprocess.run(
        [*NOETL, "run", "examples/hello_world.yaml", "--payload",
         json.dumps({"name": "ok", "nested": {"bad": "a\u0000b"}})],
        cwd=REPO_ROOT, env={**os.environ, "NOETL_DSN": fresh_dsn, "COLUMNS": "1000"}, text=True,
        capture_output=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "'payload.nested.bad' holds a null character" in result.stderr
    assert "Traceback" not in result.stderr
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("select count(*) from noetl.execution").fetchone() == (0,)


@pytest.mark.parametrize(("code", "expected"), [
    ("result = {'rows': [{'v': 'a\\x00b'}]}",
     "'result.rows[0].v' holds a null character"),
    ("result = {'k': 'x\\udc80'}", "'result.k' holds a lone surrogate"),
    ("raise ValueError('bad \\x00 byte \\udc80')", "bad \\x00 byte \\udc80"),
])
def test_unstorable_results_fail_the_step_naming_the_field(engine: Engine, code: str,
                                                           expected: str) -> None:
    playbook = {"metadata": {"name": "nul", "path": "security/nul"},
                "workflow": [{"step": "emit", "tool": {"kind": "python", "code": code}}]}
    row = engine.run(json.dumps(playbook), timeout=120)
    assert row["status"] == "FAILED", row
    assert expected in row["error"], row["error"]


def test_parallel_cycles_stop_near_their_budget(fresh_engine: Engine) -> None:
    """Two branches cycling at once on four slots: counted without waiting on each other
    (a busy budget row sends the count to execution_budget_pending), still stopped."""
    playbook = {
        "metadata": {"name": "cycles", "path": "security/cycles"},
        "executor": {"spec": {"policy": {"limits": {"max_commands": 60}}}},
        "workflow": [
            {"step": "start", "tool": {"kind": "noop"},
             "next": {"spec": {"mode": "inclusive"}, "arcs": [{"step": "a"}, {"step": "b"}]}},
            {"step": "a", "tool": {"kind": "noop"}, "next": {"arcs": [{"step": "a"}]}},
            {"step": "b", "tool": {"kind": "noop"}, "next": {"arcs": [{"step": "b"}]}},
        ],
    }
    with fresh_engine.worker(slots=4):
        row = fresh_engine.run(json.dumps(playbook), timeout=120)
    assert row["status"] == "FAILED" and "more than 60 commands" in row["error"]
    issued = fresh_engine.sql("select count(*) as n from noetl.command")[0]["n"]
    budget = fresh_engine.sql("select issued from noetl.execution_budget")[0]["issued"]
    pending = fresh_engine.sql("select count(*) as n from noetl.execution_budget_pending")[0]
    assert issued == budget + pending["n"]
    assert 60 < issued <= 70
