"""Every function in sql/functions/ has a direct pgTAP test (issue 13 item 4).

"Direct" means a file of tests/sql/ calls it by name (`noetl.<name>(`). Functions that
had none when this check was written are listed in UNTESTED; the check fails for any
other function without a test, and for a listed one that has gained a test (take it off
the list), so the list only shrinks.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = re.compile(r"create\s+or\s+replace\s+function\s+noetl\.([a-z_0-9]+)\s*\(",
                        re.IGNORECASE)

UNTESTED = frozenset({
    "record_reap",
})


def _functions() -> set[str]:
    return {name for path in (ROOT / "sql" / "functions").glob("*.sql")
            for name in DEFINITION.findall(path.read_text())}


def _tested() -> set[str]:
    text = "\n".join(path.read_text() for path in (ROOT / "tests" / "sql").glob("*.sql"))
    return {name for name in _functions() if f"noetl.{name}(" in text}


def test_every_sql_function_has_a_direct_pgtap_test() -> None:
    missing = _functions() - _tested() - UNTESTED
    assert not missing, f"functions without a pgTAP test in tests/sql/: {sorted(missing)}"


def test_the_list_of_untested_functions_only_shrinks() -> None:
    assert _functions() >= UNTESTED, f"no longer defined: {sorted(UNTESTED - _functions())}"
    gained = UNTESTED & _tested()
    assert not gained, f"these now have a pgTAP test, take them off UNTESTED: {sorted(gained)}"
