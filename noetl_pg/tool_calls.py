"""Running the tool calls a command asks for: one at a time, or a batch's first calls
started together.

CommandRunner.start (noetl_pg.executor) is a generator: it yields each ToolCall its
command needs and is sent the call's TaskCall, and returns the command's outcome.
`run_alone` runs each call as it is yielded. `FirstCalls` holds the first calls of a
batch's commands: calls of a batching tool (noetl_pg.tools.base.BatchingTool) with equal
keys are started together, in claim order, and each command takes its call's TaskCall
when it gets to it, in that order; any other call runs when taken. A python loop's
iterations in one claim then cost one executor write for several requests, and the
executor runs them while the worker finishes the earlier ones (python_executor.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Hashable, Sequence
from typing import Any, cast

from noetl_pg import protocol
from noetl_pg.errors import ToolError
from noetl_pg.pipeline import TaskCall
from noetl_pg.tools.base import BatchingTool, ToolBatch, ToolCall

# A command being run: yields its tool calls, is sent their TaskCalls, returns its outcome.
CommandRun = Generator[ToolCall, TaskCall, protocol.Outcome]


def call_tool(call: ToolCall) -> TaskCall:
    """Run one call now; its ToolError is the call's error (for the task's policy)."""
    try:
        return TaskCall.ok(call.tool.run(call.config, call.context))
    except ToolError as exc:
        return TaskCall.failed(exc)


def run_alone(run: CommandRun) -> protocol.Outcome:
    """Run a command to its outcome, each tool call when it is asked for."""
    try:
        call = next(run)
        while True:
            call = run.send(call_tool(call))
    except StopIteration as done:
        outcome: protocol.Outcome = done.value
        return outcome


# tool class -> whether it batches (an isinstance of a runtime protocol costs microseconds).
_BATCHING: dict[type[Any], bool] = {}


def _batch_key(call: ToolCall) -> tuple[str, Hashable] | None:
    tool = call.tool
    batching = _BATCHING.get(type(tool))
    if batching is None:
        batching = _BATCHING[type(tool)] = isinstance(tool, BatchingTool)
    if not batching:
        return None
    key = cast(BatchingTool, tool).batch_key(call.config, call.context)
    return None if key is None else (tool.kind, key)


class FirstCalls:
    """The first tool calls of a batch's commands (None for a command that finished
    without one), calls of a batching tool started together by key. `take` or `drop` is
    asked in the calls' order, once for each call; `close` releases the batches."""

    def __init__(self, calls: Sequence[ToolCall | None]) -> None:
        self._calls = list(calls)
        # call index -> (its batch, its position in the batch)
        self._members: dict[int, tuple[ToolBatch, int]] = {}
        self._batches: list[ToolBatch] = []
        groups: dict[tuple[str, Hashable], list[int]] = {}
        for index, call in enumerate(self._calls):
            key = None if call is None else _batch_key(call)
            if key is not None:
                groups.setdefault(key, []).append(index)
        for members in groups.values():
            if len(members) < 2:
                continue
            tool = cast(BatchingTool, self._call(members[0]).tool)
            batch = tool.start_batch(
                [(self._call(index).config, self._call(index).context) for index in members])
            self._batches.append(batch)
            for position, index in enumerate(members):
                self._members[index] = (batch, position)

    def _call(self, index: int) -> ToolCall:
        call = self._calls[index]
        assert call is not None
        return call

    def take(self, index: int) -> TaskCall:
        """Call `index`'s TaskCall: its batch's result, or the call run now."""
        member = self._members.pop(index, None)
        if member is None:
            return call_tool(self._call(index))
        batch, position = member
        try:
            result: Any = batch.result(position)
        except ToolError as exc:
            return TaskCall.failed(exc)
        return TaskCall.ok(result)

    def drop(self, index: int) -> None:
        """Call `index` is not wanted (its execution was cancelled): not run when it runs
        alone; in a batch its result is taken and dropped (it was sent already, and the
        cancel makes the wait short), keeping the batch's order."""
        member = self._members.pop(index, None)
        if member is not None:
            batch, position = member
            with contextlib.suppress(ToolError):
                batch.result(position)

    def close(self) -> None:
        for batch in self._batches:
            batch.close()
