"""NATS as an optional accelerator for a worker: wake-ups, capacity, targeted offers, reports.

Turned on by NOETL_NATS_URL (`nats_settings()`); LISTEN/NOTIFY stays the default. The
database is the only authority: every command is a row before anything is published, so a
message lost with NATS (or never sent) only delays work until a worker polls. Subjects start
with NOETL_NATS_PREFIX (default `noetl`, shown below), so deployments (or test databases)
can share one NATS server; stream names are the prefix upper-cased plus _WAKE / _EVENTS.
What travels here:

- `noetl.wake.<kind>` (JetStream, the prefix's _WAKE stream, kept a minute): "n new commands of this
  kind are due", published after the commit that issued them. `noetl.wake._any` when the
  kinds are unknown (claims put back by the reaper).
- `noetl.commands.<worker_id>` (core request/reply): the same wake-up offered first to one
  worker with free slots for the kind. It replies at once how many it woke slots for; a
  worker that has gone away has no subscription, so the request fails at once ("no
  responders") and the publisher offers the rest to the next worker, then broadcasts.
  Offers are not in a stream: a stream would answer the request itself.
- `noetl.capacity.<worker_id>` (core): a worker's free slots, every 0.1 s when they
  changed, so publishers know whom to offer to (also learned from every report and every
  reply).
- `noetl.events.report.<worker_id>` (JetStream, the prefix's _EVENTS stream, a work queue): the
  heartbeat with capacity ({worker_id, slots, available_slots, tool_pools, sent_at, ...}).
  Every worker with NATS on runs a consumer (`ReportApplier`) on the shared durable
  consumer `noetl-reports`: it applies a batch through noetl.apply_worker_reports and
  acknowledges the messages only after that commit; a redelivery is ignored by the
  function (reports are ordered by send time).

Failures: the client reconnects forever and re-subscribes on reconnect (nats-py resends
its subscriptions); streams and the durable consumer are created again when a restarted
server lost them. While disconnected `connected` is false: the worker goes back to NOTIFY
for its wake-ups and heartbeats directly in the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from noetl_pg import db, settings
from noetl_pg.errors import DatabaseError

log = logging.getLogger(__name__)

REPORTS_CONSUMER = "noetl-reports"
ANY_KIND = "*"
# How long an offer may wait for a worker's reply before the next worker is tried.
OFFER_TIMEOUT_SECONDS = 0.25
# At most this many workers are offered one kind's commands before the broadcast.
MAX_OFFERS = 3
REPORT_BATCH = 256
# How often a worker's free slots are announced (when they changed).
CAPACITY_SECONDS = 0.1


@dataclass(frozen=True)
class NatsSettings:
    url: str
    prefix: str = "noetl"


def nats_settings() -> NatsSettings | None:
    """NOETL_NATS_URL (e.g. nats://127.0.0.1:4222) and NOETL_NATS_PREFIX (default noetl),
    or None when the URL is unset: NATS is off."""
    configured = settings.current()
    if configured.nats_url is None:
        return None
    return NatsSettings(configured.nats_url, configured.nats_prefix)


def subject_token(name: str) -> str:
    """A kind, worker id or prefix as one subject token (NATS splits subjects on '.')."""
    token = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return token or "_"


class Subjects:
    """The subjects and stream names of one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.wake_stream = f"{prefix.upper().replace('-', '_')}_WAKE"
        self.events_stream = f"{prefix.upper().replace('-', '_')}_EVENTS"

    def wake(self, kind: str) -> str:
        token = "_any" if kind == ANY_KIND else subject_token(kind)
        return f"{self.prefix}.wake.{token}"

    def offer(self, worker_id: str) -> str:
        return f"{self.prefix}.commands.{subject_token(worker_id)}"

    def capacity(self, worker_id: str) -> str:
        return f"{self.prefix}.capacity.{subject_token(worker_id)}"

    def report(self, worker_id: str) -> str:
        return f"{self.prefix}.events.report.{subject_token(worker_id)}"


@dataclass
class KnownWorker:
    """What a publisher knows of another worker's capacity (from NATS, never the database)."""

    kinds: frozenset[str] | None
    free: int
    seen: float = field(default_factory=time.monotonic)

    def serves(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


@dataclass
class BusStats:
    """Counters a test or `noetl workers` can read: what this process sent and received."""

    wakeups_received: int = 0
    offers_received: int = 0
    offers_sent: int = 0
    offers_taken: int = 0
    broadcasts_sent: int = 0
    reports_published: int = 0
    reports_applied: int = 0
    reconnects: int = 0
    publish_failures: int = 0


class NatsBus:
    """One worker's NATS connection on an asyncio loop of its own thread.

    `on_wake(kind, n)` is called (on the bus thread) for a wake-up or an offer; it wakes
    up to `n` idle slots (n None: all) and returns how many it woke. `free_slots()` says how
    many slots are idle now. `dsn` is the database the report consumer applies to.
    The methods other threads call never block longer than their timeout.
    """

    def __init__(
        self,
        settings: NatsSettings,
        *,
        worker_id: str,
        kinds: list[str] | None,
        dsn: str,
        on_wake: Callable[[str, int | None], int],
        free_slots: Callable[[], int],
        gone_after: float = 15.0,
    ) -> None:
        self.url = settings.url
        self.subjects = Subjects(settings.prefix)
        self.worker_id = worker_id
        self.kinds = kinds
        self.dsn = dsn
        self._on_wake = on_wake
        self._free_slots = free_slots
        self._gone_after = gone_after
        self.stats = BusStats()
        self._known: dict[str, KnownWorker] = {}
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="noetl-nats", daemon=True)
        self._nc: Any = None
        self._js: Any = None
        self._last_free: int | None = None
        self._pending: dict[str, int] = {}
        self._pending_lock = threading.Lock()
        self.applier = ReportApplier(self)

    # --- lifecycle (any thread) ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Close the connection (the report consumer ends its fetch within a second)."""
        self._stopping.set()
        self._thread.join(10)

    # --- what slots and the heartbeat call (any thread) ----------------------------------

    def wake(self, counts: Mapping[str, int]) -> bool:
        """Publish wake-ups for committed work ({kind: n}); returns at once. False when NATS
        is down now: the caller wakes workers through NOTIFY instead. Counts of calls that
        come while a dispatch is pending are added to it (one dispatch for many commits)."""
        if not counts or not self.connected:
            return False
        with self._pending_lock:
            scheduled = bool(self._pending)
            for kind, n in counts.items():
                self._pending[kind] = self._pending.get(kind, 0) + n
        if not scheduled:
            self._loop.call_soon_threadsafe(self._flush_pending)
        return True

    def _flush_pending(self) -> None:
        with self._pending_lock:
            counts, self._pending = self._pending, {}
        if counts:
            self._loop.create_task(self._dispatch(counts))

    def publish_report(self, report: Mapping[str, Any], timeout: float = 2.0) -> bool:
        """Publish a heartbeat report to the events stream and wait for the stream's ack.
        False (never raises) when it was not stored: report directly to the database."""
        if not self.connected:
            return False
        future: Future[bool] = asyncio.run_coroutine_threadsafe(
            self._publish_report(dict(report)), self._loop)
        try:
            return future.result(timeout)
        except Exception:  # a timeout or a lost connection: the caller falls back
            future.cancel()
            self.stats.publish_failures += 1
            return False

    async def _announce_capacity(self) -> None:
        """Every CAPACITY_SECONDS, this worker's free slots when they changed (publishers
        offer to it from this; an offer's reply corrects it at once)."""
        while not self._stopping.is_set():
            self._publish_capacity()
            await asyncio.sleep(CAPACITY_SECONDS)

    # --- the bus thread ------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        import nats  # the `nats` extra; imported only when NATS is on

        backoff = 0.2
        while not self._stopping.is_set():
            try:
                self._nc = await nats.connect(
                    self.url, name=f"noetl worker {self.worker_id}",
                    max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
                    disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                    error_cb=self._error)
                break
            except Exception as exc:  # server not up yet: keep trying, NOTIFY meanwhile
                log.warning("NATS %s not reachable (%s); retrying in %.1fs", self.url, exc,
                            backoff)
                await asyncio.sleep(backoff)
                self._nc = None
                backoff = min(backoff * 2, 5.0)
        if self._nc is None:
            return
        self._js = self._nc.jetstream()
        await self._subscribe()
        await self._ensure_streams()
        self._connected.set()
        announcer = self._loop.create_task(self._announce_capacity())
        await self.applier.run(self._stopping)
        announcer.cancel()
        self._connected.clear()
        try:
            await self._nc.close()
        except Exception as exc:  # closing anyway
            log.debug("NATS close failed: %s", exc)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _disconnected(self) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("NATS connection lost; waking workers through NOTIFY meanwhile")

    async def _reconnected(self) -> None:
        self.stats.reconnects += 1
        # A restarted server may have lost its streams (memory storage) with the consumer.
        await self._ensure_streams()
        self._connected.set()
        self._last_free = None  # announce again: publishers may have forgotten us
        log.warning("NATS connection back (subscriptions restored)")

    async def _error(self, exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    async def _ensure_streams(self) -> None:
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig

        prefix = self.subjects.prefix
        streams = [
            StreamConfig(name=self.subjects.wake_stream, subjects=[f"{prefix}.wake.>"],
                         max_age=60.0, max_msgs=100_000, storage=StorageType.MEMORY),
            StreamConfig(name=self.subjects.events_stream, subjects=[f"{prefix}.events.>"],
                         max_age=3600.0, storage=StorageType.MEMORY,
                         retention=RetentionPolicy.WORK_QUEUE),
        ]
        for config in streams:
            try:
                await self._js.add_stream(config)
            except Exception as exc:  # exists with other settings, or no JetStream
                log.debug("stream %s: %s", config.name, exc)

    async def _subscribe(self) -> None:
        subjects = self.subjects
        await self._nc.subscribe(subjects.offer(self.worker_id), cb=self._offered)
        if self.kinds is None:
            await self._nc.subscribe(f"{subjects.prefix}.wake.>", cb=self._woken)
        else:
            for kind in {*self.kinds, ANY_KIND}:
                await self._nc.subscribe(subjects.wake(kind), cb=self._woken)
        await self._nc.subscribe(f"{subjects.prefix}.capacity.*", cb=self._capacity)
        await self._nc.subscribe(f"{subjects.prefix}.events.report.*", cb=self._capacity)

    # --- receiving -----------------------------------------------------------------------

    async def _woken(self, msg: Any) -> None:
        self.stats.wakeups_received += 1
        body = _loads(msg.data)
        self._on_wake(str(body.get("kind", ANY_KIND)), _count(body.get("n")))

    async def _offered(self, msg: Any) -> None:
        self.stats.offers_received += 1
        body = _loads(msg.data)
        wanted = _count(body.get("n")) or 1
        taken = self._on_wake(str(body.get("kind", ANY_KIND)), wanted)
        if msg.reply:
            await msg.respond(json.dumps(
                {"taken": taken, "free": max(0, self._free_slots() - taken)}).encode())

    async def _capacity(self, msg: Any) -> None:
        body = _loads(msg.data)
        worker_id = body.get("worker_id")
        if not isinstance(worker_id, str):
            return
        kinds = body.get("kinds")
        self._known[worker_id] = KnownWorker(
            kinds=frozenset(kinds) if isinstance(kinds, list) else None,
            free=_count(body.get("available_slots")) or 0)

    # --- sending -------------------------------------------------------------------------

    def _publish_capacity(self) -> None:
        free = self._free_slots()
        if self._nc is None or not self.connected or free == self._last_free:
            return
        self._last_free = free
        body = {"worker_id": self.worker_id, "kinds": self.kinds, "available_slots": free}
        self._loop.create_task(self._core_publish(self.subjects.capacity(self.worker_id), body))

    async def _core_publish(self, subject: str, body: Mapping[str, Any]) -> None:
        try:
            await self._nc.publish(subject, json.dumps(body).encode())
        except Exception as exc:  # disconnected: capacity is re-sent on reconnect
            log.debug("publish %s failed: %s", subject, exc)

    async def _publish_report(self, report: dict[str, Any]) -> bool:
        await self._js.publish(self.subjects.report(str(report["worker_id"])),
                               json.dumps(report).encode(), timeout=1.5,
                               stream=self.subjects.events_stream)
        self.stats.reports_published += 1
        return True

    def _candidates(self, kind: str) -> list[str]:
        horizon = time.monotonic() - self._gone_after
        for worker_id in [w for w, k in self._known.items() if k.seen < horizon]:
            del self._known[worker_id]
        ranked = sorted(((k.free, w) for w, k in self._known.items()
                         if k.free > 0 and k.serves(kind)), reverse=True)
        return [worker_id for _, worker_id in ranked[:MAX_OFFERS]]

    async def _dispatch(self, counts: dict[str, int]) -> None:
        """Offer each kind's commands to workers with free slots, then broadcast the rest."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        for kind, n in counts.items():
            remaining = n
            for worker_id in [] if kind == ANY_KIND else self._candidates(kind):
                if remaining <= 0:
                    break
                self.stats.offers_sent += 1
                try:
                    reply = await self._nc.request(
                        self.subjects.offer(worker_id),
                        json.dumps({"kind": kind, "n": remaining}).encode(),
                        timeout=OFFER_TIMEOUT_SECONDS)
                except (NoRespondersError, NatsTimeout):
                    # Gone (or too slow): never offered again until it reports.
                    self._known.pop(worker_id, None)
                    continue
                except Exception as exc:  # disconnected: the broadcast below fails too
                    log.debug("offer to %s failed: %s", worker_id, exc)
                    break
                answer = _loads(reply.data)
                taken = _count(answer.get("taken")) or 0
                known = self._known.get(worker_id)
                if known is not None:
                    known.free = _count(answer.get("free")) or 0
                    known.seen = time.monotonic()
                self.stats.offers_taken += taken
                remaining -= taken
            if remaining > 0:
                await self._broadcast(kind, remaining)

    async def _broadcast(self, kind: str, n: int) -> None:
        body = json.dumps({"kind": kind, "n": n}).encode()
        try:
            await self._js.publish(self.subjects.wake(kind), body, timeout=1.0,
                                   stream=self.subjects.wake_stream)
        except Exception as exc:  # no stream (a server without JetStream): core publish
            log.debug("JetStream publish of %s failed (%s); core publish", kind, exc)
            try:
                await self._nc.publish(self.subjects.wake(kind), body)
            except Exception:
                # Lost with the connection: the commands wait in the database for a poll.
                self.stats.publish_failures += 1
                return
        self.stats.broadcasts_sent += 1


class ReportApplier:
    """The consumer of worker reports: a pull subscription on the durable `noetl-reports`
    consumer (shared by every worker with NATS on; each message goes to one of them).

    A fetched batch is applied in one transaction (noetl.apply_worker_reports) and only
    then acknowledged: a crash before the ack means the batch is delivered again after
    `ack_wait`, and applying it again changes nothing. A batch the database refuses is
    not acknowledged either (redelivered, up to `max_deliver` times)."""

    # Seconds before an unacknowledged batch is delivered again.
    ACK_WAIT_SECONDS = 10.0

    def __init__(self, bus: NatsBus) -> None:
        self.bus = bus
        # Tests set this to fail between the commit and the acknowledgement.
        self.after_commit: Callable[[], None] | None = None
        # The database is reached through the one database layer (blocking), on one thread
        # of its own so the bus's loop keeps serving wake-ups meanwhile.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="noetl-reports")
        self._conn: psycopg.Connection[Any] | None = None

    async def run(self, stopping: threading.Event) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        subscription: Any = None
        while not stopping.is_set():
            try:
                if not self.bus.connected:
                    await asyncio.sleep(0.2)
                    continue
                if subscription is None:
                    subscription = await self._subscribe()
                try:
                    # The first report as soon as it comes, then whatever else is there:
                    # one fetch of a whole batch would wait for the batch to fill.
                    messages = await subscription.fetch(1, timeout=1.0)
                except NatsTimeout:
                    continue
                messages += await self._more(subscription)
                await self.apply(messages)
            except DatabaseError as exc:
                log.warning("report consumer: database error (%s); batch left unacknowledged",
                            exc)
                await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
                await asyncio.sleep(1.0)
            except Exception as exc:  # the server lost the consumer, or a disconnect
                log.debug("report consumer: %s; subscribing again", exc)
                subscription = None
                await asyncio.sleep(0.5)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)

    async def _more(self, subscription: Any) -> list[Any]:
        """What else is waiting, up to a batch, within 20 ms; nothing on any error (the
        message in hand is applied anyway, the others come with the next fetch)."""
        try:
            return list(await subscription.fetch(REPORT_BATCH - 1, timeout=0.02))
        except Exception:  # a timeout with nothing more, or a pull the server cut short
            return []

    async def _subscribe(self) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig

        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ACK_WAIT_SECONDS,
                                max_deliver=20)
        subjects = self.bus.subjects
        return await self.bus._js.pull_subscribe(
            f"{subjects.prefix}.events.report.*", durable=REPORTS_CONSUMER,
            stream=subjects.events_stream, config=config)

    async def apply(self, messages: list[Any]) -> None:
        """Apply the batch (committed when this returns), then acknowledge its messages."""
        reports = [_loads(m.data) for m in messages]
        applied = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._apply_reports, reports)
        self.bus.stats.reports_applied += applied
        if self.after_commit is not None:
            self.after_commit()
        for message in messages:
            await message.ack()


    def _apply_reports(self, reports: list[dict[str, Any]]) -> int:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.bus.dsn,
                                    application_name=f"noetl reports {self.bus.worker_id}")
        row = db.fetch_one(self._conn, "apply_worker_reports", reports=Jsonb(reports))
        return int(row["applied"]) if row else 0

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


def _loads(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
