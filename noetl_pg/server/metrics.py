"""GET /metrics: Prometheus text format, read from counters and indexes at scrape time.

Nothing here scans noetl.event: queue depth comes from the command table's partial indexes,
executions by status from execution_status_idx, claims/completions/durations from the
BRIN indexes on command.claimed_at/finished_at over a trailing window (so they are gauges
of the last WINDOW_SECONDS, not counters since start), projection lag from one primary-key
probe per running execution, workers from noetl.worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from noetl_pg.server import database
from noetl_pg.server.api_ops import ALIVE_SECONDS
from noetl_pg.server.auth import require

router = APIRouter(tags=["Operations"])

# One common scrape interval: the window's rows are read on every scrape.
WINDOW_SECONDS = 15.0
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0, float("inf"))
EXECUTION_STATUSES = ("RUNNING", "COMPLETED", "FAILED", "CANCELLED")


# Command kinds that are engine bookkeeping, not steps: left out of the duration histogram.
NOT_STEPS = frozenset({"route", "loop"})


class Snapshot(Collector):
    """The metric families of one scrape, built from rows already read."""

    def __init__(self, counts: dict[str, Any], lag: dict[str, Any],
                 queue: list[dict[str, Any]], window: list[dict[str, Any]]) -> None:
        self.counts, self.lag, self.queue, self.window = counts, lag, queue, window

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("noetl_queue_depth", "Commands by kind and queue state",
                                  labels=["kind", "state"])
        for row in self.queue:
            for state in ("queued_due", "queued_later", "claimed", "waiting"):
                depth.add_metric([row["kind"], state], row[state])
        yield depth

        executions = GaugeMetricFamily("noetl_executions", "Executions by status",
                                       labels=["status"])
        by_status = self.counts["executions"] or {}
        for status in EXECUTION_STATUSES:
            executions.add_metric([status], by_status.get(status, 0))
        yield executions

        yield GaugeMetricFamily("noetl_workers_alive",
                                f"Workers with a heartbeat in the last {ALIVE_SECONDS:g}s",
                                value=self.counts["workers_alive"])
        yield GaugeMetricFamily("noetl_worker_slots", "Slots of the live workers",
                                value=self.counts["worker_slots"])
        yield GaugeMetricFamily("noetl_projection_lag_seconds",
                                "Age of the oldest event not yet folded into "
                                "execution.state, over running executions",
                                value=self.lag["seconds_behind"])
        yield GaugeMetricFamily("noetl_projection_executions_behind",
                                "Running executions with events not yet folded",
                                value=self.lag["executions_behind"])
        for name, column, what in (("noetl_claims_per_second", "claims", "claimed"),
                                   ("noetl_completions_per_second", "completions",
                                    "completed")):
            family = GaugeMetricFamily(
                name, f"Commands {what} per second over the last {WINDOW_SECONDS:g}s",
                labels=["kind"])
            per_kind: dict[str, int] = {}
            for row in self.window:
                per_kind[row["kind"]] = per_kind.get(row["kind"], 0) + row[column]
            for kind, count in sorted(per_kind.items()):
                family.add_metric([kind], count / WINDOW_SECONDS)
            yield family
        yield self._durations()

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "noetl_step_duration_seconds",
            f"Claim-to-finish time of step commands finished in the last {WINDOW_SECONDS:g}s",
            labels=["kind"])
        # bucket i counts run times below DURATION_BOUNDS[i] (width_bucket over the finite
        # bounds; the last index is +Inf).
        by_kind: dict[str, dict[int, tuple[int, float]]] = {}
        for row in self.window:
            if row["kind"] in NOT_STEPS or row["bucket"] is None or not row["finished"]:
                continue
            by_kind.setdefault(row["kind"], {})[row["bucket"]] = (
                row["finished"], row["finished_seconds"])
        for kind, counts in sorted(by_kind.items()):
            cumulative, total_seconds, buckets = 0, 0.0, []
            for index, bound in enumerate(DURATION_BOUNDS):
                n, seconds = counts.get(index, (0, 0.0))
                cumulative += n
                total_seconds += seconds
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
            family.add_metric([kind], buckets, sum_value=total_seconds)
        return family


@router.get("/metrics", dependencies=[Depends(require("reader"))],
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics of the engine (the database), not of this server process."""
    pool = request.app.state.pool

    async def read(name: str, **params: Any) -> list[dict[str, Any]]:
        async with pool.connection() as conn:
            return await database.fetch_all(conn, name, **params)

    # Three statements on three connections at once: the scrape waits for the slowest.
    counts_rows, lag_rows, window = await asyncio.gather(
        read("server_metrics_counts", alive_seconds=ALIVE_SECONDS),
        read("server_projection_lag"),
        read("server_metrics_window", window_seconds=WINDOW_SECONDS,
             bounds=[bound for bound in DURATION_BOUNDS if bound != float("inf")]))
    counts, lag = counts_rows[0], lag_rows[0]
    queue = counts["queue"]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(counts, lag, queue, window))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
