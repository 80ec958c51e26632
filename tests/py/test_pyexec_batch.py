"""A batch's python calls go to one executor ahead of their replies (ExecutorBatch,
noetl_pg.tool_calls): answered in claim order, each call's failure its own, a cancel
stopping the batch, and a loop's iterations running exactly once each.

Default isolation (process) throughout; executors run as the suite's user (conftest.py)
so that steps can write into pytest's temporary directories.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from engine_harness import Engine
from pyexec_support import tool_context

from noetl_pg.errors import ToolError
from noetl_pg.tool_calls import FirstCalls
from noetl_pg.tools.base import ToolCall, ToolContext
from noetl_pg.tools.python import PythonTool
from noetl_pg.tools.python_executor import (
    Executor,
    ExecutorBatch,
    ExecutorCancelled,
    ExecutorDied,
    ExecutorPool,
    ExecutorTimeout,
)

# Appends its `n` to `log` (one line per run), answers [n, the runner's pid].
LOGGED = """
import os
with open(log, "a") as out:
    out.write(f"{n}\\n")
{extra}
result = [n, os.getpid()]
"""


def _request(n: int, log: Path, extra: str = "") -> dict[str, Any]:
    return {"code": LOGGED.replace("{extra}", extra), "input": {"n": n, "log": str(log)},
            "libs": {}}


def _runs(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


@pytest.fixture
def pool() -> Iterator[ExecutorPool]:
    executors = ExecutorPool(warm=0)
    yield executors
    executors.close()


def test_a_batch_is_answered_in_order_by_one_executor_in_few_writes(
    pool: ExecutorPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    send = Executor.send

    def counted(self: Executor, requests: Sequence[Mapping[str, Any]]) -> None:
        writes.append(len(requests))
        send(self, requests)

    monkeypatch.setattr(Executor, "send", counted)
    log = tmp_path / "runs"
    batch = pool.batch([_request(n, log) for n in range(40)])
    try:
        replies = [batch.reply(n, timeout=30) for n in range(40)]
    finally:
        batch.close()
    assert [reply["value"][0] for reply in replies] == list(range(40))
    assert len({reply["value"][1] for reply in replies}) == 1
    assert _runs(log) == list(range(40))
    # Requests go ahead in groups, not one write per request.
    assert sum(writes) == 40 and len(writes) <= 40 // (ExecutorBatch.AHEAD // 2) + 1


def test_a_request_that_ends_its_executor_fails_alone(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """The runner answers in order, so the requests after the one that died never started:
    a fresh executor runs them, each once."""
    log = tmp_path / "runs"
    requests = [_request(n, log, "os._exit(3)" if n == 4 else "") for n in range(10)]
    batch = pool.batch(requests)
    try:
        before = [batch.reply(n, timeout=30)["value"] for n in range(4)]
        with pytest.raises(ExecutorDied) as died:
            batch.reply(4, timeout=30)
        after = [batch.reply(n, timeout=30)["value"] for n in range(5, 10)]
    finally:
        batch.close()
    assert died.value.returncode == 3
    assert [n for n, _ in before] == [0, 1, 2, 3] and [n for n, _ in after] == [5, 6, 7, 8, 9]
    assert len({pid for _, pid in before}) == 1 and len({pid for _, pid in after}) == 1
    assert before[0][1] != after[0][1]
    assert _runs(log) == list(range(10))


def test_replies_written_before_the_runner_ended_are_read_after_a_failed_send(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """Requests sent to an executor that has ended (the pipe is closed) do not fail the
    request whose reply is being read: its reply was written before the end, and the death
    belongs to the first request without one (a loop once reported a finished iteration
    failed this way, whenever the next requests went out after the runner had exited)."""
    log = tmp_path / "runs"
    executor = pool.acquire()
    try:
        executor.send([_request(0, log), _request(1, log, "os._exit(3)")])
        # Wait for the guard (and so its runner) to end, without reaping it.
        os.waitid(os.P_PID, executor.process.pid, os.WEXITED | os.WNOWAIT)
        executor.send([_request(2, log)])
        assert executor.receive(30)["value"][0] == 0
        with pytest.raises(ExecutorDied) as died:
            executor.receive(30)
    finally:
        executor.kill()
    assert died.value.returncode == 3
    assert _runs(log) == [0, 1]


def test_a_timeout_fails_only_its_request(pool: ExecutorPool, tmp_path: Path) -> None:
    log = tmp_path / "runs"
    requests = [_request(n, log, "import time; time.sleep(60)" if n == 2 else "")
                for n in range(5)]
    batch = pool.batch(requests)
    try:
        assert [batch.reply(n, timeout=30)["value"][0] for n in range(2)] == [0, 1]
        with pytest.raises(ExecutorTimeout):
            batch.reply(2, timeout=0.5)
        assert [batch.reply(n, timeout=30)["value"][0] for n in range(3, 5)] == [3, 4]
    finally:
        batch.close()
    assert _runs(log) == [0, 1, 2, 3, 4]


def test_a_cancel_stops_the_batch_and_sends_nothing_more(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    log = tmp_path / "runs"
    total = 100
    batch = pool.batch([_request(n, log) for n in range(total)])
    cancelled = threading.Event()
    try:
        assert [batch.reply(n, timeout=30, cancelled=cancelled)["value"][0]
                for n in range(5)] == [0, 1, 2, 3, 4]
        cancelled.set()
        for n in range(5, total):
            with pytest.raises(ExecutorCancelled):
                batch.reply(n, timeout=30, cancelled=cancelled)
    finally:
        batch.close()
    runs = _runs(log)
    # What had been sent ahead may have run; nothing after it was sent.
    assert runs[:5] == [0, 1, 2, 3, 4] and runs == sorted(set(runs))
    assert len(runs) <= 5 + ExecutorBatch.AHEAD


def test_requests_and_replies_larger_than_a_pipe_do_not_block(
    pool: ExecutorPool,
) -> None:
    """Six requests of 200 KB each, answered with as much: the pipes hold 64 KB, so the
    worker writes the rest while it reads replies."""
    text = "x" * 200_000
    requests = [{"code": "result = [n, len(text), text]", "input": {"n": n, "text": text},
                 "libs": {}} for n in range(6)]
    batch = pool.batch(requests)
    try:
        replies = [batch.reply(n, timeout=60)["value"] for n in range(6)]
    finally:
        batch.close()
    assert [reply[:2] for reply in replies] == [[n, 200_000] for n in range(6)]
    assert all(reply[2] == text for reply in replies)


def test_python_calls_of_a_batch_keep_their_own_errors_and_logs(tmp_path: Path) -> None:
    resources: dict[str, Any] = {}
    logs: dict[int, list[Mapping[str, str]]] = {n: [] for n in range(4)}
    calls: list[tuple[Mapping[str, Any], ToolContext]] = []
    for n in range(4):
        config: dict[str, Any] = {"code": f"print('said {n}')\nresult = {n}"}
        if n == 1:
            config = {"input": {}}  # no code
        if n == 2:
            config = {"code": "raise KeyError('gone')"}
        calls.append((config, tool_context(resources, log_sink=logs[n].append)))
    tool = PythonTool()
    batch = tool.start_batch(calls)
    try:
        assert batch.result(0) == 0
        with pytest.raises(ToolError, match="needs `code`"):
            batch.result(1)
        with pytest.raises(ToolError, match="KeyError: 'gone'"):
            batch.result(2)
        assert batch.result(3) == 3
    finally:
        batch.close()
        if resources:
            resources[PythonTool.kind].close()
    assert [entry["stdout"] for entry in logs[0]] == ["said 0\n"]
    assert [entry["stdout"] for entry in logs[3]] == ["said 3\n"]
    assert logs[1] == [] and "gone" in logs[2][0]["stderr"]


class _Recording:
    """A batching tool that records how its calls were started and answered."""

    kind: ClassVar[str] = "recording"
    config_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.alone: list[int] = []

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        self.alone.append(config["n"])
        return config["n"]

    def batch_key(self, config: Mapping[str, Any], context: ToolContext) -> Hashable | None:
        return config.get("key")

    def start_batch(
        self, calls: Sequence[tuple[Mapping[str, Any], ToolContext]]
    ) -> _RecordedBatch:
        members = [config["n"] for config, _ in calls]
        self.batches.append(members)
        return _RecordedBatch(members)


class _RecordedBatch:
    def __init__(self, members: list[int]) -> None:
        self.members = members
        self.asked: list[int] = []
        self.closed = False

    def result(self, index: int) -> Any:
        self.asked.append(index)
        if self.members[index] < 0:
            raise ToolError("negative")
        return self.members[index]

    def close(self) -> None:
        self.closed = True


def test_first_calls_group_by_key_and_answer_in_order() -> None:
    tool = _Recording()
    context = tool_context({})
    keys = ["a", None, "b", "a", "a", "c", "b"]
    values = [0, 1, 2, -3, 4, 5, 6]
    calls: list[ToolCall | None] = [
        ToolCall(tool, {"n": n, "key": key}, context) for n, key in zip(values, keys, strict=True)
    ]
    calls.insert(2, None)  # a command that finished without a tool call
    first = FirstCalls(calls)
    assert tool.batches == [[0, -3, 4], [2, 6]]  # "c" alone: no batch of one
    taken = [first.take(index) for index in (0, 1, 3, 4)]
    first.drop(5)
    taken += [first.take(index) for index in (6, 7)]
    first.close()
    assert [call.result for call in taken] == [0, 1, 2, None, 5, 6]
    assert taken[3].error_kind == "error" and taken[3].output["error"] == "negative"
    assert tool.alone == [1, 5]


LOOP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: batched_loop, path: test/pyexec/batched_loop}
workload: {log: ""}
workflow:
  - step: start
    tool: {kind: python, code: "result = {'xs': list(range(60))}"}
    next: [{step: each}]
  - step: each
    loop:
      in: "{{ start.xs }}"
      iterator: n
      spec: {mode: parallel, max_in_flight: 60, on_error: continue}
    tool:
      kind: python
      input: {n: "{{ n }}", log: "{{ workload.log }}"}
      code: |
        import os
        with open(log, "a") as out:
            out.write(f"{n}\\n")
        if n == 17:
            raise ValueError("seventeen")
        if n == 31:
            os._exit(9)
        result = n * 2
    next: [{step: after}]
  - step: after
    tool: {kind: python, input: {s: "{{ each.stats }}", r: "{{ each.results }}"},
           code: "result = {'stats': s, 'results': r}"}
"""


def test_a_loops_iterations_run_once_each_and_fail_alone(engine: Engine, tmp_path: Path) -> None:
    """A loop over an earlier step's output, in the default isolation: its iterations are
    claimed and sent in batches; one raising and one ending its executor fail alone."""
    log = tmp_path / "runs"
    row = engine.run(LOOP, payload={"log": str(log)})
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["stats"] == {"total": 60, "success": 58, "failed": 2}
    results = row["result"]["results"]
    assert [results[n] for n in range(60) if n not in (17, 31)] == \
        [n * 2 for n in range(60) if n not in (17, 31)]
    assert sorted(_runs(log)) == list(range(60))
    errors = {event["iter_index"]: event["error"] for event in engine.events(row["execution_id"])
              if event["event_type"] == "call.error" and event["node_name"] == "each"}
    assert "ValueError: seventeen" in errors[17] and "exited with code 9" in errors[31]
    assert set(errors) == {17, 31}
