"""What the overview and the readiness probe report: reachability, disk space, activity and
the health of every service instance from its latest heartbeat.

The checks are what this process can see itself: the broker, ClickHouse, the embedded
projector, the config view and the blob store's disk. Every other service says it is alive on
the heartbeats topic; an instance is stale when its latest heartbeat is older than
`STALE_AFTER_INTERVALS` of its own intervals.
"""

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from infra.errors import TalariaError
from infra.heartbeat import STALE_AFTER_INTERVALS
from infra.log import client_config
from projections.queries import Row
from ui.services import Services

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, kw_only=True)
class DiskSpace:
    where: str
    free_bytes: int | None
    total_bytes: int | None


@dataclass(frozen=True, kw_only=True)
class ServiceHealth:
    service: str
    instance: str
    started_at: datetime
    last_seen: datetime
    age_s: float
    healthy: bool
    status: str


def service_health(services: Services) -> list[ServiceHealth]:
    """Every service instance that sent a heartbeat, by service and instance."""
    now = datetime.now(UTC)
    latest = services.view.heartbeats
    health = []
    for key in sorted(latest):
        beat, seen = latest[key]
        age_s = max((now - seen).total_seconds(), 0.0)
        health.append(
            ServiceHealth(
                service=beat.service,
                instance=beat.instance,
                started_at=beat.started_at,
                last_seen=seen,
                age_s=round(age_s, 1),
                healthy=age_s <= STALE_AFTER_INTERVALS * beat.interval_s,
                status=beat.status,
            )
        )
    return health


def broker_check(services: Services) -> Check:
    try:
        admin = AdminClient(client_config(services.settings))
        topics = admin.list_topics(timeout=PROBE_TIMEOUT_S).topics
    except KafkaException as error:
        return Check(name="Kafka broker", ok=False, detail=str(error))
    return Check(name="Kafka broker", ok=True, detail=f"{len(topics)} topics")


def clickhouse_check(services: Services) -> Check:
    try:
        services.store.select("SELECT 1")
    except TalariaError as error:
        return Check(name="ClickHouse", ok=False, detail=str(error))
    return Check(name="ClickHouse", ok=True, detail=services.store.target.describe())


def checks(services: Services) -> list[Check]:
    """Every check the overview shows, readiness first."""
    projector = services.projector
    return [
        broker_check(services),
        clickhouse_check(services),
        Check(
            name="Projector (in this process)",
            ok=projector is None or projector.running(),
            detail="not embedded"
            if projector is None
            else "running"
            if projector.running()
            else "stopped",
        ),
        Check(
            name="Configuration view",
            ok=services.view.ready.is_set(),
            detail=f"{len(services.view.config.rules)} rules, "
            f"{len(services.view.config.targets)} targets",
        ),
    ]


def disk_space(services: Services) -> DiskSpace:
    settings = services.settings
    if settings.blob_store != "folder":
        return DiskSpace(where=f"S3 bucket {settings.s3_bucket}", free_bytes=None, total_bytes=None)
    try:
        usage = shutil.disk_usage(settings.blob_dir)
    except OSError:
        return DiskSpace(where=str(settings.blob_dir), free_bytes=None, total_bytes=None)
    return DiskSpace(where=str(settings.blob_dir), free_bytes=usage.free, total_bytes=usage.total)


def activity(services: Services, *, hours: int = 24) -> list[Row]:
    """Per hour of the last `hours`: series received, dispatches done, jobs failed for good."""
    until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    since = until - timedelta(hours=hours)
    counts: dict[datetime, dict[str, Any]] = {
        since + timedelta(hours=h): {"received": 0, "dispatched": 0, "failed": 0}
        for h in range(hours)
    }
    rows = services.store.select(
        "SELECT toStartOfHour(first_received_at) AS hour, 'received' AS what, count() AS n "
        "FROM {db}.series FINAL WHERE first_received_at >= {since:DateTime64(6, 'UTC')} "
        "GROUP BY hour "
        "UNION ALL SELECT toStartOfHour(finished_at) AS hour, "
        "if(state = 'failed', 'failed', 'dispatched') AS what, count() AS n "
        "FROM {db}.jobs FINAL WHERE finished_at >= {since:DateTime64(6, 'UTC')} AND "
        "(state = 'failed' OR (kind = 'dispatch' AND state = 'succeeded')) GROUP BY hour, what",
        {"since": since},
    ).rows
    for hour, what, number in rows:
        moment = hour if hour.tzinfo else hour.replace(tzinfo=UTC)
        if moment in counts:
            counts[moment][what] = int(number)
    return [{"hour": hour, **values} for hour, values in counts.items()]
