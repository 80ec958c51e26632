"""The worker daemon: claim commands, run them, report outcomes. It never routes.

One module per job, the parts composed by `Worker` and sharing one `WorkerState`:
- `lifecycle`: `Worker` (start, stop, join, serve; registration) and `build_worker`;
- `slots`: the slot threads, each on its own connection: claim a batch, run it, apply its
  outcomes and claim the next batch in one transaction (noetl.finish_and_claim);
- `wakeup`: what wakes idle slots: a listener thread on LISTEN `noetl_command` (and
  `noetl_cancel`, which cancels running commands), NATS wake-ups and offers when
  NOETL_NATS_URL is set, and polling every `poll_interval` seconds when both are lost, so
  nothing waits forever;
- `housekeeping`: the heartbeat thread: the capacity report (over NATS while it is up),
  the reaper of stale claims and the sweep of this worker's orphaned ones;
- `sizing`: slots per worker (`default_slots`) and commands per claim (`ClaimSizer`);
- `state`: what the parts share.
"""

from noetl_pg.worker.lifecycle import Worker, build_worker
from noetl_pg.worker.sizing import DEFAULT_BATCH_SIZE, ClaimSizer, default_slots
from noetl_pg.worker.slots import SpecCache

__all__ = ["DEFAULT_BATCH_SIZE", "ClaimSizer", "SpecCache", "Worker", "build_worker",
           "default_slots"]
