"""Streamed steps: a postgres or duckdb result read in chunks, one `call.partial` per chunk.

A step whose tool says `output: {stream: {chunk_rows: N}}` reads its last statement's rows
through a cursor (a psycopg named cursor, DuckDB's fetchmany) N at a time. For each chunk
the worker records, while the command is still claimed, one `call.partial` event
(`meta.chunk_index`; the rows inline, or by result store ref over the inline limit) and
one command per step its `on: call.partial` arcs choose; that command sees the chunk as
`chunk.rows`, `chunk.index`, `chunk.has_more` (also `chunk.row_count`, `chunk.columns`).
`call.done` (the step's result `{columns, row_count, chunks, streamed}`, no rows) is the
one terminal event: only it routes the step's other arcs. The worker holds at most one
chunk and one row more (`pump`), so its memory does not grow with the result.

The database decides what is recorded (sql/functions/stream.sql, noetl.record_partial): a
chunk is unique per (command, attempt, chunk_index), and a chunk command is issued once per
(target, command, chunk_index). A stream started again after its worker died (same
attempt) skips the chunks already recorded (`stream_chunks`); one retried after a tool
error records its chunks again as events of the new attempt but issues no chunk command
twice. A lost claim stops the stream (its outcome would be refused anyway).

This module holds the playbook checks of streams (`check_streams`), the chunk loop
(`pump`), the emitter a tool hands chunks to (`ChunkEmitter`) and the `chunk` template
view of a chunk command (`chunk_view`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from noetl_pg import db
from noetl_pg.errors import DatabaseError, DatabaseTransient, PlaybookError, ToolError
from noetl_pg.jsoncheck import storage_problem

if TYPE_CHECKING:
    from noetl_pg.dsl import Playbook, Step
    from noetl_pg.store import ResultStore

# A chunk is held whole by the worker (and by each command that reads it): the bound keeps
# one chunk a size a worker can hold, whatever the total.
MAX_CHUNK_ROWS = 1_000_000
PARTIAL_EVENT = "call.partial"

Row = dict[str, Any]


def chunk_rows_of(config: Mapping[str, Any]) -> int | None:
    """`output.stream.chunk_rows` of a tool config (registration checked it), or None."""
    output = config.get("output")
    stream = output.get("stream") if isinstance(output, Mapping) else None
    if not isinstance(stream, Mapping):
        return None
    return int(stream["chunk_rows"])


def streamed_chunk_rows(step: Step) -> int | None:
    """The chunk size of a streamed step (one tool, not a pipeline), or None."""
    if step.tool is None or isinstance(step.tool, list):
        return None
    return chunk_rows_of(step.tool.model_extra or {})


# --- registration -------------------------------------------------------------------------


def check_streams(playbook: Playbook, label: str, lines: Sequence[int | None],
                  stream_kinds: frozenset[str]) -> None:
    """Refuse streams and `on: call.partial` arcs this engine cannot run, naming the step.

    A stream is the single tool of a step of one of `stream_kinds` (the registry's
    STREAM_KINDS: postgres, duckdb), not a pipeline task, a workbook task or a loop step;
    `on: call.partial` arcs belong to a streamed step; the step they lead to runs once
    per chunk, so it is reached by that one arc only and is no loop.
    """
    for index, entry in enumerate(playbook.workbook):
        if chunk_rows_of(entry.get("tool") or {}) is not None:
            raise PlaybookError("output.stream is not supported on a workbook task: stream "
                                "from a step's tool", playbook=label,
                                field=f"workbook[{index}].tool.output.stream")
    sources: dict[str, int] = {}
    for step in playbook.workflow:
        for arc in step.next.arcs if step.next else []:
            sources[arc.step] = sources.get(arc.step, 0) + 1
    for index, step in enumerate(playbook.workflow):
        problem = _stream_problem(playbook, step, sources, stream_kinds)
        if problem is not None:
            message, field = problem
            raise PlaybookError(message, playbook=label, step=step.step, field=field,
                                line=lines[index] if index < len(lines) else None)


def _stream_problem(playbook: Playbook, step: Step, sources: Mapping[str, int],
                    stream_kinds: frozenset[str]) -> tuple[str, str] | None:
    """(message, field) of what `step` streams or wires that cannot run, else None."""
    tasks = step.tool if isinstance(step.tool, list) else []
    for position, task in enumerate(tasks):
        if chunk_rows_of(task.model_extra or {}) is not None:
            return ("output.stream is not supported in a pipeline: stream from a step whose "
                    "tool is one postgres or duckdb task", f"tool[{position}].output.stream")
    chunk_rows = streamed_chunk_rows(step)
    kind = step.tool.kind if step.tool is not None and not isinstance(step.tool, list) else ""
    if chunk_rows is not None and kind not in stream_kinds:
        return (f"output.stream is not supported by kind '{kind}' (supported: "
                f"{', '.join(sorted(stream_kinds))})", "tool.output.stream")
    if chunk_rows is not None and step.loop is not None:
        return "output.stream is not supported on a loop step", "loop"
    partial = step.next.partial_arcs if step.next else []
    if partial and chunk_rows is None:
        return ("an `on: call.partial` arc needs a streamed step (tool.output.stream: "
                "{chunk_rows: N})", "next.arcs.on")
    for arc in partial:
        if sources.get(arc.step, 0) > 1:
            return (f"step '{arc.step}' runs once per chunk of an `on: call.partial` arc: no "
                    "other arc may lead to it", "next.arcs.step")
        if playbook.step_named(arc.step).loop is not None:
            return (f"step '{arc.step}' is a loop: the target of an `on: call.partial` arc "
                    "runs once per chunk and cannot loop", "next.arcs.step")
    return None


# --- the chunk loop -----------------------------------------------------------------------


class ChunkSink(Protocol):
    """Where a streaming tool hands each chunk (rows JSON-safe), in index order."""

    def emit(self, index: int, columns: list[str], rows: list[Row], has_more: bool) -> None: ...


def pump(
    columns: list[str],
    fetch: Callable[[int], list[Row]],
    chunk_rows: int,
    sink: ChunkSink,
    cancelled: threading.Event | None = None,
) -> dict[str, Any]:
    """Read `fetch(n)` (at most n rows; [] at the end) into chunks of `chunk_rows` for
    `sink`, and return the stream's summary `{columns, row_count, chunks, streamed}`.

    Whether more follows is known by reading one row ahead, so at most `chunk_rows + 1`
    rows are held at a time. An empty result emits no chunk. A cancelled execution stops
    the stream with a ToolError.
    """
    rows = fetch(chunk_rows)
    index = total = 0
    while rows:
        if cancelled is not None and cancelled.is_set():
            raise ToolError("stream stopped: the execution was cancelled")
        ahead = fetch(1)
        sink.emit(index, columns, rows, bool(ahead))
        total += len(rows)
        index += 1
        if not ahead:
            break
        rows = ahead + fetch(chunk_rows - 1) if chunk_rows > 1 else ahead
    return {"columns": columns, "row_count": total, "chunks": index, "streamed": True}


# --- recording ----------------------------------------------------------------------------


class PartialRecorder(Protocol):
    """The engine side of a stream (noetl.record_partial, noetl.stream_chunks)."""

    def recorded(self, command_id: int, attempt: int) -> frozenset[int]: ...

    def record(self, chunk: Mapping[str, Any]) -> str: ...


class EngineConnectionLost(Exception):
    """The engine connection broke while a stream recorded a chunk. Not a database error,
    so the tool that streams (whose own errors are psycopg's or DuckDB's) does not take it
    for its query's failure; the worker re-raises `connection_error` and reconnects."""

    def __init__(self, connection_error: DatabaseTransient) -> None:
        super().__init__(str(connection_error))
        self.connection_error = connection_error


