"""Where the SQL files are: inside the installed package, or in the checkout.

A wheel carries `sql/` as the resource directory `noetl_pg/_sql/` (copied there by
`setup.py` at build time; the checkout's `sql/` stays where developers edit it). An
editable install or a plain checkout has no `_sql/`, so the checkout's `sql/` is used.
Files are read through `importlib.resources`, so a zipped install works too.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

PACKAGED_DIR = "_sql"
CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "sql"
FOLDERS = ("migrations", "functions", "queries")


@cache
def sql_root() -> Traversable:
    """The directory holding `migrations/`, `functions/` and `queries/`."""
    packaged = resources.files("noetl_pg") / PACKAGED_DIR
    if packaged.is_dir():
        return packaged
    return CHECKOUT_DIR


def sql_files(folder: str) -> list[Traversable]:
    """The `*.sql` files of `folder` (one of FOLDERS), in name order; [] when it is missing."""
    directory = sql_root() / folder
    if not directory.is_dir():
        return []
    files = [entry for entry in directory.iterdir()
             if entry.is_file() and entry.name.endswith(".sql")]
    return sorted(files, key=lambda entry: entry.name)


def stem(entry: Traversable) -> str:
    """`0001_core.sql` -> `0001_core` (the migration version)."""
    return entry.name.removesuffix(".sql")
