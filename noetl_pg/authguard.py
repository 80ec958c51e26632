"""Who may say where a tool connects: the playbook, or a registered credential.

Two rules (docs/security.md):

- At registration (`check_inline_secrets`): a step's `auth:` (or the workload entry a bare
  `auth: "{{ name }}"` names) may not hold a password, token or other secret field with a
  literal value, nor a DSN with a password in it. Catalog rows are readable by operators
  and readers; secrets belong in the credential store (`noetl credential add`), and `auth:`
  names them.
- At run time (`check_rendered_auth`): a templated `auth` must render to a credential
  reference (a name, or `{credential: NAME}` / NoETL's `{type: ..., credential: NAME}`).
  Connection fields (a DSN, a host) are accepted only when they are what the playbook's own
  workload renders: a payload, a ctx write or a step result may name a credential, never
  point a tool at a server of its choosing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from noetl_pg.credentials import is_secret_field
from noetl_pg.errors import PlaybookError, TemplateError
from noetl_pg.templating import is_template, render_value

CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/@-]*")
REFERENCE_KEYS = frozenset({"credential", "key", "type"})
BARE_NAME = re.compile(r"^\s*\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}\s*$")
DSN_FIELDS = ("dsn", "connection_string", "url")
# postgresql://user:password@host, or a conninfo with password=...
DSN_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@|(^|\s)password\s*=", re.IGNORECASE)


def is_credential_reference(value: Any) -> bool:
    """True when `value` only names a credential: no connection field of its own."""
    if isinstance(value, str):
        return bool(CREDENTIAL_NAME.fullmatch(value)) and "://" not in value
    if isinstance(value, Mapping):
        name = value.get("credential") or value.get("key")
        return (isinstance(name, str) and bool(CREDENTIAL_NAME.fullmatch(name))
                and set(value) <= REFERENCE_KEYS)
    return False


def _holds_template(value: Any) -> bool:
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, Mapping):
        return any(_holds_template(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_template(item) for item in value)
    return False


def check_rendered_auth(
    raw: Any, rendered: Any, playbook_workload: Mapping[str, Any] | None
) -> None:
    """Refuse a templated `auth` whose connection fields do not come from the playbook."""
    if not _holds_template(raw) or is_credential_reference(rendered):
        return
    workload = dict(playbook_workload or {})
    try:
        expected = render_value(raw, {**workload, "workload": workload, "ctx": workload})
    except TemplateError:
        expected = None
    if expected != rendered:
        raise TemplateError(
            f"auth {raw!r} renders connection fields that are not the playbook's own: a "
            "payload, ctx or step result may only name a registered credential"
        )


# --- registration ---------------------------------------------------------------------


def _literal_secrets(auth: Any, prefix: str) -> Iterator[str]:
    """Field paths under `auth` holding a secret written literally."""
    if not isinstance(auth, Mapping):
        return
    for key, value in auth.items():
        field = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            yield from _literal_secrets(value, field)
        elif (isinstance(value, str) and value and not is_template(value)
              and (is_secret_field(str(key))
                   or (str(key).lower() in DSN_FIELDS and DSN_PASSWORD.search(value)))):
            yield field


def _tool_auths(step: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    tools = step.get("tool")
    if isinstance(tools, Mapping):
        tools = [tools]
    listed: list[Any] = tools if isinstance(tools, list) else []
    for index, tool in enumerate(listed):
        if isinstance(tool, Mapping) and "auth" in tool:
            yield ("tool.auth" if len(listed) == 1 else f"tool[{index}].auth"), tool["auth"]
    cursor = (step.get("loop") or {}).get("cursor")
    if isinstance(cursor, Mapping) and "auth" in cursor:
        yield "loop.cursor.auth", cursor["auth"]


def check_inline_secrets(spec: Mapping[str, Any], text: str, *, playbook: str) -> None:
    """Refuse a playbook whose `auth:` holds a literal secret (see the module docstring)."""
    workload = spec.get("workload") or {}
    entries: list[tuple[str | None, Mapping[str, Any]]] = [
        (step.get("step"), step) for step in spec.get("workflow") or []]
    entries += [(f"workbook:{e.get('name')}", {"tool": e.get("tool") or e})
                for e in spec.get("workbook") or [] if isinstance(e, Mapping)]
    for step_name, step in entries:
        for field, auth in _tool_auths(step):
            found = list(_literal_secrets(auth, field))
            bare = BARE_NAME.match(auth) if isinstance(auth, str) else None
            if bare and isinstance(workload.get(bare.group(1)), Mapping):
                found += _literal_secrets(workload[bare.group(1)], f"workload.{bare.group(1)}")
            if found:
                raise PlaybookError(
                    "a password or other secret is written inline in auth; store it with "
                    "`noetl credential add NAME` and write `auth: NAME`",
                    playbook=playbook, step=step_name, field=found[0],
                    line=_line_of(text, found[0].rsplit(".", 1)[-1]),
                )


def _line_of(text: str, key: str) -> int | None:
    """The first line where `key:` appears (an approximation good enough to find it)."""
    pattern = re.compile(rf"(^|[\s{{,]){re.escape(key)}\s*:")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.search(line):
            return number
    return None