class DbPartialRecorder:
    """record_partial and stream_chunks on a worker slot's connection (autocommit: each
    chunk commits on its own, so the steps downstream start while the stream goes on).
    A lost connection raises EngineConnectionLost (the slot reconnects; the command's
    claim is taken back and the stream runs again at the same attempt); any other database
    error fails the step with a ToolError naming the chunk."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def recorded(self, command_id: int, attempt: int) -> frozenset[int]:
        row = self._call("stream_chunks", command_id=command_id, attempt=attempt)
        return frozenset(row["chunk_indexes"] if row else [])

    def record(self, chunk: Mapping[str, Any]) -> str:
        params = dict(chunk)
        for key in ("columns", "rows", "targets"):
            params[key] = Jsonb(params[key])
        row = self._call("record_partial", **params)
        return str(row["status"]) if row else "stale"

    def _call(self, name: str, **params: Any) -> dict[str, Any] | None:
        try:
            return db.fetch_one(self._conn, name, **params)
        except DatabaseTransient as exc:
            raise EngineConnectionLost(exc) from exc
        except DatabaseError as exc:
            raise ToolError(f"stream: chunk {params.get('chunk_index', '')} not recorded: "
                            f"{exc.message}") from None


class ChunkEmitter:
    """A ChunkSink for one claimed command: stores each chunk (inline or by ref), lets the
    step's `on: call.partial` arcs choose their targets (`choose`, given the chunk view)
    and records it. Chunks this attempt recorded already (a reclaimed stream) are skipped.
    A lost claim or a finished execution stops the stream with a ToolError."""

    def __init__(
        self,
        command: Mapping[str, Any],
        store: ResultStore,
        recorder: PartialRecorder,
        choose: Callable[[Mapping[str, Any]], list[dict[str, Any]]],
        *,
        output_store: str | None = None,
        scrub: Callable[[Any], Any] | None = None,
    ) -> None:
        self._command = command
        self._store = store
        self._recorder = recorder
        self._choose = choose
        self._output_store = output_store
        self._scrub = scrub
        self._skip: frozenset[int] | None = None

    def emit(self, index: int, columns: list[str], rows: list[Row], has_more: bool) -> None:
        command = self._command
        if self._skip is None:
            self._skip = self._recorder.recorded(command["command_id"], command["attempt"])
        if index in self._skip:
            return
        if self._scrub is not None:
            rows = self._scrub(rows)
        problem = _unstorable(rows, f"chunk {index}")
        if problem:
            raise ToolError(problem)
        name = f"chunk_{index}" + (f".attempt_{command['attempt']}"
                                   if command["attempt"] > 1 else "")
        stored = self._store.externalize(command["execution_id"], command["step_name"], name,
                                         rows, store=self._output_store)
        view = {"index": index, "has_more": has_more, "row_count": len(rows),
                "columns": columns, "rows": rows}
        status = self._recorder.record({
            "command_id": command["command_id"], "attempt": command["attempt"],
            "claim": command.get("claim_gen"), "chunk_index": index, "has_more": has_more,
            "row_count": len(rows), "columns": columns, "rows": stored.value,
            "targets": self._choose(view),
        })
        if status == "stale":
            raise ToolError(f"stream stopped at chunk {index}: the claim was taken back")
        if status == "stopped":
            raise ToolError(f"stream stopped at chunk {index}: the execution is not running")


def _unstorable(rows: list[Row], path: str) -> str | None:
    """storage_problem of a chunk, walking its values only when its JSON text shows a null
    character or cannot be encoded (a lone surrogate): the walk costs ten times the
    encoding, and almost every chunk is clean."""
    text = json.dumps(rows, ensure_ascii=False, default=str)
    try:
        clean = "\\u0000" not in text and bool(text.encode())
    except UnicodeEncodeError:
        clean = False
    return None if clean else storage_problem(rows, path)


# --- the chunk a command reads ------------------------------------------------------------


def chunk_view(command_input: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`chunk` of a command issued by an `on: call.partial` arc, else None. Its `rows`
    may be a ref: the executor loads them before rendering (noetl_pg.namespace)."""
    chunk = (command_input or {}).get("chunk")
    return dict(chunk) if isinstance(chunk, Mapping) else None
