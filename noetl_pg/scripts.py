"""`script: {uri, source: {type: file|inline}}` of python, postgres and duckdb tools (the
kinds that declare a `script_field`), read at registration: the text becomes the task's
`code` (python) or `command` (postgres, duckdb) in the stored spec, so workers need no
shared disk and a later change of the file does not change a registered version.

- `source.type: file`: `uri` is a path relative to the playbook file's directory (or
  absolute; `file://` accepted); it must stay inside that directory when relative.
- `source.type: inline`: the text is `script.code` (alias `content`).
NoETL's `gcs`, `s3` and `http` sources need a service or the network and are refused.
A task with both `script` and `code`/`command` is refused (which one would run?).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from noetl_pg.errors import PlaybookError
from noetl_pg.tools import SCRIPT_FIELDS

SCRIPT_KEYS = frozenset({"uri", "source", "code", "content", "encoding"})


def inline_scripts(spec: dict[str, Any], base_dir: Path | None, playbook: str) -> None:
    """Replace every task's `script` in `spec` (the canonical spec, changed in place)."""
    for step in spec.get("workflow") or []:
        _tasks(step.get("tool"), base_dir, playbook, f"step '{step.get('step')}'",
               step.get("step"))
    for task in spec.get("workbook") or []:
        _tasks(task.get("tool"), base_dir, playbook, None, None)


def _tasks(tool: Any, base_dir: Path | None, playbook: str, where: str | None,
           step: str | None) -> None:
    tasks = tool if isinstance(tool, list) else [tool] if isinstance(tool, dict) else []
    for index, task in enumerate(tasks):
        if not isinstance(task, dict) or "script" not in task:
            continue
        field = f"tool[{index}].script" if isinstance(tool, list) else "tool.script"
        kind = task.get("kind")
        target = SCRIPT_FIELDS.get(str(kind))
        if target is None:
            raise PlaybookError(f"`script` is not supported by kind '{kind}'",
                                playbook=playbook, step=step, field=field)
        if task.get(target) or (target == "command" and task.get("query")):
            raise PlaybookError(f"`script` and `{target}` are both set: keep one",
                                playbook=playbook, step=step, field=field)
        task[target] = _read(task.pop("script"), base_dir, playbook, step, field)


def _read(script: Any, base_dir: Path | None, playbook: str, step: str | None,
          field: str) -> str:
    def fail(message: str, sub: str = "") -> PlaybookError:
        return PlaybookError(message, playbook=playbook, step=step, field=field + sub)

    if not isinstance(script, dict):
        raise fail("must be a mapping {uri, source: {type: file|inline}}")
    unknown = sorted(set(script) - SCRIPT_KEYS)
    if unknown:
        raise fail(f"unknown key '{unknown[0]}' (known: {', '.join(sorted(SCRIPT_KEYS))})")
    source = script.get("source") or {}
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "inline":
        text = script.get("code", script.get("content"))
        if not isinstance(text, str) or not text.strip():
            raise fail("an inline script needs `code` with the script text", ".code")
        return text
    if kind in ("gcs", "s3", "http"):
        raise fail(f"script source '{kind}' needs a service or network access noetl-pg does "
                   "not have: use source.type file (read at registration) or inline",
                   ".source.type")
    if kind != "file":
        raise fail(f"source.type must be file or inline, got {kind!r}", ".source.type")
    uri = script.get("uri")
    if not isinstance(uri, str) or not uri:
        raise fail("a file script needs `uri` (a path relative to the playbook)", ".uri")
    path = Path(uri.removeprefix("file://"))
    if not path.is_absolute():
        if base_dir is None:
            raise fail("a relative script uri needs the playbook registered from a file",
                       ".uri")
        base = base_dir.resolve()
        path = (base / path).resolve()
        if base not in path.parents:
            raise fail(f"script uri {uri!r} leaves the playbook's directory", ".uri")
    try:
        return path.read_text(encoding=str(script.get("encoding") or "utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read script {uri!r}: {getattr(exc, 'strerror', None) or exc}",
                   ".uri") from None
