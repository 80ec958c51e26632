"""Fuzzing (hypothesis) of the YAML loader, the SQL renderer and the payload path, in a
separate process under a memory cap: every generated case ends in a value or a one-line
engine error, never another exception. `make test` runs 500 cases per target (1,500 in
all); NOETL_FUZZ_EXAMPLES sets another number (`make fuzz` runs 5,000 per target)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
from engine_harness import REPO_ROOT

MEMORY_CAP_BYTES = 2 * 1024 * 1024 * 1024
DRIVER = REPO_ROOT / "tests" / "py" / "fuzz_driver.py"


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


@pytest.mark.timeout(3600)  # `make fuzz` runs far more cases than make test's 500
def test_fuzz_inputs_under_a_memory_cap(fresh_dsn: str) -> None:
    examples = os.environ.get("NOETL_FUZZ_EXAMPLES", "500")
    result = subprocess.run([sys.executable, str(DRIVER), fresh_dsn], cwd=REPO_ROOT,
                            env={**os.environ, "NOETL_FUZZ_EXAMPLES": examples},
                            capture_output=True, text=True, timeout=3500,
                            preexec_fn=_cap_memory)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"fuzzed {examples} cases per target" in result.stdout
