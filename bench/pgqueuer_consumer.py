"""A bare pgqueuer no-op consumer (run by bench/bare_queue.py in bench/.venv-pgqueuer).

Not a bench of its own: it runs in the venv that holds `pgqueuer` from PyPI, never in the
project's. Installs pgqueuer's schema into the database DSN (once), enqueues JOBS jobs of an
entrypoint that does nothing (in batches of 1,000, untimed), then times one QueueManager
draining them with `batch_size` BATCH (mode drain: it stops once the queue is empty) and
prints one JSON line: {jobs, batch_size, seconds, jobs_per_s, pgqueuer_version}.

    bench/.venv-pgqueuer/bin/python bench/pgqueuer_consumer.py DSN JOBS BATCH
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import timedelta

import asyncpg
import pgqueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode


async def drain(dsn: str, jobs: int, batch: int) -> dict[str, float | int | str]:
    connection = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(connection))
        if await connection.fetchval("select to_regclass('pgqueuer') is null"):
            await queries.install()
        for start in range(0, jobs, 1000):
            count = min(1000, jobs - start)
            await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        manager = QueueManager(queries)
        handled = 0

        @manager.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal handled
            handled += 1

        started = time.perf_counter()
        await manager.run(batch_size=batch, mode=QueueExecutionMode.drain,
                          dequeue_timeout=timedelta(seconds=1))
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    if handled != jobs:
        raise RuntimeError(f"pgqueuer handled {handled} of {jobs} jobs")
    return {"jobs": jobs, "batch_size": batch, "seconds": seconds,
            "jobs_per_s": jobs / seconds, "pgqueuer_version": pgqueuer.__version__}


if __name__ == "__main__":
    dsn, jobs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(drain(dsn, jobs, batch))))
