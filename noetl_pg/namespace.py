"""The template namespace of one claimed command, and the `context` a python task gets.

templating.build_context makes the execution's names (workload, ctx, step results) from
the claim's context; this module adds what belongs to the command: NoETL's `job`, every
step of the playbook (none until it ran), the `keychain`, a loop iteration's item and
position, and a streamed chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noetl_pg.dsl import Playbook, Step
from noetl_pg.keychain import Keychain, SecretRedactor
from noetl_pg.results import CommandResults
from noetl_pg.stream import chunk_view
from noetl_pg.templating import build_context
from noetl_pg.tools.base import CredentialResolver


def command_namespace(
    command: Mapping[str, Any], context: Mapping[str, Any], step: Step, playbook: Playbook,
    results: CommandResults | None, *, credentials: CredentialResolver | None,
    redactor: SecretRedactor | None,
) -> dict[str, Any]:
    """The names `command`'s templates see. `credentials` (narrowed to the command) is
    what the playbook's keychain reads; `redactor` learns the keychain values read.
    Stored step results stay refs until a template reads them (templating.build_context)."""
    namespace = build_context(context, results)
    execution_id = namespace.get("execution_id")
    # NoETL's job namespace: the execution is the job (job.uuid, job.id are its id).
    namespace.setdefault("job", {
        "execution_id": execution_id, "uuid": str(execution_id), "id": str(execution_id),
        "path": playbook.path,
    })
    for other in playbook.workflow:
        # A step that has not run (yet, or on this branch) is none, so
        # `{{ a.x if a else b.x }}` works; a name that is no step stays undefined.
        namespace.setdefault(other.step, None)
    keychain = playbook.keychain
    if keychain:
        namespace["keychain"] = Keychain(keychain, credentials, dict(namespace), redactor)
    if command.get("loop_id") is not None and step.loop is not None:
        index = command["iter_index"]
        # A cursor loop's length is known only when its cursor has drained.
        total = None if step.loop.cursor is not None else (
            (command.get("input") or {}).get("loop_total", 0))
        last = total is not None and index == total - 1
        item = command.get("item")
        namespace[step.loop.iterator] = item
        namespace["iter"] = {
            step.loop.iterator: item,
            "_index": index,
            "_first": index == 0,
            "_last": last,
        }
        namespace["loop"] = {"index": index, "first": index == 0, "length": total,
                             "last": last}
        namespace["loop_index"] = index
    chunk = chunk_view(command.get("input"), results)
    if chunk is not None:
        namespace["chunk"] = chunk
    return namespace


def python_context(scope: Mapping[str, Any]) -> dict[str, Any]:
    """NoETL's `context` global of a python task: the execution's identity, workload and
    ctx, and the iteration of a loop (plain JSON; step results stay templates' business)."""
    context = {key: _plain(scope.get(key)) for key in ("execution_id", "job", "workload", "ctx")}
    for key in ("iter", "loop"):
        if scope.get(key) is not None:
            context[key] = _plain(scope[key])
    return context


# JSON scalars, returned as they are: checked by exact type before the isinstance chain
# (Mapping is an ABC, slow to test), as python_context runs for every python command.
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return value
    if kind is dict or isinstance(value, Mapping):
        # Scalar members without a call each: most of the context is scalars.
        return {str(key): item if type(item) in _SCALAR_TYPES else _plain(item)
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bool | int | float | str):  # a subclass (an IntEnum, say)
        return value
    return str(value)
