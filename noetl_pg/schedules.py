"""Cron schedules: evaluate cron expressions and fire due ticks through SQL.

The database decides which tick fires and that it fires once (noetl.fire_schedule, the
primary key of noetl.schedule_run); this module only computes tick times, which needs a
cron evaluator the database does not have. Workers call `fire_due` from their heartbeat
thread, so a tick fires within one heartbeat interval (NOETL_WORKER_HEARTBEAT_SECONDS) of
its time, whichever worker sees it first.

Missed ticks (no worker ran when they were due): `skip` fires only the latest missed tick
and continues with the first tick after now; `catch_up` fires every missed tick, oldest
first, one execution each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from cronsim import CronSim, CronSimError

from noetl_pg import db
from noetl_pg.errors import NoetlError

log = logging.getLogger(__name__)

MISSED_POLICIES = ("skip", "catch_up")
# A catch_up schedule that was down for long fires at most this many ticks per heartbeat.
DUE_BATCH = 20


class ScheduleError(NoetlError):
    """A cron expression, time zone or policy that cannot be used."""


@dataclass(frozen=True)
class Tick:
    """One tick to fire: the schedule's current next_run_at (the fencing value), the time
    the run is for, and the next tick after it."""

    expected_next_run_at: datetime
    scheduled_for: datetime
    next_run_at: datetime


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r}") from None


def next_tick(cron: str, timezone_name: str, after: datetime) -> datetime:
    """The first tick of `cron` (5 fields, in the time zone) strictly after `after`."""
    try:
        ticks = CronSim(cron, after.astimezone(zone(timezone_name)))
        return next(ticks).astimezone(UTC)
    except CronSimError as exc:
        raise ScheduleError(f"cron expression {cron!r}: {exc}") from None
    except StopIteration:
        raise ScheduleError(f"cron expression {cron!r} never fires") from None


def tick_to_fire(cron: str, timezone_name: str, policy: str, next_run_at: datetime,
                 now: datetime) -> Tick:
    """The tick a due schedule fires now, by its missed-tick policy."""
    if policy == "catch_up":
        return Tick(next_run_at, next_run_at, next_tick(cron, timezone_name, next_run_at))
    latest = next_run_at
    following = next_tick(cron, timezone_name, latest)
    while following <= now:
        latest, following = following, next_tick(cron, timezone_name, following)
    return Tick(next_run_at, latest, following)


def add_schedule(conn: psycopg.Connection[Any], path: str, cron: str, *,
                 timezone_name: str = "UTC", payload: dict[str, Any] | None = None,
                 missed_policy: str = "skip", now: datetime | None = None) -> int:
    """Store a schedule whose first tick is the first one after now; returns its id."""
    if missed_policy not in MISSED_POLICIES:
        raise ScheduleError(f"missed-tick policy must be one of {', '.join(MISSED_POLICIES)}")
    first = next_tick(cron, timezone_name, now or datetime.now(UTC))
    row = db.fetch_one(conn, "schedule_add", path=path, cron=cron, timezone=timezone_name,
                       payload=payload or {}, missed_policy=missed_policy, first_run_at=first)
    assert row is not None
    return int(row["schedule_id"])


def set_paused(conn: psycopg.Connection[Any], schedule_id: int, paused: bool) -> bool:
    """Pause or resume; a resumed schedule continues at its first tick after now."""
    row = db.fetch_one(conn, "schedule_get", schedule_id=schedule_id)
    if row is None:
        return False
    following = None if paused else next_tick(row["cron"], row["timezone"],
                                              datetime.now(UTC))
    found = db.fetch_one(conn, "schedule_pause", schedule_id=schedule_id, paused=paused,
                         next_run_at=following)
    return bool(found and found["found"])


def fire_due(conn: psycopg.Connection[Any]) -> list[int]:
    """Fire every due tick this worker wins; returns the executions started.

    A schedule whose stored cron no longer evaluates (edited by hand) is logged and left
    for an operator; it cannot fire in a loop because nothing moves its tick."""
    started: list[int] = []
    for row in db.fetch_all(conn, "schedule_due", batch=DUE_BATCH):
        try:
            tick = tick_to_fire(row["cron"], row["timezone"], row["missed_policy"],
                                row["next_run_at"], row["now_at"])
        except ScheduleError as exc:
            log.warning("schedule %s cannot fire: %s", row["schedule_id"], exc)
            continue
        fired = db.fetch_one(conn, "schedule_fire", schedule_id=row["schedule_id"],
                             expected_next_run_at=tick.expected_next_run_at,
                             scheduled_for=tick.scheduled_for, next_run_at=tick.next_run_at)
        if fired is not None and fired["execution_id"] is not None:
            started.append(int(fired["execution_id"]))
            log.info("schedule %s started execution %s for %s", row["schedule_id"],
                     fired["execution_id"], tick.scheduled_for.isoformat())
    return started
