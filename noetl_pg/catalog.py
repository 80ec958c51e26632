"""Registering playbooks: parse and validate in Python, store through noetl.register_playbook."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from noetl_pg import db
from noetl_pg.authguard import check_inline_secrets
from noetl_pg.budget import apply_command_budget
from noetl_pg.dsl import load_playbook
from noetl_pg.errors import PlaybookError
from noetl_pg.scripts import inline_scripts
from noetl_pg.tools.unavailable import SERVICE_KINDS, unavailable_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registered:
    path: str
    version: int
    catalog_id: int
    # False when the latest version already held this content and spec (nothing stored).
    created: bool = True
    # Registration warnings: steps of NoETL kinds that need a service we do not have.
    warnings: tuple[str, ...] = field(default=())


def register_text(
    conn: psycopg.Connection[Any], text: str, *, source: str, default_path: str | None = None,
    base_dir: Path | None = None, reuse_unchanged: bool = False,
) -> Registered:
    """Validate playbook YAML and store it as a new version; nothing is stored on error.

    With `reuse_unchanged`, unchanged text (the latest version has the same content and
    spec) is not stored again: its version is returned with `created` False, so
    `noetl run FILE` does not add a version per run (registration adds one each time).
    A new parser producing a different spec still stores a new version.
    `script` files of its tasks are read relative to `base_dir` (noetl_pg.scripts)."""
    playbook = load_playbook(text, source=source)
    path = playbook.path or default_path
    if not path:
        raise PlaybookError("metadata.path (or metadata.name) is required", playbook=source,
                            field="metadata.path")
    spec = playbook.to_spec()
    inline_scripts(spec, base_dir, path)
    check_inline_secrets(spec, text, playbook=path)
    apply_command_budget(spec, playbook=path)
    same = (db.fetch_one(conn, "catalog_latest_same", path=path, content=text, spec=spec)
            if reuse_unchanged else None)
    if same is not None:
        return Registered(path=path, version=same["version"], catalog_id=same["catalog_id"],
                          created=False)
    row = db.fetch_one(conn, "register_playbook", path=path, content=text, spec=spec)
    assert row is not None
    warnings = service_kind_warnings(spec, path)
    for warning in warnings:
        log.warning("%s", warning)
    return Registered(path=path, version=row["version"], catalog_id=row["catalog_id"],
                      warnings=warnings)


def service_kind_warnings(spec: dict[str, Any], path: str) -> tuple[str, ...]:
    """One warning per step (or workbook task) of a kind that needs a missing service."""
    found: list[str] = []
    places = [(f"step '{step.get('step')}'", step.get("tool")) for step in spec["workflow"]]
    places += [(f"workbook task '{task.get('name')}'", task.get("tool"))
               for task in spec.get("workbook") or []]
    for where, tool in places:
        for task in tool if isinstance(tool, list) else [tool] if tool else []:
            kind = task.get("kind") if isinstance(task, dict) else None
            if kind in SERVICE_KINDS:
                found.append(f"playbook '{path}', {where}: warning: "
                             f"{unavailable_message(kind)}")
    return tuple(found)


def register_file(conn: psycopg.Connection[Any], file: Path, *,
                  reuse_unchanged: bool = False) -> Registered:
    """Register a playbook file; its path defaults to the file path without `.yaml`."""
    try:
        text = file.read_text()
    except OSError as exc:
        raise PlaybookError(f"cannot read playbook file: {exc.strerror}",
                            playbook=str(file)) from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise PlaybookError("the file is not UTF-8 text", playbook=str(file),
                            line=line) from None
    default_path = str(file.with_suffix("")) if not file.is_absolute() else file.stem
    return register_text(conn, text, source=str(file), default_path=default_path,
                         base_dir=file.parent, reuse_unchanged=reuse_unchanged)
