"""Cron schedules: tick arithmetic, exactly one run per tick, missed-tick policies, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from engine_harness import REPO_ROOT, Engine

from noetl_pg import db
from noetl_pg.schedules import ScheduleError, add_schedule, fire_due, next_tick, tick_to_fire

NOETL = str(Path(sys.executable).parent / "noetl")

PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: ticked, path: test/ticked}
workload: {who: nobody}
workflow:
  - step: hello
    tool: {kind: python, input: {who: "{{ who }}"}, code: "result = {'hello': who}"}
"""


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_next_tick_reads_the_cron_in_its_time_zone() -> None:
    # 02:30 on weekdays in New York is 07:30 UTC in winter, 06:30 in summer.
    assert next_tick("30 2 * * 1-5", "America/New_York", _at("2026-01-05 00:00")) == \
        _at("2026-01-05 07:30")
    assert next_tick("30 2 * * 1-5", "America/New_York", _at("2026-07-06 00:00")) == \
        _at("2026-07-06 06:30")
    assert next_tick("*/15 * * * *", "UTC", _at("2026-01-01 10:15")) == _at("2026-01-01 10:30")


@pytest.mark.parametrize(("cron", "zone_name", "message"), [
    ("61 * * * *", "UTC", "cron expression '61 * * * *'"),
    ("* * *", "UTC", "cron expression '* * *'"),
    ("* * * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
])
def test_bad_cron_or_zone_is_one_clear_error(cron: str, zone_name: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("*", r"\*")):
        next_tick(cron, zone_name, _at("2026-01-01 00:00"))


def test_missed_ticks_skip_to_the_latest_or_catch_up_one_by_one() -> None:
    due, now = _at("2026-01-01 10:00"), _at("2026-01-01 10:03:30")
    skip = tick_to_fire("* * * * *", "UTC", "skip", due, now)
    assert (skip.expected_next_run_at, skip.scheduled_for, skip.next_run_at) == \
        (due, _at("2026-01-01 10:03"), _at("2026-01-01 10:04"))
    catch_up = tick_to_fire("* * * * *", "UTC", "catch_up", due, now)
    assert (catch_up.scheduled_for, catch_up.next_run_at) == (due, _at("2026-01-01 10:01"))


def _due_schedule(engine: Engine, policy: str, minutes_ago: int) -> tuple[int, str, datetime]:
    path = engine.register(PLAYBOOK)
    with db.connect(engine.dsn) as conn:
        schedule_id = add_schedule(conn, path, "* * * * *", payload={"who": policy},
                                   missed_policy=policy)
    first = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)
    engine.sql("update noetl.schedule set next_run_at = %s where schedule_id = %s",
               first, schedule_id)
    return schedule_id, path, first


def test_concurrent_fires_of_one_tick_start_one_execution(engine: Engine) -> None:
    schedule_id, path, first = _due_schedule(engine, "skip", 1)
    barrier = threading.Barrier(8)
    results: list[int | None] = []

    def fire() -> None:
        with db.connect(engine.dsn) as conn:
            barrier.wait()
            row = db.fetch_one(conn, "schedule_fire", schedule_id=schedule_id,
                               expected_next_run_at=first, scheduled_for=first,
                               next_run_at=first + timedelta(minutes=1))
            results.append(row["execution_id"] if row else None)

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [r for r in results if r is not None]
    assert len(started) == 1
    assert engine.sql("select count(*) as n from noetl.execution where path = %s",
                      path)[0]["n"] == 1
    runs = engine.sql("select scheduled_for, execution_id from noetl.schedule_run "
                      "where schedule_id = %s", schedule_id)
    assert [(r["scheduled_for"], r["execution_id"]) for r in runs] == [(first, started[0])]


