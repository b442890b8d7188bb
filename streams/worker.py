"""The streams worker: a Faust app that completes series and studies and takes the decisions.

Flow. One agent folds the `instances` and `series` topics (co-partitioned: both keyed by
StudyInstanceUID with the same partition count and the same partitioner) into three tables with
changelogs: `studies` (a `StudyRecord` per study), `instances` (the blob of each instance of a
series still pending) and `parked` (completed series waiting for a study-level rule). A timer
asks every study on a live partition what is `due` and publishes the `SeriesCompleted` or
`StudyCompleted`; the agent folds that fact when it comes back off the log, and only then
decides (`decide_series` / `decide_study`) and publishes `RulesEvaluated` and the commands. So
every state change is the fold of a fact on the log, and a completion is decided exactly when
its fact is folded.

Interop with our envelopes. Faust consumes raw bytes (`value_serializer="raw"`) which
`infra.events.decode` turns into envelopes; everything is published with
`infra.log.EventProducer` (confluent-kafka), never with Faust's aiokafka producer: the same
producer as every other service means the same partitioner (librdkafka's CRC32 of the study UID,
where aiokafka would use murmur2), so our facts land on the partition of the study's instances,
which the tables' co-partitioning needs; and each publish waits for the broker's ack (idempotent,
acks=all) before the agent moves on, so Faust never commits past an unpublished decision.

Crashes. Tables are restored from their changelogs (Faust flushes them before it commits source
offsets), and the events after the committed offsets are folded again, idempotently: an instance
at or below the offset its series' completion included is a replay; a completion already folded
is recognised by its id; re-deciding a completion yields the same job ids. A partition is `live`
only after the agent has folded everything that was on both topics when it was assigned, so a
restarted worker never completes a series whose completion is still waiting on the log.

Errors: none of its own; undecodable records go to the dead-letter topic (see `infra.log`).
"""

import asyncio
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import structlog
from confluent_kafka import Consumer, TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import Producer as FaustProducer
from faust.transport.drivers.aiokafka import Transport as FaustTransport
from faust.types import TP, ProducerT, TransportT
from pydantic import Field

from infra.admin import ensure_compacted
from infra.blobstore import open_blob_store
from infra.catalogue import (
    CATALOGUE,
    BlobReference,
    Command,
    InstanceReceived,
    RulesEvaluated,
    SeriesCompleted,
    SeriesDiscarded,
    StudyCompleted,
)
from infra.events import Envelope, Headers, Payload, UndecodableEvent, decode
from infra.heartbeat import Heartbeat
from infra.log import ConsumerLoop, DeadLetter, EventProducer, client_config, record_headers
from infra.settings import BlobSettings, LogSettings
from infra.topics import CATALOGUE as TOPICS
from infra.topics import Topic, topic_name
from streams.completion import (
    SeriesDue,
    StudyRecord,
    admit_instance,
    due,
    record_rules_evaluated,
    record_series_completed,
    record_study_completed,
    series_completed,
    study_completed,
)
from streams.decisions import decide_series, decide_study, subject_of
from streams.reprocess import Reprocessor
from streams.view import ConfigView

log = structlog.get_logger(__name__)

METADATA_MAX_AGE_MS = 10_000
FETCH_GATHER_MS = 100
FETCH_MIN_BYTES = 1 << 20
GAP_READ_TIMEOUT_S = 30.0
PARTITIONS = next(spec.partitions for spec in TOPICS if spec.topic is Topic.INSTANCES)


class StreamsSettings(LogSettings, BlobSettings):
    """Settings of the streams worker (`TALARIA_STREAMS_*`, plus the log settings)."""

    streams_tick_s: float = Field(default=0.2, gt=0, le=1, description="Completion timer period.")
    streams_web_port: int = Field(
        default=0, ge=0, le=65535, description="Faust's web server on 127.0.0.1; 0 = off."
    )
    streams_replication_factor: int = Field(default=1, ge=1, description="Of the changelogs.")
    streams_log_level: str = Field(default="WARNING", description="Faust's log level.")
    streams_retire_after_s: float = Field(
        default=86_400, gt=0, description="Idle study records are forgotten after this long."
    )


