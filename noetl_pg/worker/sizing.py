"""How much work a worker takes on: slots per worker, commands per claim."""

from __future__ import annotations

import os

# Commands a slot claims (and completes) at most at once, unless --batch-size says otherwise.
# The per-transaction cost of a claim-and-finish is about that of five loop iterations, so
# small batches spend the database on fixed costs: a 20,000-item python loop under `noetl
# worker` defaults took 14.7 s at 16 and 11.9 s at 32 (0.68 and 0.62 ms of CPU an item,
# worker and database; bench/README.md). ClaimSizer keeps slow commands at one per claim.
DEFAULT_BATCH_SIZE = 32


def default_slots() -> int:
    """Slots of a worker started without --concurrency: one per CPU, at least 2, at most 8.

    Slots beyond the cores do not run python faster; they queue on the loop's counter
    row and the isolation processes compete for the same cores. Measured on 2 cores
    (bench/README.md): a 2,000-item loop took 6.2 s with 4 slots, 3.5 s with 2. Steps that
    mostly wait (HTTP, child playbooks) want more: pass --concurrency.
    """
    return min(8, max(2, os.cpu_count() or 2))


class ClaimSizer:
    """How many commands one slot claims at a time: batching only while work is fast.

    A slot runs its batch one command after another, so a batch of slow commands (an HTTP
    call, a child playbook) would keep queued work away from idle slots and other
    workers. The size starts at 1, doubles after each batch whose commands took at most
    `FAST_SECONDS` each on average, up to `limit`, and drops back to 1 after a slow batch.
    Fast loops still claim (and complete) in batches, which is where batching pays.
    """

    FAST_SECONDS = 0.005

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.size = 1

    def observe(self, commands: int, seconds: float) -> None:
        if commands and seconds / commands <= self.FAST_SECONDS:
            self.size = min(self.size * 2, self.limit)
        else:
            self.size = 1
