"""The projector: consumes every topic of the log and keeps the projection tables up to date.

It is one `infra.log.ConsumerLoop`: `handle_record` only buffers an event with its position,
`flush` folds and writes the batch (`BatchWriter.apply`), and the loop stores offsets only after
the flush returned, so an event is never marked done before its rows are stored. Dead letters
are not consumed: they are copies of records already on the log.

The consumer group carries the tables' *generation* (`<prefix>projections.g<N>`). A rebuild
fills fresh tables under a new group, swaps them in and bumps the generation; a running
projector notices at its next flush, gives its batch up (offsets not stored), forgets its cache
and carries on under the new group, whose offsets the rebuild left exactly where the new tables end.

Runs as a thread of another process (`start()`/`stop()`, the UI in embedded chDB mode, where
only one process may open the folder) or in the foreground (`talaria projections run`).
"""

import threading
import time

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import Counter, Gauge

from infra.errors import TransientError
from infra.events import Envelope
from infra.log import ConsumerLoop, EventProducer, Position, client_config
from infra.settings import LogSettings
from infra.topics import Topic, topic_name
from projections.errors import GenerationChanged, LagUnknown
from projections.settings import PROJECTOR_BATCH
from projections.store import ClickHouse
from projections.writer import BatchWriter, Record

log = structlog.get_logger(__name__)

# Heartbeats matter only while fresh (the UI reads them from their topic), not in history.
PROJECTED_TOPICS: tuple[Topic, ...] = tuple(
    t for t in Topic if t not in (Topic.DEADLETTER, Topic.HEARTBEATS)
)

EVENTS_PROJECTED = Counter("talaria_projector_events", "Events folded into the projections.")
LAG = Gauge("talaria_projector_lag_events", "Events on the log the projector has not stored yet.")
_LAG_EVERY_S = 10.0
# While a series streams in, its events come one by one: gathering them for a second writes
# them in one insert per table and fetches them at once, where a batch per arrival (or per
# 0.2 s) costs the broker and this process (and the receiver beside them, on one host) more
# CPU than the rows do. The projections lag the log by about that second.
_GATHER_S = 1.0


def group_id(generation: int) -> str:
    """The consumer group of the projector writing tables of `generation`, as `ConsumerLoop`
    takes it (the loop adds the installation's prefix)."""
    return f"projections.g{generation}"


def broker_group(settings: LogSettings, generation: int) -> str:
    """The same group as the broker knows it (with the installation's prefix)."""
    return f"{settings.topic_prefix}{group_id(generation)}"


def current_generation(store: ClickHouse) -> int:
    """The generation of the tables in `store` (0 before any rebuild)."""
    rows = store.select_for_write("SELECT max(generation) FROM {db}.projector_generation").rows
    return int(rows[0][0]) if rows else 0


class _Halt(TransientError):
    """Makes the consumer loop give a batch up (offsets not stored) once a stop is requested."""


