"""Create or check the topic catalogue on a Kafka cluster, idempotently."""

import time
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from infra.errors import PermanentError, TransientError
from infra.log import client_config
from infra.settings import LogSettings
from infra.topics import CATALOGUE, TopicSpec, topic_name

_TIMEOUT_S = 30


class TopicSetupFailed(TransientError):
    """The cluster did not answer or refused to create or change a topic."""


class TopicLayoutMismatch(PermanentError):
    """An existing topic has fewer partitions than the catalogue and growing was not allowed."""


class TopicState(StrEnum):
    CREATED = "created"
    OK = "ok"
    RECONFIGURED = "reconfigured"
    GROWN = "grown"


@dataclass(frozen=True, kw_only=True)
class TopicReport:
    name: str
    state: TopicState
    partitions: int


def ensure_topics(settings: LogSettings, *, grow_partitions: bool = False) -> list[TopicReport]:
    """Make every catalogue topic exist with its partitions and retention.

    Missing topics are created; retention drift is corrected. An existing topic with fewer
    partitions is only grown when asked, because growing moves keys to other partitions (a
    study in flight could be split); otherwise `TopicLayoutMismatch` names it.
    """
    admin = AdminClient(client_config(settings))
    try:
        existing = admin.list_topics(timeout=_TIMEOUT_S).topics
    except KafkaException as error:
        raise TopicSetupFailed(f"cannot read cluster metadata: {error}") from error
    wanted = {topic_name(spec.topic, prefix=settings.topic_prefix): spec for spec in CATALOGUE}
    created = _create_missing(
        admin,
        specs={name: spec for name, spec in wanted.items() if name not in existing},
        retention_hours=settings.log_retention_hours,
    )
    _wait_for_leaders(admin, created)
    return [
        TopicReport(name=name, state=TopicState.CREATED, partitions=spec.partitions)
        if name in created
        else _check(
            admin,
            name=name,
            spec=spec,
            config=spec.config(retention_hours=settings.log_retention_hours),
            grow_partitions=grow_partitions,
        )
        for name, spec in wanted.items()
    ]


def _create_missing(
    admin: AdminClient, *, specs: dict[str, TopicSpec], retention_hours: int
) -> set[str]:
    """Create the catalogue topics of `specs` in one request; the names created."""
    return _create(
        admin,
        [
            NewTopic(
                name,
                num_partitions=spec.partitions,
                replication_factor=-1,
                config=spec.config(retention_hours=retention_hours),
            )
            for name, spec in specs.items()
        ],
    )


def _create(admin: AdminClient, topics: list[NewTopic]) -> set[str]:
    """Create topics in one request; the names created (metadata can lag a creation, so a
    topic that turns out to exist already is left to the caller)."""
    if not topics:
        return set()
    created = set()
    for name, future in admin.create_topics(topics).items():
        try:
            future.result(timeout=_TIMEOUT_S)
            created.add(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicSetupFailed(f"topic {name}: {error.args[0].str()}") from error
    return created


def ensure_compacted(
    settings: LogSettings, names: list[str], *, partitions: int, replication_factor: int
) -> None:
    """Make compacted topics (the streams worker's table changelogs) exist, with leaders."""
    admin = AdminClient(client_config(settings))
    config = {"cleanup.policy": "compact"}
    created = _create(
        admin,
        [
            NewTopic(name, partitions, replication_factor=replication_factor, config=config)
            for name in names
        ],
    )
    _wait_for_leaders(admin, created)


def _check(
    admin: AdminClient,
    *,
    name: str,
    spec: TopicSpec,
    config: dict[str, str],
    grow_partitions: bool,
) -> TopicReport:
    """Compare an existing topic with its spec and correct what may be corrected."""
    partitions = _partition_count(admin, name)
    state = TopicState.OK
    if partitions < spec.partitions:
        if not grow_partitions:
            raise TopicLayoutMismatch(
                f"topic {name} has {partitions} partitions, the catalogue wants "
                f"{spec.partitions}; rerun with --grow-partitions when no study is in flight"
            )
        _wait(admin.create_partitions([NewPartitions(name, spec.partitions)]), name)
        partitions, state = spec.partitions, TopicState.GROWN
    if _reconfigure(admin, name=name, config=config) and state is TopicState.OK:
        state = TopicState.RECONFIGURED
    return TopicReport(name=name, state=state, partitions=partitions)


def _wait_for_leaders(admin: AdminClient, names: set[str]) -> None:
    """Return once every partition of `names` has a leader: a topic is usable only then."""
    deadline = time.monotonic() + _TIMEOUT_S
    waiting = set(names)
    while waiting:
        topics = admin.list_topics(timeout=_TIMEOUT_S).topics
        waiting = {
            name
            for name in waiting
            if name not in topics
            or topics[name].error is not None
            or not topics[name].partitions
            or any(p.leader < 0 for p in topics[name].partitions.values())
        }
        if waiting and time.monotonic() > deadline:
            raise TopicSetupFailed(f"topics without a leader: {', '.join(sorted(waiting))}")
        if waiting:
            time.sleep(0.1)


def _partition_count(admin: AdminClient, name: str) -> int:
    """Partitions of an existing topic, waiting out metadata that lags a recent creation."""
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        try:
            topic = admin.list_topics(name, timeout=_TIMEOUT_S).topics[name]
        except KafkaException as error:
            raise TopicSetupFailed(f"cannot read metadata of {name}: {error}") from error
        if topic.error is None and topic.partitions:
            return len(topic.partitions)
        if time.monotonic() > deadline:
            raise TopicSetupFailed(f"topic {name} has no usable metadata: {topic.error}")
        time.sleep(0.1)


def _reconfigure(admin: AdminClient, *, name: str, config: dict[str, str]) -> bool:
    resource = ConfigResource(ResourceType.TOPIC, name)
    current = _wait(admin.describe_configs([resource]), name)
    drift = {key: value for key, value in config.items() if current[key].value != value}
    if not drift:
        return False
    entries = [
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
        for key, value in drift.items()
    ]
    _wait(
        admin.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)]
        ),
        name,
    )
    return True


def _wait(futures: dict[Any, "Future[Any]"], name: str) -> Any:
    (future,) = futures.values()
    try:
        return future.result(timeout=_TIMEOUT_S)
    except KafkaException as error:
        raise TopicSetupFailed(f"topic {name}: {error.args[0].str()}") from error
