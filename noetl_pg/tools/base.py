"""The contract every tool kind implements.

A tool is a class with one `run()`; it receives its already-rendered configuration (the
`tool:` block of a step, templates resolved) and a `ToolContext`, and returns a JSON-able
value or raises `ToolError`. Tools are the only side effects in the engine: they never
touch engine tables and never decide routing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from noetl_pg.errors import ToolError

if TYPE_CHECKING:
    from noetl_pg.stream import ChunkSink


class CredentialResolver(Protocol):
    """Looks up a named credential's decrypted fields (never logged, never stored in events)."""

    def get(self, name: str) -> Mapping[str, Any]: ...


class ResultAccess(Protocol):
    """One command's access to stored results (see noetl_pg.results.CommandResults).

    A ref is a ref dict (`{result_ref, store_tier, ...}`) or its `noetl://` URI. Store errors
    (`noetl_pg.store.StoreError`: missing, corrupt, unavailable) propagate to the caller."""

    def is_ref(self, value: Any) -> bool: ...

    def resolve(self, ref: Any) -> Any: ...

    def local_path(self, ref: Any) -> str: ...


REF_URI = re.compile(r"noetl://execution/\d+/result/[^\s'\"]+")


def localize_refs(text: str, context: ToolContext, kind: str) -> str:
    """`text` (SQL) with every `noetl://execution/...` ref URI replaced by a local file path
    holding its bytes: fs/pvc refs are read in place, others are copied to a temporary file
    removed when the command ends. A ToolError when refs appear and no store is attached."""
    if "noetl://" not in text:
        return text
    results = context.results
    if results is None:
        raise ToolError(f"{kind}: result refs in the script but no result store is attached")
    return REF_URI.sub(lambda match: results.local_path(match.group(0)), text)


@dataclass(frozen=True)
class ToolContext:
    """Where a tool runs: identifiers for logs and child executions, and shared services."""

    execution_id: int
    step: str
    command_id: int
    attempt: int
    dsn: str
    credentials: CredentialResolver | None = None
    # Per-worker shared objects (an HTTP client, connection pools), keyed by tool kind.
    worker_resources: dict[str, Any] = field(default_factory=dict)
    timeout_seconds: float | None = None
    # Stored results of this execution: resolve refs, or get a ref's bytes as a local file.
    results: ResultAccess | None = None
    # Set when the execution is cancelled while the tool runs: a tool that waits (a python
    # executor, say) should stop; its outcome would be refused as stale anyway.
    cancelled: threading.Event | None = None
    # Receives what a tool captured of the step's own output, `{"stdout": str, "stderr":
    # str}` (only the streams written to), once per run that wrote any, plus `stdout_full`
    # / `stderr_full` (the whole stream) for a stream that was cut: for the engine to store
    # as the command's logs (the whole by reference). None: captured output is dropped.
    log_sink: Callable[[Mapping[str, str]], None] | None = None
    # A streamed step's chunks go here (noetl_pg.stream.ChunkSink); None: not streamed.
    stream: ChunkSink | None = None


class Tool(Protocol):
    """One tool kind. `kind` is the value of `tool.kind` in a playbook.

    Besides `kind` and `config_keys`, a class may declare what the rest of the engine
    must know of its kind (the registry, noetl_pg.tools, collects them; leave one out
    for no):
    - `spec_keys`: keys of `tool.spec` it reads (registration accepts them);
    - `sql_text = True`: its `command`/`query` are SQL, rendered with values escaped
      (noetl_pg.sqlrender); `percent_params = True`: its driver reads `%` placeholders
      when `params` are bound;
    - `streams = True`: `output.stream` hands its rows on in chunks (noetl_pg.stream);
    - `script_field`: the key a `script:` is read into at registration (noetl_pg.scripts);
    - `context_key`: the config key the executor passes NoETL's `context` global under;
    - `input_alias`: NoETL's other name for the kind's `input` (registration renames it).
    """

    kind: ClassVar[str]
    # The keys of its `tool:` block this kind reads beyond those of every task (kind, name,
    # input, spec, ...: noetl_pg.dsl_keys.ACCEPTED["task"]); a playbook naming any other key
    # is refused at registration. `spec_keys`, if declared, adds keys of `tool.spec`.
    config_keys: ClassVar[frozenset[str]]

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any: ...


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool, as the executor asks for it: the rendered config and the
    context it runs in (noetl_pg.tool_calls runs it, alone or with others)."""

    tool: Tool
    config: dict[str, Any]
    context: ToolContext


class ToolBatch(Protocol):
    """Calls of one tool started together (BatchingTool.start_batch)."""

    def result(self, index: int) -> Any:
        """Call `index`'s result, or its ToolError raised; asked in order, each once."""
        ...

    def close(self) -> None:
        """Release what the batch holds; calls whose result was not asked are dropped."""
        ...


@runtime_checkable
class BatchingTool(Tool, Protocol):
    """A tool whose calls are cheaper started together: the python kind sends a batch's
    requests to one executor ahead of their replies. Its `run` is a batch of one."""

    def batch_key(self, config: Mapping[str, Any], context: ToolContext) -> Hashable | None:
        """Calls with equal keys may share a batch; None: this call runs alone."""
        ...

    def start_batch(
        self, calls: Sequence[tuple[Mapping[str, Any], ToolContext]]
    ) -> ToolBatch: ...
