"""GET /metrics: Prometheus text format, read at scrape time in one statement.

Nothing here reads noetl.event beyond one primary-key probe per running execution, nor
noetl.command beyond the partial indexes of its active statuses: `server_metrics`
(sql/queries/operable.sql) returns executions by status (execution_status_idx), the queue
per kind, the projection lag, and the live workers' rows, which carry what each worker ran
over the trailing window (noetl_pg/command_stats.py, published by its heartbeat): claims
and completions per second and the step-duration histogram are the sum of those rows, so
a scrape costs the same with ten commands in the table or ten million. They are as old as
the workers' last heartbeat.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from noetl_pg.command_stats import DURATION_BOUNDS, WINDOW_SECONDS
from noetl_pg.server import database
from noetl_pg.server.api_ops import ALIVE_SECONDS
from noetl_pg.server.auth import require

router = APIRouter(tags=["Operations"])

EXECUTION_STATUSES = ("RUNNING", "COMPLETED", "FAILED", "CANCELLED")


def window_totals(published: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind, the sum of the workers' published window statistics."""
    totals: dict[str, dict[str, Any]] = {}
    for stats in published:
        for kind, counts in (stats.get("kinds") or {}).items():
            total = totals.setdefault(kind, {"claims": 0, "completions": 0, "finished": 0,
                                             "finished_seconds": 0.0,
                                             "buckets": [0] * len(DURATION_BOUNDS)})
            for name in ("claims", "completions", "finished", "finished_seconds"):
                total[name] += counts.get(name, 0)
            for index, count in enumerate(counts.get("buckets") or []):
                if index < len(DURATION_BOUNDS):
                    total["buckets"][index] += count
    return totals


class Snapshot(Collector):
    """The metric families of one scrape, built from rows already read."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.window = window_totals(row["workers"]["stats"])

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("noetl_queue_depth", "Commands by kind and queue state",
                                  labels=["kind", "state"])
        for row in self.row["queue"]:
            for state in ("queued_due", "queued_later", "claimed", "waiting"):
                depth.add_metric([row["kind"], state], row[state])
        yield depth

        executions = GaugeMetricFamily("noetl_executions", "Executions by status",
                                       labels=["status"])
        by_status = self.row["executions"] or {}
        for status in EXECUTION_STATUSES:
            executions.add_metric([status], by_status.get(status, 0))
        yield executions

        yield GaugeMetricFamily("noetl_workers_alive",
                                f"Workers with a heartbeat in the last {ALIVE_SECONDS:g}s",
                                value=self.row["workers"]["alive"])
        yield GaugeMetricFamily("noetl_worker_slots", "Slots of the live workers",
                                value=self.row["workers"]["slots"])
        yield GaugeMetricFamily("noetl_projection_lag_seconds",
                                "Age of the oldest event not yet folded into "
                                "noetl.execution_state, over running executions",
                                value=self.row["lag"]["seconds_behind"])
        yield GaugeMetricFamily("noetl_projection_executions_behind",
                                "Running executions with events not yet folded",
                                value=self.row["lag"]["executions_behind"])
        for name, column, what in (("noetl_claims_per_second", "claims", "claimed"),
                                   ("noetl_completions_per_second", "completions",
                                    "completed")):
            family = GaugeMetricFamily(
                name, f"Commands {what} per second over the last {WINDOW_SECONDS:g}s",
                labels=["kind"])
            for kind, counts in sorted(self.window.items()):
                family.add_metric([kind], counts[column] / WINDOW_SECONDS)
            yield family
        yield self._durations()

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "noetl_step_duration_seconds",
            f"Run time on the workers of step commands finished in the last "
            f"{WINDOW_SECONDS:g}s",
            labels=["kind"])
        # bucket i counts run times below DURATION_BOUNDS[i] and at least the bound before
        # (the last is +Inf); command kinds that are not steps have none.
        for kind, counts in sorted(self.window.items()):
            if not counts["finished"]:
                continue
            cumulative, buckets = 0, []
            for bound, count in zip(DURATION_BOUNDS, counts["buckets"], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
            family.add_metric([kind], buckets, sum_value=counts["finished_seconds"])
        return family


@router.get("/metrics", dependencies=[Depends(require("reader"))],
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics of the engine (the database), not of this server process."""
    async with request.app.state.pool.connection() as conn:
        row = await database.fetch_one(conn, "server_metrics", alive_seconds=ALIVE_SECONDS)
    assert row is not None, "an aggregate without group by returns one row"
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(row))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
