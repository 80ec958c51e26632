"""Every function in sql/functions/ has a direct pgTAP test (issue 13 item 4).

"Direct" means a file of tests/sql/ calls it by name (`noetl.<name>(`); a trigger function
is named with its call parentheses too (`'noetl.count_command()'::regprocedure`). The
check fails for any function without one: a new function comes with its pgTAP test.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = re.compile(r"create\s+or\s+replace\s+function\s+noetl\.([a-z_0-9]+)\s*\(",
                        re.IGNORECASE)


def _functions() -> set[str]:
    return {name for path in (ROOT / "sql" / "functions").glob("*.sql")
            for name in DEFINITION.findall(path.read_text())}


def _tested() -> set[str]:
    text = "\n".join(path.read_text() for path in (ROOT / "tests" / "sql").glob("*.sql"))
    return {name for name in _functions() if f"noetl.{name}(" in text}


def test_the_check_sees_the_functions() -> None:
    # A pattern that matched nothing would make the check below pass vacuously.
    assert {"complete_command", "finish_and_claim", "count_command"} <= _functions()


def test_every_sql_function_has_a_direct_pgtap_test() -> None:
    missing = _functions() - _tested()
    assert not missing, f"functions without a pgTAP test in tests/sql/: {sorted(missing)}"
