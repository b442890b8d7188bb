"""Rebuild: replay the log from offset 0 into fresh tables, then swap them in.

The fresh tables live in `<database>_rebuild` and are filled by a pinned projector under the
next generation's consumer group until that group has committed past every partition's end as
it was when the rebuild began. Then each table is exchanged with its live twin (EXCHANGE TABLES,
atomic per table), and only then the new generation is recorded: a running projector sees it at
its next flush and continues under the new group from exactly where the rebuild stopped. A
batch it wrote in between is harmless: its rows carry their log positions, so the new group
skips what they already hold.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from infra.log import EventProducer
from infra.settings import LogSettings
from projections.errors import ProjectionError
from projections.projector import Lag, Projector, broker_group, current_generation
from projections.schema import PROJECTION_TABLES
from projections.settings import PROJECTOR_BATCH
from projections.store import ClickHouse

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]


class RebuildFailed(ProjectionError):
    """The replay stopped before reaching the end of the log; the live tables are untouched."""


@dataclass(frozen=True, kw_only=True)
class RebuildReport:
    generation: int
    events: int
    seconds: float


def rebuild(
    settings: LogSettings,
    *,
    store: ClickHouse,
    producer: EventProducer,
    progress: Progress | None = None,
    batch: int = PROJECTOR_BATCH,
) -> RebuildReport:
    """Replay the whole log into fresh tables and swap them in for the live ones."""
    began = time.monotonic()
    generation = current_generation(store) + 1
    fresh = store.with_database(f"{store.database}_rebuild")
    fresh.command("DROP DATABASE IF EXISTS {db}")
    fresh.migrate()
    lag = Lag(settings, group=broker_group(settings, generation))
    try:
        ends = lag.ends()
        total = sum(high - low for low, high in ends.values())
        projector = Projector(
            settings, store=fresh, producer=producer, batch=batch, generation=generation
        )
        projector.start()
        try:
            _wait_for_end(lag, ends, projector, progress=progress, total=total)
        finally:
            projector.stop()
    finally:
        lag.close()
    _swap(store, fresh)
    store.insert(
        "projector_generation",
        [(generation, datetime.now(UTC))],
        columns=("generation", "created_at"),
    )
    fresh.command("DROP DATABASE IF EXISTS {db}")
    report = RebuildReport(generation=generation, events=total, seconds=time.monotonic() - began)
    log.info("projections rebuilt", **report.__dict__)
    return report


def _wait_for_end(
    lag: Lag,
    ends: dict[tuple[str, int], tuple[int, int]],
    projector: Projector,
    *,
    progress: Progress | None,
    total: int,
) -> None:
    while True:
        behind = lag.behind(ends)
        if progress is not None:
            progress(total - behind, total)
        if behind <= 0:
            return
        if not projector.running():
            raise RebuildFailed("the replaying projector stopped; see the log for why")
        time.sleep(0.2)


def _swap(live: ClickHouse, fresh: ClickHouse) -> None:
    for table in PROJECTION_TABLES:
        live.command(f"EXCHANGE TABLES {{db}}.{table} AND {fresh.database}.{table}")