def _worker(dsn: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NOETL_DSN": dsn, "NOETL_WORKER_HEARTBEAT_SECONDS": "0.2"}
    return subprocess.Popen([NOETL, "worker", "--concurrency", "2", "--no-projector"],
                            env=env, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)


def test_three_workers_run_each_tick_exactly_once(fresh_engine: Engine) -> None:
    skip_id, skip_path, skip_first = _due_schedule(fresh_engine, "skip", 4)
    catch_id, catch_path, catch_first = _due_schedule(fresh_engine, "catch_up", 4)
    workers = [_worker(fresh_engine.dsn) for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            due = fresh_engine.sql(
                "select count(*) as n from noetl.schedule where next_run_at <= now()")[0]["n"]
            running = fresh_engine.sql("select count(*) as n from noetl.execution "
                                       "where status = 'RUNNING'")[0]["n"]
            if due == 0 and running == 0:
                break
            time.sleep(0.1)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)

    def runs(schedule_id: int) -> list[datetime]:
        return [r["scheduled_for"] for r in fresh_engine.sql(
            "select scheduled_for from noetl.schedule_run where schedule_id = %s "
            "order by scheduled_for", schedule_id)]

    now_minute = datetime.now(UTC).replace(second=0, microsecond=0)
    # catch_up: every minute from the first missed tick on, once each, none skipped.
    caught = runs(catch_id)
    assert caught[0] == catch_first
    assert caught == [catch_first + timedelta(minutes=i) for i in range(len(caught))]
    assert caught[-1] in (now_minute, now_minute - timedelta(minutes=1))
    # skip: the missed ticks are dropped; only the latest (and a minute that passed during
    # the test) ran.
    skipped = runs(skip_id)
    assert 1 <= len(skipped) <= 2 and skipped[0] >= skip_first + timedelta(minutes=3)
    for path, expected in ((catch_path, len(caught)), (skip_path, len(skipped))):
        rows = fresh_engine.sql("select status, result from noetl.execution where path = %s",
                                path)
        assert len(rows) == expected, "one execution per tick, none doubled"
        assert {r["status"] for r in rows} == {"COMPLETED"}
    assert {json.dumps(r["result"]) for r in fresh_engine.sql(
        "select result from noetl.execution where path = %s", catch_path)} == \
        {json.dumps({"hello": "catch_up"})}


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NOETL, *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, env={**os.environ, "NOETL_DSN": dsn})


def test_cli_add_list_pause_resume_delete(engine: Engine) -> None:
    path = engine.register(PLAYBOOK)
    added = _cli(engine.dsn, "schedule", "add", path, "0 6 * * *", "--timezone",
                 "Europe/Paris", "--payload", '{"who": "cli"}', "--json")
    assert added.returncode == 0, added.stderr
    schedule = json.loads(added.stdout)
    next_run = datetime.fromisoformat(schedule["next_run_at"])
    assert next_run > datetime.now(UTC) and next_run.astimezone(UTC).hour in (4, 5)
    assert schedule["payload"] == {"who": "cli"} and schedule["missed_policy"] == "skip"
    schedule_id = schedule["schedule_id"]

    listed = json.loads(_cli(engine.dsn, "schedule", "list", "--json").stdout)
    assert [s["path"] for s in listed if s["schedule_id"] == schedule_id] == [path]
    assert _cli(engine.dsn, "schedule", "pause", str(schedule_id)).returncode == 0
    assert engine.sql("select paused from noetl.schedule where schedule_id = %s",
                      schedule_id)[0]["paused"] is True
    assert _cli(engine.dsn, "schedule", "resume", str(schedule_id)).returncode == 0
    assert _cli(engine.dsn, "schedule", "delete", str(schedule_id)).returncode == 0
    missing = _cli(engine.dsn, "schedule", "delete", str(schedule_id))
    assert missing.returncode == 2 and f"schedule {schedule_id} does not exist" in missing.stderr

    bad = _cli(engine.dsn, "schedule", "add", path, "not a cron")
    assert bad.returncode == 2 and "cron expression 'not a cron'" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = _cli(engine.dsn, "schedule", "add", "no/such/playbook", "* * * * *")
    assert unknown.returncode == 2 and "no/such/playbook is not registered" in unknown.stderr


def test_status_names_the_schedule_tick_that_started_an_execution(fresh_engine: Engine) -> None:
    schedule_id, path, first = _due_schedule(fresh_engine, "catch_up", 1)
    with db.connect(fresh_engine.dsn) as conn:
        started = fire_due(conn)
        by_hand = db.fetch_one(conn, "start_execution", path=path, payload={}, version=None)
    assert len(started) == 1
    shown = _cli(fresh_engine.dsn, "status", str(started[0]), "--json")
    assert shown.returncode == 0, shown.stderr
    schedule = json.loads(shown.stdout)["schedule"]
    assert (schedule["schedule_id"], schedule["cron"], schedule["timezone"]) == (
        schedule_id, "* * * * *", "UTC")
    assert datetime.fromisoformat(schedule["scheduled_for"]) == first
    human = _cli(fresh_engine.dsn, "status", str(started[0]))
    assert f"started by schedule {schedule_id} ('* * * * *' UTC) for the tick of " \
           f"{first:%Y-%m-%d %H:%M:%S}" in human.stdout
    assert by_hand is not None
    other = _cli(fresh_engine.dsn, "status", str(by_hand["execution_id"]), "--json")
    assert json.loads(other.stdout)["schedule"] is None
    assert "started by schedule" not in _cli(fresh_engine.dsn, "status",
                                             str(by_hand["execution_id"])).stdout