def _headers(message: faust.types.Message) -> Headers:
    headers = message.headers or []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(key), value) for key, value in pairs]


def _instance_key(series_uid: str, blob_key: str) -> str:
    return f"{series_uid}\n{blob_key}"


@dataclass(frozen=True)
class Record:
    """One record of a source topic, as Faust delivered it or as read past Faust."""

    tp: TP
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    @classmethod
    def of(cls, message: faust.types.Message) -> "Record":
        return cls(message.tp, message.offset, message.key, message.value, _headers(message))


def read_range(consumer: Consumer, tp: TP, start: int, end: int) -> list[Record]:
    """The records of `tp` from offset `start` up to (without) `end`, read with `consumer`
    (assigned to `tp` for the call); RuntimeError if the broker does not give them in time."""
    records: list[Record] = []
    consumer.assign([TopicPartition(tp.topic, tp.partition, start)])
    deadline = time.monotonic() + GAP_READ_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(end - start, timeout=1.0):
                offset = message.offset()
                if message.error() is not None or offset is None:
                    continue
                if offset < end:
                    records.append(
                        Record(tp, offset, message.key(), message.value(), record_headers(message))
                    )
                if offset >= end - 1:
                    return records
    finally:
        consumer.unassign()
    raise RuntimeError(f"offsets {start}-{end - 1} of {tp.topic}[{tp.partition}] not readable")


