"""`noetl workers`: the capacity registry (noetl.worker_capacity).

Every worker reports its free slots and tool pools with its heartbeat (directly, or over
NATS when NOETL_NATS_URL is set); a worker is listed from the moment it starts.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.table import Table

from noetl_pg import db
from noetl_pg.cli.common import console, emit, json_option


def _pools(pools: dict[str, dict[str, object]]) -> str:
    return ", ".join(
        f"{kind}: " + " ".join(f"{key}={value}" for key, value in sorted(detail.items()))
        for kind, detail in sorted(pools.items())
    )


def workers_command(get_dsn: Callable[[], str]) -> click.Command:
    """`noetl workers`; `get_dsn` resolves the database when the command runs."""

    @click.command("workers")
    @click.option("--all", "all_workers", is_flag=True,
                  help="Also stopped and gone workers (default: alive ones).")
    @json_option
    def workers(all_workers: bool, as_json: bool) -> None:
        """Workers with their free slots, kinds and tool pools (the capacity registry)."""
        with db.connect(get_dsn()) as conn:
            rows = db.fetch_all(conn, "worker_capacity", all_workers=all_workers)

        def render() -> None:
            table = Table("worker", "state", "kinds", "free/slots", "pools", "via",
                          "heartbeat")
            for row in rows:
                table.add_row(
                    row["worker_id"], row["state"], ",".join(row["kinds"] or ["all"]),
                    f"{'' if row['available_slots'] is None else row['available_slots']}"
                    f"/{row['slots']}",
                    _pools(row["tool_pools"] or {}), row["reported_via"] or "",
                    f"{row['heartbeat_age_seconds']:.1f}s ago")
            console.print(table)
            console.print(f"({len(rows)} worker(s))")

        emit(rows, as_json, render)

    return workers
