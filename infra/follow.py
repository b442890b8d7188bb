"""Following whole topics from the beginning, outside any consumer group.

Some readers need every event of a topic whatever partition it is on (the configuration, the
cleaner's ledger of series and jobs), so they do not join a consumer group: a background thread
assigns itself every partition from the first offset and hands each wanted event to `apply`.
`ready` is set once the follower holds everything that was on its topics when it started, so
nothing is decided from a half-read log; `catch_up` waits for whatever is on them now.

Errors: `LogUnavailable` (transient): a topic has no partitions to read, or the follower did not
catch up in time.
"""

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Self

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from infra.catalogue import CATALOGUE
from infra.events import Envelope, UndecodableEvent, decode, header_value
from infra.log import LogUnavailable, client_config, end_offset, record_headers
from infra.settings import LogSettings
from infra.topics import Topic, topic_name

log = structlog.get_logger(__name__)

_Position = tuple[str, int]


class TopicFollower(ABC):
    """Reads `topics` whole on a thread and applies the events `wants` accepts, in log order
    within each partition."""

    def __init__(self, settings: LogSettings, topics: Sequence[Topic], *, name: str) -> None:
        self.ready = threading.Event()
        self._settings = settings
        self._name = name
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                **client_config(settings),
                "group.id": f"{settings.topic_prefix}{name}-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        self._partitions = [
            TopicPartition(name, partition, OFFSET_BEGINNING)
            for name in (topic_name(topic, prefix=settings.topic_prefix) for topic in topics)
            for partition in self._partitions_of(name)
        ]
        self._remaining: dict[_Position, int] = {}
        self._read_up_to: dict[_Position, int] = {}  # next offset per partition, as applied
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _partitions_of(self, name: str) -> list[int]:
        metadata = self._consumer.list_topics(name, timeout=30).topics[name]
        if metadata.error is not None or not metadata.partitions:
            self._consumer.close()
            raise LogUnavailable(f"topic {name} cannot be read: {metadata.error}")
        return sorted(metadata.partitions)

    def wants(self, topic: str, type_name: str | None) -> bool:
        """Whether a record of this type on this topic is worth decoding (default: all)."""
        return True

    @abstractmethod
    def apply(self, envelope: Envelope) -> None:
        """Fold one event into the follower's state (called on the reader thread)."""

    def start(self) -> Self:
        ends = self._ends(self._consumer)
        self._remaining = {position: end for position, end in ends.items() if end > 0}
        if not self._remaining:
            self.ready.set()
        self._consumer.assign(self._partitions)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def catch_up(self, *, timeout_s: float = 10.0) -> None:
        """Wait until the follower holds everything on its topics now: an operator's action (a
        retry, say) must see the configuration change published just before it."""
        probe = Consumer({**client_config(self._settings), "group.id": f"{self._name}-probe"})
        try:
            ends = self._ends(probe)
        finally:
            probe.close()
        deadline = time.monotonic() + timeout_s
        while any(self._read_up_to.get(position, 0) < end for position, end in ends.items()):
            if time.monotonic() > deadline:
                raise LogUnavailable(f"{self._name} did not catch up within {timeout_s} s")
            time.sleep(0.02)

    def _ends(self, consumer: Consumer) -> dict[_Position, int]:
        return {(p.topic, p.partition): end_offset(consumer, p) for p in self._partitions}

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(num_messages=500, timeout=0.1):
                error = message.error()
                if error is None:
                    self._take(message)
                    self._note_position(message)  # after applying: `ready` means applied
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning(
                        "follower could not read the log", follower=self._name, error=error.str()
                    )

    def _take(self, message: Message) -> None:
        headers = record_headers(message)
        if not self.wants(message.topic() or "", header_value(headers, "type")):
            return
        try:
            envelope = decode(message.value(), headers, CATALOGUE)
        except UndecodableEvent as error:
            log.warning("undecodable record skipped", follower=self._name, error=str(error))
            return
        self.apply(envelope)

    def _note_position(self, message: Message) -> None:
        position = (message.topic() or "", message.partition() or 0)
        self._read_up_to[position] = (message.offset() or 0) + 1
        end = self._remaining.get(position)
        if end is not None and self._read_up_to[position] >= end:
            del self._remaining[position]
            if not self._remaining:
                self.ready.set()
