"""Hypothesis fuzzing of the input paths (run by test_fuzz.py in a memory-capped process).

Targets: the bounded YAML loader (dsl.load_playbook), the SQL template renderer
(sqlrender.render_sql) and the payload path (jsoncheck + noetl.start_execution). Each
generated case must end in a value or in one of the engine's own errors: any other
exception is a finding (hypothesis shrinks it and this process exits 1 with it).
`NOETL_FUZZ_EXAMPLES` sets the cases per target (default 1000).

Usage: python tests/py/fuzz_driver.py DSN
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from noetl_pg import db
from noetl_pg.catalog import register_text
from noetl_pg.dsl import load_playbook
from noetl_pg.errors import NoetlError, PlaybookError, TemplateError
from noetl_pg.jsoncheck import storage_problem
from noetl_pg.sqlrender import render_sql
from noetl_pg.tools.postgres import split_sql

EXAMPLES = int(os.environ.get("NOETL_FUZZ_EXAMPLES", "1000"))
PROFILE = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                   suppress_health_check=list(HealthCheck))

# --- YAML ------------------------------------------------------------------------------

SCALARS = st.sampled_from(["a", "1", "true", "null", "'q''t'", '"x\\ty"', "{{ v }}", "~",
                           "*a", "*b", "&a x", "&b [1, 2]", "!!str 5", "[", "]", "{", "}",
                           "- ", ": ", "\x00", "\ud800", "|\n  text", ">-\n  folded", "#c"])
KEYS = st.sampled_from(["workflow", "step", "tool", "kind", "next", "arcs", "loop", "in",
                        "metadata", "path", "workload", "<<", "? x", "executor", "set"])


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """YAML-shaped text: nested maps and lists of tricky scalars, anchors and aliases."""
    depth = draw(st.integers(min_value=0, max_value=90))
    lines = ["metadata: {path: fuzz/p}", "workflow:"]
    kinds = st.sampled_from(["noop", "python", "x"])
    lines += [f"  - step: s{i}\n    tool: {{kind: {draw(kinds)}}}"
              for i in range(draw(st.integers(min_value=0, max_value=3)))]
    body = draw(st.lists(st.tuples(KEYS, SCALARS), max_size=12))
    lines += [f"{key}: {value}" for key, value in body]
    lines.append("deep: " + "[" * depth + "]" * draw(st.integers(0, depth)))
    text = "\n".join(lines)
    if draw(st.booleans()):
        text = draw(st.text(max_size=200)) + text
    return text


@PROFILE
@given(yaml_texts())
def fuzz_yaml(text: str) -> None:
    try:
        load_playbook(text, source="fuzz")
    except PlaybookError as exc:
        assert str(exc).startswith("playbook 'fuzz'"), str(exc)


# --- SQL renderer ----------------------------------------------------------------------

POSITIONS = ["select '{{ v }}'", "select E'{{ v }}'", 'select "{{ v }}"', "select {{ v }}",
             "select 1 -- {{ v }}\n; select 2", "select /* {{ v }} */ 1",
             "select $$ {{ v }} $$", "select {{ v | sql_literal }}",
             "select {{ v | sql_identifier }}", "select 1 -{{ v }}", "select ${{ v }}"]
VALUES = st.one_of(
    st.text(), st.integers(), st.floats(), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=5), st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.sampled_from(["'", "\\", "$$", "*/", "--", ";", "\x00", "\u2019", "E'", "%s"]),
)


@PROFILE
@given(st.sampled_from(POSITIONS), VALUES, st.sampled_from(["", "; select 3"]))
def fuzz_sql(position: str, value: Any, tail: str) -> None:
    template = position + tail
    try:
        rendered = render_sql(template, {"v": value}, step="fuzz")
    except TemplateError:
        return
    # The value never adds, removes or merges statements.
    reference = render_sql(template, {"v": 1 if "{{ v }}" in position.split("'")[0] else "x"})
    assert len(split_sql(rendered)) == len(split_sql(reference)), (template, value, rendered)


# --- payload path ----------------------------------------------------------------------

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**62, max_value=2**62),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=30,
)


def fuzz_payloads(dsn: str) -> None:
    with db.connect(dsn) as conn:
        register_text(conn, json.dumps({"metadata": {"path": "fuzz/payload"},
                                        "workflow": [{"step": "s", "tool": {"kind": "noop"}}]}),
                      source="fuzz/payload")

        @PROFILE
        @given(st.dictionaries(st.text(max_size=8), JSON, max_size=5))
        def start(payload: dict[str, Any]) -> None:
            problem = storage_problem(payload, "payload")
            if problem:
                assert "\n" not in problem
                return
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute("select noetl.start_execution('fuzz/payload', %s)",
                                 (Jsonb(payload),))
            except psycopg.errors.ProgramLimitExceeded:
                pass  # over max_payload_bytes: the one-line refusal

        start()


def main(argv: list[str]) -> int:
    fuzz_yaml()
    fuzz_sql()
    fuzz_payloads(argv[0])
    print(f"fuzzed {EXAMPLES} cases per target (yaml, sql, payload)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except NoetlError as exc:  # an engine error escaping a target is a finding too
        print(f"finding: {exc}", file=sys.stderr)
        sys.exit(1)
