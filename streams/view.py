"""Each worker's own view of the config and operations topics, read whole from the beginning.

Every worker needs all of the configuration, whatever partitions it owns, so the view is a
`TopicFollower`: it folds the config topic into a `Configuration`, `StudyCompletionForced` from
the operations topic into the moment each study was forced (replaying it is harmless: a request
only forces buckets that existed before it), and `QueueSuspended`/`QueueResumed` into the names
of the queues suspended now (executors pause their lanes while theirs is). `ready` is set once the
view holds everything that was on both topics when it started, so no decision is taken with a
half-read configuration.

Errors: `ConfigUnavailable` (transient): the config topic could not be read in time.
"""

from collections.abc import Sequence
from datetime import datetime

from infra.catalogue import (
    ConfigChanged,
    QueueResumed,
    QueueSuspended,
    StudyCompletionForced,
)
from infra.events import Envelope
from infra.follow import TopicFollower
from infra.log import LogUnavailable
from infra.settings import LogSettings
from infra.topics import Topic, topic_name
from streams.config import Configuration, fold

_WANTED_OPERATIONS = frozenset({StudyCompletionForced.TYPE, QueueSuspended.TYPE, QueueResumed.TYPE})


class ConfigUnavailable(LogUnavailable):
    """The config topic could not be read in time."""


class ConfigView(TopicFollower):
    """The configuration, forced study completions and suspended queues, kept current."""

    def __init__(self, settings: LogSettings, *, extra_topics: Sequence[Topic] = ()) -> None:
        self.config = Configuration()
        self.forced: dict[str, datetime] = {}
        self.suspended_queues: frozenset[str] = frozenset()
        self._operations = topic_name(Topic.OPERATIONS, prefix=settings.topic_prefix)
        topics = (Topic.CONFIG, Topic.OPERATIONS, *extra_topics)
        super().__init__(settings, topics, name="config-view")

    def wants(self, topic: str, type_name: str | None) -> bool:
        return topic != self._operations or type_name in _WANTED_OPERATIONS

    def apply(self, envelope: Envelope) -> None:
        payload = envelope.payload
        if isinstance(payload, ConfigChanged):
            self.config = fold(self.config, payload)
        elif isinstance(payload, StudyCompletionForced):
            self.forced[payload.study_uid] = envelope.occurred_at
        elif isinstance(payload, QueueSuspended):
            self.suspended_queues = self.suspended_queues | {payload.queue}
        elif isinstance(payload, QueueResumed):
            self.suspended_queues = self.suspended_queues - {payload.queue}


def read_configuration(settings: LogSettings, *, timeout_s: float = 30) -> Configuration:
    """The configuration as the log holds it now (for command-line tools)."""
    view = ConfigView(settings).start()
    try:
        if not view.ready.wait(timeout_s):
            raise ConfigUnavailable(f"the config topic could not be read in {timeout_s} s")
        return view.config
    finally:
        view.stop()