class Lag:
    """How far a consumer group is behind the end of the projected topics."""

    def __init__(self, settings: LogSettings, *, group: str) -> None:
        self._consumer = Consumer({**client_config(settings), "group.id": group})
        self._names = [topic_name(t, prefix=settings.topic_prefix) for t in PROJECTED_TOPICS]

    def partitions(self) -> list[TopicPartition]:
        metadata = self._consumer.list_topics(timeout=10)
        return [
            TopicPartition(name, partition)
            for name in self._names
            if name in metadata.topics
            for partition in metadata.topics[name].partitions
        ]

    def ends(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(low, high) watermark per (topic, partition)."""
        try:
            return {
                (tp.topic, tp.partition): self._consumer.get_watermark_offsets(tp, timeout=10)
                for tp in self.partitions()
            }
        except KafkaException as error:
            raise LagUnknown(f"cannot read the log's end offsets: {error}") from error

    def committed(self) -> dict[tuple[str, int], int]:
        """The group's committed offset per partition (-1001 where it has none)."""
        try:
            return {
                (tp.topic, tp.partition): tp.offset
                for tp in self._consumer.committed(self.partitions(), timeout=10)
            }
        except KafkaException as error:
            raise LagUnknown(f"cannot read the committed offsets: {error}") from error

    def behind(self, ends: dict[tuple[str, int], tuple[int, int]] | None = None) -> int:
        """Events between the group's committed offsets and `ends` (now, if not given)."""
        ends = ends if ends is not None else self.ends()
        committed = self.committed()
        return sum(high - max(low, committed.get(key, low)) for key, (low, high) in ends.items())

    def close(self) -> None:
        self._consumer.close()


class Projector:
    """Keeps the projection tables in `store` equal to the fold of the log."""

    def __init__(
        self,
        settings: LogSettings,
        *,
        store: ClickHouse,
        producer: EventProducer,
        batch: int = PROJECTOR_BATCH,
        cache_rows: int = 200_000,
        generation: int | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._producer = producer
        self._batch = batch
        self._writer = BatchWriter(store, cache_rows=cache_rows)
        self._pinned_generation = generation
        self._generation = 0
        self._buffer: list[Record] = []
        self._stop = threading.Event()
        self._loop: ConsumerLoop | None = None
        self._thread: threading.Thread | None = None
        self._lag_checked = 0.0
        self._failure: Exception | None = None
        self._lag: Lag | None = None

    @property
    def generation(self) -> int:
        return self._generation

    def run(self) -> None:
        """Consume until `stop()`; restart under the new group whenever a rebuild swapped in."""
        while not self._stop.is_set():
            self._generation = self._pinned_generation or current_generation(self._store)
            self._buffer.clear()
            self._failure = None
            self._loop = ConsumerLoop(
                self._settings,
                group_id=group_id(self._generation),
                topics=PROJECTED_TOPICS,
                handle_record=self._handle_record,
                flush=self._flush,
                producer=self._producer,
                max_batch=self._batch,
                gather_s=_GATHER_S,
            )
            if self._stop.is_set():
                break
            log.info("projector consuming", generation=self._generation)
            self._loop.run()
            if isinstance(self._failure, GenerationChanged):
                log.info("projection tables were rebuilt; following the new generation")
                self._writer.forget()
                self._lag = None
            elif self._failure is not None:
                raise self._failure
        if self._lag is not None:
            self._lag.close()

    def start(self) -> None:
        """Run on a daemon thread of this process (the UI's, in embedded mode)."""
        self._thread = threading.Thread(target=self.run, name="projector", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Finish the batch in hand, commit, leave the group."""
        self._stop.set()
        if self._loop is not None:
            self._loop.stop_requested.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _handle_record(self, envelope: Envelope, position: Position) -> None:
        self._buffer.append(
            Record(
                envelope=envelope,
                topic=position.topic.removeprefix(self._settings.topic_prefix),
                partition=position.partition,
                offset=position.offset,
            )
        )

    def _flush(self) -> None:
        try:
            if self._pinned_generation is None and (
                current_generation(self._store) != self._generation
            ):
                raise GenerationChanged("projection tables were swapped by a rebuild")
            self._writer.apply(self._buffer)
        except TransientError:
            raise  # the loop retries the flush with the same buffer
        except Exception as error:
            # Stop without storing this batch's offsets; `run` decides what happens next.
            self._failure = error
            self._buffer = []
            assert self._loop is not None
            self._loop.stop_requested.set()
            raise _Halt("projector stopping") from error
        EVENTS_PROJECTED.inc(len(self._buffer))
        self._buffer = []
        self._measure_lag()

    def _measure_lag(self) -> None:
        if time.monotonic() - self._lag_checked < _LAG_EVERY_S:
            return
        self._lag_checked = time.monotonic()
        if self._lag is None:
            self._lag = Lag(self._settings, group=broker_group(self._settings, self._generation))
        try:
            LAG.set(self._lag.behind())
        except LagUnknown as error:
            log.warning("lag not measured", error=str(error))
