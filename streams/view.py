"""Each worker's own view of the config and operations topics, read whole from the beginning.

Every worker needs all of the configuration, whatever partitions it owns, so the config topic is
not consumed in a group: a background thread assigns itself the whole topic (no group offsets)
and folds it into a `Configuration`. The same thread folds `StudyCompletionForced` from the
operations topic into the moment each study was forced; replaying it is harmless (a request only
forces buckets that existed before it); and `QueueSuspended`/`QueueResumed` into the names of the
queues suspended now (executors pause their lanes while theirs is). `ready` is set once the view
holds everything that was on both topics when it started, so no decision is taken with a half-read
configuration.

Errors: `ConfigUnavailable` (transient): the config topic could not be read in time.
"""

import threading
import time
import uuid
from datetime import datetime

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from infra.catalogue import (
    CATALOGUE,
    ConfigChanged,
    QueueResumed,
    QueueSuspended,
    StudyCompletionForced,
)
from infra.errors import TransientError
from infra.events import Headers, UndecodableEvent, decode, header_value
from infra.log import client_config, end_offset
from infra.settings import LogSettings
from infra.topics import Topic, topic_name
from streams.config import Configuration, fold

log = structlog.get_logger(__name__)

_WANTED_OPERATIONS = frozenset({StudyCompletionForced.TYPE, QueueSuspended.TYPE, QueueResumed.TYPE})


class ConfigUnavailable(TransientError):
    """The config topic could not be read in time."""


class ConfigView:
    """The configuration and forced study completions, kept current by a reader thread."""

    def __init__(self, settings: LogSettings) -> None:
        self.config = Configuration()
        self.forced: dict[str, datetime] = {}
        self.suspended_queues: frozenset[str] = frozenset()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                **client_config(settings),
                "group.id": f"{settings.topic_prefix}config-view-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        self._partitions = [
            TopicPartition(topic_name(topic, prefix=settings.topic_prefix), 0, OFFSET_BEGINNING)
            for topic in (Topic.CONFIG, Topic.OPERATIONS)
        ]
        self._remaining: dict[str, int] = {}
        self._read_up_to: dict[str, int] = {}  # next offset per topic, as folded
        self._settings = settings
        self._thread = threading.Thread(target=self._run, name="config-view", daemon=True)

    def start(self) -> "ConfigView":
        self._remaining = {
            partition.topic: end_offset(self._consumer, partition) for partition in self._partitions
        }
        self._remaining = {topic: end for topic, end in self._remaining.items() if end > 0}
        if not self._remaining:
            self.ready.set()
        self._consumer.assign(self._partitions)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(num_messages=500, timeout=0.1):
                error = message.error()
                if error is None:
                    self._fold(message)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("config view read failed", error=error.str())

    def _fold(self, message: Message) -> None:
        self._note_position(message)
        headers: Headers = [(str(pair[0]), pair[1]) for pair in message.headers() or []]
        type_name = header_value(headers, "type")
        if message.topic() != self._partitions[0].topic and type_name not in _WANTED_OPERATIONS:
            return
        try:
            envelope = decode(message.value(), headers, CATALOGUE)
        except UndecodableEvent as error:
            log.warning("undecodable config record skipped", error=str(error))
            return
        payload = envelope.payload
        if isinstance(payload, ConfigChanged):
            self.config = fold(self.config, payload)
        elif isinstance(payload, StudyCompletionForced):
            self.forced[payload.study_uid] = envelope.occurred_at
        elif isinstance(payload, QueueSuspended):
            self.suspended_queues = self.suspended_queues | {payload.queue}
        elif isinstance(payload, QueueResumed):
            self.suspended_queues = self.suspended_queues - {payload.queue}

    def catch_up(self, *, timeout_s: float = 10.0) -> None:
        """Wait until the view holds everything on its topics now: an operator's action (a
        retry, say) must see the configuration change published just before it."""
        probe = Consumer({**client_config(self._settings), "group.id": "config-view-probe"})
        try:
            ends = {p.topic: end_offset(probe, p) for p in self._partitions}
        finally:
            probe.close()
        deadline = time.monotonic() + timeout_s
        while any(self._read_up_to.get(topic, 0) < end for topic, end in ends.items()):
            if time.monotonic() > deadline:
                raise ConfigUnavailable(f"the config view did not catch up within {timeout_s} s")
            time.sleep(0.02)

    def _note_position(self, message: Message) -> None:
        topic = message.topic() or ""
        self._read_up_to[topic] = (message.offset() or 0) + 1
        end = self._remaining.get(topic)
        if end is not None and (message.offset() or 0) + 1 >= end:
            del self._remaining[topic]
            if not self._remaining:
                self.ready.set()


def read_configuration(settings: LogSettings, *, timeout_s: float = 30) -> Configuration:
    """The configuration as the log holds it now (for command-line tools)."""
    view = ConfigView(settings).start()
    try:
        if not view.ready.wait(timeout_s):
            raise ConfigUnavailable(f"the config topic could not be read in {timeout_s} s")
        return view.config
    finally:
        view.stop()
