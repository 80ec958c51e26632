"""The template namespace of one claimed command, with the stored results it reads loaded.

templating.build_context makes the execution's names (workload, ctx, step results) from
the claim's context; this module adds what belongs to the command: NoETL's `job`, every
step of the playbook (none until it ran), the `keychain`, a loop iteration's item and
position, and a streamed chunk.

Rendering is pure (noetl_pg.templating): the refs a command's templates read are loaded
here, before anything renders, by `StoredReads`, from what the templates of the command's
kind read (dsl.Playbook.command_uses, noetl_pg.template_reads):
- a step result held by the store is loaded when a template names the step (never for
  `<step>_ref` alone: that is the ref);
- in an inline result (a loop's `{results, stats}`), refs inside a list the templates read
  are loaded: `big.results[3]` loads element 3; `big.results | length`, a truth test and
  the list as a whole value (`"{{ big.results }}"`, `| tojson`) load nothing (they are the
  refs, as stored); any other use (iterating it, a filter, a variable index) loads every element;
- a chunk's rows held by ref are loaded when a template names `chunk`.
A step's arcs are read only when they are evaluated (a route command, a fused route, a
chunk's `call.partial` arcs), never by a loop's iterations. Each ref is read at most once
per command (CommandResults); a ref that cannot be read fails the command, naming the step.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from noetl_pg.dsl import Playbook, Step
from noetl_pg.keychain import Keychain, SecretRedactor
from noetl_pg.results import CommandResults
from noetl_pg.stream import chunk_view
from noetl_pg.template_reads import Use, Uses
from noetl_pg.templating import RefDict, ResultView, build_context, result_view
from noetl_pg.tools.base import CredentialResolver

# What a template that could not be analysed may read: everything.
_EVERYTHING = frozenset({Use((), "read")})
_NOTHING: frozenset[Use] = frozenset()


class StoredReads:
    """The refs of one command's claim context, loaded into a namespace when read.

    Not thread-safe (one command runs on one slot thread). Store errors propagate
    (`ResultMissing`, `ResultCorrupt`, `StoreUnavailable`: NoetlErrors).
    """

    __slots__ = ("_results", "_step_results")

    def __init__(self, context: Mapping[str, Any], results: CommandResults | None) -> None:
        self._step_results: Mapping[str, Any] = context.get("results") or {}
        self._results = results

    def load(self, namespace: dict[str, Any], uses: Uses, *, own: str | None = None,
             skip: Collection[str] = ()) -> None:
        """Replace in `namespace` the step results `uses` read by their loaded values.
        `own`: the step whose arcs these are (its `result`, `output` and `fanin` are
        read as the step); `skip`: steps whose namespace value is not the claim's."""
        results = self._results
        if results is None or uses == {}:
            return  # nothing to load: an iteration that reads no result pays nothing
        for step_name, result in self._step_results.items():
            if step_name in skip:
                continue
            step_uses = _step_uses(uses, step_name, own)
            view = namespace.get(step_name)
            if results.is_ref(result):
                if step_uses:
                    namespace[step_name] = result_view(results.resolve(result))
                continue
            ref_name = f"{step_name}_ref"
            aliased = view is not None and namespace.get(ref_name) is view
            if aliased and uses is not None:
                step_uses = step_uses | uses.get(ref_name, _NOTHING)
            if step_uses and isinstance(result, dict):
                loaded = _lists_loaded(result, step_uses, results)
                if loaded is not None:
                    namespace[step_name] = loaded
                    if aliased:
                        namespace[ref_name] = loaded

    def load_chunk(self, chunk: dict[str, Any], uses: Uses) -> None:
        """A chunk's rows held by ref, loaded when `uses` name `chunk`."""
        rows = chunk.get("rows")
        results = self._results
        if (results is not None and results.is_ref(rows)
                and (uses is None or "chunk" in uses)):
            chunk["rows"] = result_view(results.resolve(rows))


def _step_uses(uses: Uses, step_name: str, own: str | None) -> frozenset[Use]:
    if uses is None:
        return _EVERYTHING
    found = uses.get(step_name, _NOTHING)
    if step_name != own:
        return found
    # The route scope's names of the step's own result (router.route_scope).
    aliases = set(uses.get("result", _NOTHING))
    aliases.update(Use(("fanin", *use.path), use.mode) for use in uses.get("fanin", ()))
    for use in uses.get("output", ()):
        if not use.path:
            aliases.add(Use((), use.mode))
        elif use.path[0] == "data":
            aliases.add(Use(use.path[1:], use.mode))
    return found | aliases


def _lists_loaded(result: dict[str, Any], uses: frozenset[Use],
                  results: CommandResults) -> ResultView | None:
    """`result` as a view with the refs in its lists that `uses` read loaded, or None when
    they read none (see the module docstring for which)."""
    wanted: dict[str, set[int] | None] = {}  # key -> indices read, None: every element
    for use in uses:
        path = use.path
        if path[:1] == ("data",) and "data" not in result:
            path = path[1:]  # a result view omits `.data` when the result has none
        if not path:
            if use.mode == "read":
                wanted = dict.fromkeys(result)
                break
            continue
        key, rest = path[0], path[1:]
        if not isinstance(key, str) or key not in result:
            continue
        if rest and isinstance(rest[0], int):
            indices = wanted.setdefault(key, set())
            if indices is not None:
                indices.add(rest[0])
        elif rest or use.mode == "read":
            wanted[key] = None
    view: ResultView | None = None
    for key, indices in wanted.items():
        items = result[key]
        if not isinstance(items, list) or not any(results.is_ref(item) for item in items):
            continue
        loaded = list(items)
        positions = range(len(items)) if indices is None else {
            index % len(items) for index in indices if -len(items) <= index < len(items)}
        for position in positions:
            if results.is_ref(loaded[position]):
                loaded[position] = result_view(results.resolve(loaded[position]))
        if view is None:
            view = ResultView(result)
        view[key] = loaded
    return view


def command_namespace(
    command: Mapping[str, Any], context: Mapping[str, Any], step: Step, playbook: Playbook,
    stored: StoredReads, uses: Uses, *, credentials: CredentialResolver | None,
    redactor: SecretRedactor | None, with_refs: bool,
) -> dict[str, Any]:
    """The names `command`'s templates see, with the stored results `uses` read loaded
    (`stored`). `with_refs` (a worker with a result store): `<step>_ref` is each step's
    ref (a RefDict; the result itself when it is inline) unless a workload key, ctx key
    or step already has that name. `credentials` (narrowed to the command) is what the
    playbook's keychain reads; `redactor` learns the keychain values read."""
    namespace = build_context(context)
    if with_refs:
        for step_name, result in (context.get("results") or {}).items():
            ref_name = f"{step_name}_ref"
            if ref_name not in namespace:
                namespace[ref_name] = (RefDict(result) if CommandResults.is_ref(result)
                                       else namespace[step_name])
    stored.load(namespace, uses)
    execution_id = namespace.get("execution_id")
    # NoETL's job namespace: the execution is the job (job.uuid, job.id are its id).
    namespace.setdefault("job", {
        "execution_id": execution_id, "uuid": str(execution_id), "id": str(execution_id),
        "path": playbook.path,
    })
    for other in playbook.step_names_read[step.step]:
        # A step that has not run (yet, or on this branch) is none, so
        # `{{ a.x if a else b.x }}` works; a name that is no step stays undefined.
        namespace.setdefault(other, None)
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
    chunk = chunk_view(command.get("input"))
    if chunk is not None:
        stored.load_chunk(chunk, uses)
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
