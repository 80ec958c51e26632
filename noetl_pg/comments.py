"""COMMENT ON every function, table and view, taken from the comment block above its CREATE.

The header comment of a function (its contract, locks and failure modes) is what a DBA
should see in `\\df+`; keeping the text in one place (the SQL file) means the description
cannot drift from the code. The migrator calls `apply_comments` after loading functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from noetl_pg import db
from noetl_pg.sqlfiles import sql_files

_CREATE = re.compile(
    r"^create\s+(?:or\s+replace\s+)?(?P<kind>function|table|view)\s+(?:if\s+not\s+exists\s+)?"
    r"noetl\.\"?(?P<name>\w+)\"?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Described:
    kind: str  # function, table or view
    name: str
    text: str


def header_comments(text: str) -> list[Described]:
    """Every `create ... noetl.<name>` line preceded by a block of `--` lines, with that block."""
    lines = text.splitlines()
    found: list[Described] = []
    for number, line in enumerate(lines):
        match = _CREATE.match(line.strip())
        if match is None:
            continue
        block: list[str] = []
        above = number - 1
        while above >= 0 and lines[above].startswith("--"):
            block.insert(0, lines[above][2:].removeprefix(" "))
            above -= 1
        if block:
            found.append(Described(match["kind"].lower(), match["name"], "\n".join(block)))
    return found


def described_objects() -> list[Described]:
    """Header comments of the migrations then the function files (a later one wins)."""
    objects: list[Described] = []
    for folder in ("migrations", "functions"):
        for path in sql_files(folder):
            objects.extend(header_comments(path.read_text()))
    return objects


def apply_comments(conn: psycopg.Connection[Any], objects: Iterable[Described]) -> int:
    """COMMENT ON each described object that exists (every overload of a function)."""
    applied = 0
    for item in objects:
        if item.kind == "function":
            applied += db.execute_built(conn, "comment_on_function_statements",
                                        name=item.name, comment=item.text)
        else:
            applied += db.execute_built(conn, "comment_on_relation_statements",
                                        name=item.name, kind=item.kind, comment=item.text)
    return applied
