"""The topic catalogue: every topic Talaria uses, its partitions, retention and key.

Names carry a configurable prefix so several installations can share one Kafka cluster.
Keys: instance and series events by StudyInstanceUID (one study stays on one partition, so
study completion needs no repartition and dispatch order within a study is kept); job events
and query jobs by job id; config events by config key. Config, operations and dead-letter
topics are kept forever: they are the audit trail. Heartbeats matter only while fresh: kept one
hour.
"""

from dataclasses import dataclass
from enum import StrEnum

FOREVER = -1
HOUR_MS = 3_600_000


class Topic(StrEnum):
    """Logical topic names, without the installation's prefix."""

    INSTANCES = "instances"
    SERIES = "series"
    JOBS = "jobs"
    CONFIG = "config"
    OPERATIONS = "operations"
    DEADLETTER = "deadletter"
    PROCESS_URGENT = "commands.process.urgent"
    PROCESS_NORMAL = "commands.process.normal"
    PROCESS_OFFPEAK = "commands.process.offpeak"
    DISPATCH_URGENT = "commands.dispatch.urgent"
    DISPATCH_NORMAL = "commands.dispatch.normal"
    DISPATCH_OFFPEAK = "commands.dispatch.offpeak"
    NOTIFY_URGENT = "commands.notify.urgent"
    NOTIFY_NORMAL = "commands.notify.normal"
    NOTIFY_OFFPEAK = "commands.notify.offpeak"
    QUERY_URGENT = "commands.query.urgent"
    QUERY_NORMAL = "commands.query.normal"
    QUERY_OFFPEAK = "commands.query.offpeak"
    DISPATCH_RETRY = "commands.dispatch.retry"
    NOTIFY_RETRY = "commands.notify.retry"
    HEARTBEATS = "heartbeats"


class Lane(StrEnum):
    """Priority lane of a command; each lane is its own topic."""

    URGENT = "urgent"
    NORMAL = "normal"
    OFFPEAK = "offpeak"


class CommandKind(StrEnum):
    PROCESS = "process"
    DISPATCH = "dispatch"
    NOTIFY = "notify"
    QUERY = "query"


def retry_topic(kind: CommandKind) -> Topic:
    """The topic where scheduled retries of `kind` wait, so that they hold up no lane."""
    return Topic(f"commands.{kind.value}.retry")


def command_topic(kind: CommandKind, lane: Lane) -> Topic:
    """The topic that carries commands of `kind` in `lane`."""
    return Topic(f"commands.{kind.value}.{lane.value}")


@dataclass(frozen=True, kw_only=True)
class TopicSpec:
    """How one topic is laid out on the broker."""

    topic: Topic
    partitions: int
    keyed_by: str
    keep_forever: bool
    own_retention_hours: int | None = None  # instead of the installation's log retention

    def config(self, *, retention_hours: int) -> dict[str, str]:
        hours = self.own_retention_hours or retention_hours
        retention_ms = FOREVER if self.keep_forever else hours * HOUR_MS
        return {"cleanup.policy": "delete", "retention.ms": str(retention_ms)}


def _spec(
    topic: Topic,
    partitions: int,
    keyed_by: str,
    *,
    keep_forever: bool = False,
    own_retention_hours: int | None = None,
) -> TopicSpec:
    return TopicSpec(
        topic=topic,
        partitions=partitions,
        keyed_by=keyed_by,
        keep_forever=keep_forever,
        own_retention_hours=own_retention_hours,
    )


HEARTBEAT_RETENTION_HOURS = 1


CATALOGUE: tuple[TopicSpec, ...] = (
    _spec(Topic.INSTANCES, 6, "StudyInstanceUID"),
    _spec(Topic.SERIES, 6, "StudyInstanceUID"),
    _spec(Topic.JOBS, 6, "job id"),
    _spec(Topic.CONFIG, 1, "config key", keep_forever=True),
    _spec(Topic.OPERATIONS, 1, "subject", keep_forever=True),
    _spec(Topic.DEADLETTER, 1, "original key", keep_forever=True),
    _spec(Topic.DISPATCH_RETRY, 6, "StudyInstanceUID"),
    _spec(Topic.NOTIFY_RETRY, 6, "StudyInstanceUID"),
    _spec(Topic.HEARTBEATS, 1, "service:instance", own_retention_hours=HEARTBEAT_RETENTION_HOURS),
    *(
        _spec(
            command_topic(kind, lane),
            6,
            "job id" if kind is CommandKind.QUERY else "StudyInstanceUID",
        )
        for kind in CommandKind
        for lane in Lane
    ),
)


def topic_name(topic: Topic, *, prefix: str) -> str:
    """The broker-side name of `topic` in an installation using `prefix`."""
    return f"{prefix}{topic.value}"