class Completions:
    """The tables, the fold and the completion timer of one worker."""

    def __init__(
        self,
        app: faust.App,
        *,
        settings: StreamsSettings,
        view: ConfigView,
        producer: EventProducer,
        source: str,
    ) -> None:
        self._app = app
        self._settings = settings
        self._view = view
        self._producer = producer
        self._source = source
        self._topics = {
            topic: topic_name(topic, prefix=settings.topic_prefix)
            for topic in (Topic.INSTANCES, Topic.SERIES, Topic.DEADLETTER)
        }
        self.studies = app.Table("studies", partitions=PARTITIONS)
        self.instances = app.Table("instances", partitions=PARTITIONS)
        self.parked = app.Table("parked", partitions=PARTITIONS)
        self.instances.on_recover(self._rebuild_index)
        self._index: dict[str, set[str]] = {}  # series UID -> keys of its pending instances
        self._parsed: dict[str, tuple[object, StudyRecord]] = {}
        self._folded: dict[TP, int] = {}  # next offset to fold
        self._targets: dict[int, dict[TP, int]] = {}  # what an assigned partition must fold
        self._live: set[int] = set()
        self._in_flight: dict[tuple[str, str], int] = {}
        self._retired_at: dict[int, datetime] = {}
        self._offsets = Consumer({**client_config(settings), "group.id": app.conf.id})
        self._gaps = Consumer(
            {
                **client_config(settings),
                "group.id": app.conf.id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",  # a gap partly gone to retention: read the rest
            }
        )

    # --- the fold ------------------------------------------------------------------------

    async def fold(self, event: faust.EventT[bytes]) -> None:
        """Fold one record of `instances` or `series`, after any record of its partition that
        Faust skipped; decide the completions among them.

        Faust's consumer can move past records without delivering them (seen when the broker
        restarted while the group rebalanced) and its commit then counts them as a gap, done;
        those records are read here directly and folded first."""
        record = Record.of(event.message)
        expected = self._folded.get(record.tp)
        if expected is None:
            # New to this worker (started, or assigned in a rebalance): the skip can happen on
            # its first delivery too, so the fold starts where the group committed.
            committed = (await self._committed([record.tp])).get(record.tp, -1)
            expected = committed if committed >= 0 else record.offset
        if record.offset > expected:
            skipped = await asyncio.to_thread(
                read_range, self._gaps, record.tp, expected, record.offset
            )
            log.warning(
                "folding records the consumer skipped",
                topic=record.tp.topic,
                partition=record.tp.partition,
                offsets=[r.offset for r in skipped],
            )
            for earlier in skipped:
                await self._fold(earlier)
        await self._fold(record)

    async def _fold(self, record: Record) -> None:
        self._folded[record.tp] = record.offset + 1
        partition = record.tp.partition
        try:
            envelope = decode(record.value, record.headers, CATALOGUE)
        except UndecodableEvent as error:
            await self._dead_letter(record, reason=f"undecodable: {error}")
            return
        payload = envelope.payload
        at = envelope.occurred_at
        if isinstance(payload, InstanceReceived):
            self._admit(payload, partition=partition, offset=record.offset, at=at)
        elif isinstance(payload, SeriesCompleted):
            await self._series_completed(envelope, payload, partition=partition)
        elif isinstance(payload, RulesEvaluated):
            self._update(payload.study_uid, lambda r: record_rules_evaluated(r, payload, at=at))
        elif isinstance(payload, StudyCompleted):
            await self._study_completed(envelope, payload)
        self._retire_idle(partition, now=at)

    def _admit(
        self, instance: InstanceReceived, *, partition: int, offset: int, at: datetime
    ) -> None:
        record = self._record(instance.study_uid)
        admitted = admit_instance(record, instance, partition=partition, offset=offset, at=at)
        if admitted is None:
            return
        key = _instance_key(instance.series_uid, instance.blob.key)
        self.instances[key] = {"offset": offset, "blob": instance.blob.model_dump(mode="json")}
        self._index.setdefault(instance.series_uid, set()).add(key)
        self._store(admitted)

    async def _series_completed(
        self, envelope: Envelope, completed: SeriesCompleted, *, partition: int
    ) -> None:
        self._in_flight.pop((completed.study_uid, completed.series_uid), None)
        keys = [_instance_key(completed.series_uid, blob.key) for blob in completed.blobs]
        offsets = [self.instances[key]["offset"] for key in keys if key in self.instances]
        for key in keys:
            self.instances.pop(key, None)
        pending = self._index.get(completed.series_uid, set()).difference(keys)
        self._index[completed.series_uid] = pending
        record = self._record(completed.study_uid) or StudyRecord(
            study_uid=completed.study_uid, partition=partition, updated_at=envelope.occurred_at
        )
        self._store(
            record_series_completed(
                record,
                completed,
                through_offset=max(offsets, default=-1),
                still_pending=bool(pending),
                at=envelope.occurred_at,
            )
        )
        decision = decide_series(completed, await self._config())
        if any(isinstance(p, RulesEvaluated) and p.deferred for p in decision):
            self.parked[completed.completion_id] = completed.model_dump(mode="json")
        await self._publish(decision, cause=envelope)

    async def _study_completed(self, envelope: Envelope, completed: StudyCompleted) -> None:
        self._in_flight.pop((completed.study_uid, f"rule:{completed.rule}"), None)
        record = self._update(
            completed.study_uid,
            lambda r: record_study_completed(r, completed, at=envelope.occurred_at),
        )
        still_waiting = {
            entry.completion_id
            for bucket in (record.buckets.values() if record else ())
            for entry in bucket.entries
        }
        for completion_id in set(completed.series_completions) - still_waiting:
            self.parked.pop(completion_id, None)
        await self._publish(decide_study(completed, await self._config()), cause=envelope)

    def _retire_idle(self, partition: int, *, now: datetime) -> None:
        """Forget idle studies of `partition` (at most once a minute; a fold may write tables)."""
        last = self._retired_at.get(partition)
        if last is not None and now - last < timedelta(seconds=60):
            return
        self._retired_at[partition] = now
        horizon = now - timedelta(seconds=self._settings.streams_retire_after_s)
        for study_uid, value in list(self.studies.items()):
            record = self._parse(study_uid, value)
            if record.partition == partition and record.is_idle() and record.updated_at < horizon:
                self.studies.pop(study_uid, None)
                self._parsed.pop(study_uid, None)

    # --- the timer -----------------------------------------------------------------------

    async def tick(self) -> None:
        """Publish every completion that is due on this worker's live partitions."""
        if not self._view.ready.is_set():
            return
        await self._track_assignment()
        now = datetime.now(UTC)
        settings = self._view.config.settings
        for study_uid, value in list(self.studies.items()):
            record = self._parse(study_uid, value)
            if record.partition not in self._live:
                continue
            forced_at = self._view.forced.get(study_uid)
            for owed in due(record, now=now, settings=settings, forced_at=forced_at):
                await self._complete(record, owed)

    async def _complete(self, record: StudyRecord, owed: Any) -> None:
        if isinstance(owed, SeriesDue):
            flight = (record.study_uid, owed.series_uid)
            if flight in self._in_flight:
                return
            blobs = [
                BlobReference.model_validate(self.instances[key]["blob"])
                for key in self._index.get(owed.series_uid, ())
                if key in self.instances
            ]
            if not blobs:
                return
            fact: Payload = series_completed(record, owed.series_uid, blobs)
        else:
            flight = (record.study_uid, f"rule:{owed.rule}")
            if flight in self._in_flight:
                return
            parked = {
                entry.completion_id: SeriesCompleted.model_validate(
                    self.parked[entry.completion_id]
                )
                for entry in record.buckets[owed.rule].entries
                if entry.completion_id in self.parked
            }
            fact = study_completed(record, owed, parked)
        self._in_flight[flight] = record.partition
        log.info(
            "completion due", type=fact.TYPE, study_uid=record.study_uid, subject=subject_of(fact)
        )
        await self._publish([fact])

    async def _track_assignment(self) -> None:
        """Keep `_live`: assigned partitions whose backlog (at assignment) has been folded, here
        or (before a rebalance handed the partition over) by the worker that committed it."""
        instances = self._topics[Topic.INSTANCES]
        assigned = {tp.partition for tp in self._app.consumer.assignment() if tp.topic == instances}
        self.forget(set(self._targets) - assigned)
        if fresh := assigned - set(self._targets):
            self._targets.update(await self._backlogs(fresh))
        waiting = assigned - self._live
        if not waiting:
            return
        # A previous owner may commit past the backlog after we read it; then no record is
        # left for this worker to fold, and only the committed offset says it is done.
        done = await self._committed([tp for p in waiting for tp in self._targets[p]])
        for partition in waiting:
            backlog = self._targets[partition]
            if all(
                max(self._folded.get(tp, 0), done.get(tp, -1)) >= end for tp, end in backlog.items()
            ):
                self._live.add(partition)
                log.info("partition live", partition=partition)

    async def _backlogs(self, partitions: set[int]) -> dict[int, dict[TP, int]]:
        """Per partition: its end offsets (at assignment) beyond what the group committed."""
        tps = [
            TP(self._topics[topic], partition)
            for partition in partitions
            for topic in (Topic.INSTANCES, Topic.SERIES)
        ]
        ends = await self._app.consumer.highwaters(*tps)
        done = await self._committed(tps)
        backlogs: dict[int, dict[TP, int]] = {partition: {} for partition in partitions}
        for tp, end in ends.items():
            if done.get(tp, -1) < end:
                backlogs[tp.partition][tp] = end
        return backlogs

    async def _committed(self, tps: list[TP]) -> dict[TP, int]:
        """The group's committed offsets (the next to fold) of `tps`."""
        if not tps:
            return {}
        committed = await asyncio.to_thread(
            self._offsets.committed, [TopicPartition(tp.topic, tp.partition) for tp in tps], 30
        )
        return {TP(c.topic, c.partition): c.offset for c in committed}

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what this worker knew about partitions it no longer owns."""
        partitions = set(partitions)
        for tp in [tp for tp in self._folded if tp.partition in partitions]:
            del self._folded[tp]  # if it returns, the fold starts where the group committed
        for partition in partitions:
            self._targets.pop(partition, None)
            self._live.discard(partition)
            for flight, owner in list(self._in_flight.items()):
                if owner == partition:
                    del self._in_flight[flight]

    # --- helpers -------------------------------------------------------------------------

    async def _rebuild_index(self) -> None:
        """After a recovery: which pending instances belong to which series."""
        self._index = {}
        for key in list(self.instances.keys()):
            self._index.setdefault(key.split("\n", 1)[0], set()).add(key)

    def _record(self, study_uid: str) -> StudyRecord | None:
        value = self.studies.get(study_uid)
        return None if value is None else self._parse(study_uid, value)

    def _parse(self, study_uid: str, value: object) -> StudyRecord:
        cached = self._parsed.get(study_uid)
        if cached is not None and cached[0] is value:
            return cached[1]
        record = StudyRecord.model_validate(value)
        self._parsed[study_uid] = (value, record)
        return record

    def _store(self, record: StudyRecord) -> None:
        value = record.model_dump(mode="json")
        self.studies[record.study_uid] = value
        # The table keeps this very object: the next fold of the study needs no parsing.
        self._parsed[record.study_uid] = (value, record)

    def _update(self, study_uid: str, change: Any) -> StudyRecord | None:
        record = self._record(study_uid)
        if record is None:
            return None
        changed: StudyRecord = change(record)
        if changed is not record:
            self._store(changed)
        return changed

    async def _config(self) -> Any:
        while not self._view.ready.is_set():
            await asyncio.sleep(0.05)
        return self._view.config

    async def _publish(self, payloads: Sequence[Payload], *, cause: Envelope | None = None) -> None:
        envelopes = [
            cause.caused(payload, source=self._source, subject=subject_of(payload))
            if cause is not None
            else Envelope(payload=payload, source=self._source, subject=subject_of(payload))
            for payload in payloads
        ]
        futures = [self._producer.publish_async(envelope) for envelope in envelopes]
        for future in futures:
            await asyncio.wrap_future(future)
        for payload in payloads:
            if isinstance(payload, Command | SeriesDiscarded):
                series = (
                    [payload.series_uid]
                    if isinstance(payload, SeriesDiscarded)
                    else getattr(payload, "series_uids", [])
                )
                log.info(
                    "decided",
                    type=payload.TYPE,
                    subject=subject_of(payload),
                    study_uid=payload.study_uid,
                    series_uids=series,
                )

    async def _dead_letter(self, record: Record, *, reason: str) -> None:
        letter = DeadLetter(
            topic=record.tp.topic,
            partition=record.tp.partition,
            offset=record.offset,
            group=self._app.conf.id,
            reason=reason,
        )
        log.error("record sent to the dead-letter topic", **letter.__dict__)
        headers: Headers = [*record.headers, *letter.headers()]
        future = self._producer.produce_raw(
            topic=self._topics[Topic.DEADLETTER],
            key=record.key,
            value=record.value,
            headers=headers,
        )
        await asyncio.wrap_future(future)


class _DrainingProducer(FaustProducer):
    """Faust's producer, flushed for real. Faust's buffer flush returns as soon as no record
    went out for 0.1 s, with table changes still buffered, and the consumer then commits its
    source offsets: a worker that dies next (as when the broker restarts) loses those changes
    for good. Drain the buffer before the commit goes ahead."""

    async def flush(self) -> None:
        while self.buffer.size:
            await self.buffer.flush()  # raises once the producer stops with records left
        await super().flush()


class _GatheringConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer, fetching what arrived in the last `FETCH_GATHER_MS` at once: while a
    series streams in, a fetch per instance cost this worker and the broker more CPU than the
    fold, next to the receiver. A completion comes back at most that much later."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads both when the consumer starts; Faust leaves the minimum at one byte
        # (every record answers a fetch) and fixes the longest wait at 1.5 s.
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        consumer._fetch_max_wait_ms = FETCH_GATHER_MS
        return consumer


class _Consumer(FaustConsumer):
    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _GatheringConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(FaustTransport):
    Consumer = _Consumer


class _App(faust.App):
    def _new_producer(self) -> ProducerT:
        return _DrainingProducer(self.transport, loop=self.loop, beacon=self.beacon)

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)


def build_app(
    settings: StreamsSettings, *, view: ConfigView, producer: EventProducer, source: str
) -> faust.App:
    """The Faust app of one worker: the fold agent, the completion timer, rebalance hooks."""
    session_s = settings.consumer_session_timeout_ms / 1000
    app = _App(
        f"{settings.topic_prefix}streams",
        broker=";".join(f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")),
        store="memory://",
        datadir=str(settings.data_dir / "streams"),  # Faust defaults to the working directory
        key_serializer="json",  # tables; the source topic is read as raw bytes
        value_serializer="json",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        topic_partitions=PARTITIONS,
        topic_replication_factor=settings.streams_replication_factor,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=settings.consumer_heartbeat_ms / 1000,
        broker_max_poll_interval=settings.consumer_max_poll_interval_ms / 1000,
        broker_commit_interval=1.0,
        # Table changes (two per instance) go out in batches: each is off the critical path
        # (the producer is drained before every commit), and a request per record costs this
        # worker and the broker more CPU than the rest of the fold while a series streams in.
        producer_linger=0.05,
        producer_max_batch_size=256 * 1024,
        # A worker that rejoined while a restarted broker's metadata still lacked the topics
        # gets no partitions until a metadata refresh shows them (then it rejoins): often.
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        stream_recovery_delay=0.0,
        web_enabled=settings.streams_web_port > 0,
        web_bind="127.0.0.1",
        web_port=settings.streams_web_port or 6066,
    )
    completions = Completions(app, settings=settings, view=view, producer=producer, source=source)
    source_topic = app.topic(
        topic_name(Topic.INSTANCES, prefix=settings.topic_prefix),
        topic_name(Topic.SERIES, prefix=settings.topic_prefix),
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(source_topic, name="fold")
    async def fold(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await completions.fold(event)

    async def complete_due() -> None:
        await completions.tick()

    async def on_revoked(_sender: Any, revoked: set[TP], **_: Any) -> None:
        completions.forget(tp.partition for tp in revoked)

    app.timer(settings.streams_tick_s, name="complete-due")(complete_due)
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    return app


def run(settings: StreamsSettings, *, name: str) -> None:
    """Run one worker in the foreground until SIGTERM/SIGINT (SIGKILL is survived by design),
    with the reprocessor beside it on a thread."""
    view = ConfigView(settings).start()
    producer = EventProducer(settings, client_id=f"streams-{name}")
    heartbeat = Heartbeat(settings, producer, service="streams").start()
    store = open_blob_store(settings)
    reprocessing = ConsumerLoop(
        settings,
        group_id=f"{settings.topic_prefix}streams.reprocess",
        topics=[Topic.SERIES, Topic.OPERATIONS],
        handle=Reprocessor(
            store=store, producer=producer, configuration=lambda: view.config
        ).handle,
        producer=producer,
    )
    reprocessor = threading.Thread(target=reprocessing.run, name="reprocessor")
    reprocessor.start()
    app = build_app(settings, view=view, producer=producer, source=f"streams/{name}")
    # Faust creates the changelogs too, but an agent that reads their metadata before the
    # creation crashes (PartitionsMismatch) and stays down: they exist before it starts.
    ensure_compacted(
        settings,
        [table.changelog_topic.get_topic_name() for table in app.tables.values()],
        partitions=PARTITIONS,
        replication_factor=settings.streams_replication_factor,
    )
    worker = faust.Worker(app, loglevel=settings.streams_log_level, quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG (its handler counts every record)
    # for as long as the worker runs: every debug line of Faust and aiokafka would then be
    # formatted, several per record folded. Without it the root logger keeps `loglevel`.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        reprocessing.stop_requested.set()
        reprocessor.join()
        heartbeat.stop()
        producer.close()
        store.close()
        view.stop()
