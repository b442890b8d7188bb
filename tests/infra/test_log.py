"""The event log on a real broker: publish, consume, crash, restart, dead letters."""

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.catalogue import DispatchStarted, QueueSuspended
from infra.errors import TransientError
from infra.events import Envelope, header_value
from infra.kafka.broker import LocalBroker
from infra.log import ConsumerLoop, EventProducer, PublishFailed
from infra.settings import LogSettings
from infra.topics import Topic, topic_name
from tests.conftest import settings_for, start_broker
from tests.support import wait_for

pytestmark = pytest.mark.integration


def started(job: int) -> Envelope:
    return Envelope(
        payload=DispatchStarted(
            job_id=f"job-{job:05d}", target="pacs", attempt=1, instance_count=1
        ),
        source="test",
        subject=f"job-{job:05d}",
    )


def read_all(settings: LogSettings, topic: Topic, *, expected: int, timeout_s: float = 30) -> list:  # type: ignore[type-arg]
    """Every record of `topic` from the beginning (raw confluent messages)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "reader",
            "enable.auto.commit": False,
        }
    )
    name = topic_name(topic, prefix=settings.topic_prefix)
    partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, 0) for p in partitions])
    records = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        records += [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
    time.sleep(0.5)  # anything beyond `expected` shows up too
    records += [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
    consumer.close()
    return records


class Collected:
    """A consumer loop on a thread, collecting what its handler saw."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop
        self.thread = threading.Thread(target=loop.run)

    def __enter__(self) -> "Collected":
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.loop.stop_requested.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture
def producer(log_settings: LogSettings) -> Iterator[EventProducer]:
    with EventProducer(log_settings, client_id="test") as producer:
        yield producer


def test_published_events_come_back_to_a_consumer_with_their_headers(
    log_settings: LogSettings, producer: EventProducer
) -> None:
    sent = [started(i) for i in range(3)] + [
        Envelope(payload=QueueSuspended(queue="dispatch"), source="ui", subject="q", actor="bob")
    ]
    producer.publish_all(sent)
    seen: list[Envelope] = []
    loop = ConsumerLoop(
        log_settings,
        group_id="roundtrip",
        topics=[Topic.JOBS, Topic.OPERATIONS],
        handle=seen.append,
        producer=producer,
    )
    with Collected(loop):
        wait_for(lambda: len(seen) == len(sent), timeout_s=30, what="4 events consumed")
    assert sorted(seen, key=lambda e: e.event_id) == sorted(sent, key=lambda e: e.event_id)
    raw = read_all(log_settings, Topic.OPERATIONS, expected=1)
    assert header_value(raw[0].headers(), "type") == "QueueSuspended"
    assert header_value(raw[0].headers(), "version") == "1"
    assert raw[0].key() == b"QueueSuspended"


def test_undecodable_records_and_permanent_failures_go_to_the_dead_letter_topic(
    log_settings: LogSettings, producer: EventProducer
) -> None:
    jobs = topic_name(Topic.JOBS, prefix=log_settings.topic_prefix)
    producer.produce_raw(topic=jobs, key=b"x", value=b"\x00not json", headers=[]).result()
    producer.publish_all([started(1), started(2), started(3)])
    transient_failures = iter([TransientError("db busy")])
    handled: list[str] = []

    def handle(envelope: Envelope) -> None:
        assert isinstance(envelope.payload, DispatchStarted)
        if envelope.payload.job_id == "job-00002":
            raise ValueError("this job is malformed")
        if envelope.payload.job_id == "job-00003":
            failure = next(transient_failures, None)
            if failure is not None:
                raise failure
        handled.append(envelope.payload.job_id)

    loop = ConsumerLoop(
        log_settings,
        group_id="dlq",
        topics=[Topic.JOBS],
        handle=handle,
        producer=producer,
        retry_delay_s=0.05,
    )
    with Collected(loop):
        wait_for(lambda: len(handled) == 2, timeout_s=30, what="the good events handled")
        letters = read_all(log_settings, Topic.DEADLETTER, expected=2)
    assert sorted(handled) == ["job-00001", "job-00003"]  # the transient one was retried
    by_reason = {header_value(m.headers(), "dlq.reason"): m for m in letters}
    assert len(letters) == 2
    garbage = next(m for r, m in by_reason.items() if r and r.startswith("undecodable"))
    assert garbage.value() == b"\x00not json"
    assert garbage.key() == b"x"
    assert header_value(garbage.headers(), "dlq.topic") == jobs
    assert header_value(garbage.headers(), "dlq.group") == "dlq"
    failed = next(m for r, m in by_reason.items() if r and "malformed" in r)
    assert b"job-00002" in failed.value()
    assert header_value(failed.headers(), "type") == "DispatchStarted"


def worker(settings: LogSettings, outfile: Path, run: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.infra.consumer_worker",
            settings.kafka_bootstrap,
            settings.topic_prefix,
            "resume",
            str(outfile),
            run,
        ],
        cwd=Path(__file__).parents[2],
    )


def lines(outfile: Path) -> list[tuple[str, str]]:
    if not outfile.exists():
        return []
    return [
        tuple(line.split()) for line in outfile.read_text().splitlines() if line.count(" ") == 1
    ]  # type: ignore[misc]


def test_a_consumer_killed_mid_stream_resumes_from_its_committed_offset(
    log_settings: LogSettings, producer: EventProducer, tmp_path: Path
) -> None:
    total = 10_000
    producer.publish_all(started(i) for i in range(total))
    outfile = tmp_path / "handled.txt"
    first = worker(log_settings, outfile, "first")
    try:
        wait_for(lambda: len(lines(outfile)) >= 3000, timeout_s=60, what="3000 events handled")
        first.kill()
        first.wait()
    finally:
        first.kill()
    handled_before_kill = len(lines(outfile))
    assert handled_before_kill < total, "the kill must land mid-stream"
    second = worker(log_settings, outfile, "second")
    try:
        wait_for(
            lambda: len({job for _, job in lines(outfile)}) == total,
            timeout_s=120,
            what="every event handled at least once",
        )
    finally:
        second.terminate()
        assert second.wait(timeout=30) == 0
    seen = lines(outfile)
    after_restart = [job for run, job in seen if run == "second"]
    assert {job for _, job in seen} == {f"job-{i:05d}" for i in range(total)}
    # Resumed from the committed offset, not from the start: the second run redid at most the
    # uncommitted tail of the first.
    assert len(after_restart) < total
    redone = len(seen) - total
    assert redone <= handled_before_kill


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker this test may stop and start without disturbing the others."""
    broker = start_broker(tmp_path / "kafka")
    yield broker
    broker.stop()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_broker_restarted_under_a_running_producer_loses_no_acknowledged_event(
    own_broker: LocalBroker, how: str
) -> None:
    settings = settings_for(own_broker, publish_timeout_s=60)
    acknowledged: list[int] = []
    failed: list[int] = []
    stop = threading.Event()

    def produce() -> None:
        with EventProducer(settings, client_id="restart") as producer:
            sequence = 0
            while not stop.is_set():
                batch = list(range(sequence, sequence + 20))
                sequence += 20
                try:
                    producer.publish_all(started(i) for i in batch)
                    acknowledged.extend(batch)
                except PublishFailed:
                    failed.extend(batch)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        wait_for(lambda: len(acknowledged) > 500, timeout_s=30, what="events acknowledged")
        if how == "kill":
            own_broker.kill()
        else:
            own_broker.stop()
        before_restart = len(acknowledged)
        own_broker.start()
        wait_for(
            lambda: len(acknowledged) > before_restart + 500,
            timeout_s=60,
            what="acknowledgements after the restart",
        )
    finally:
        stop.set()
        thread.join(timeout=90)
    records = read_all(settings, Topic.JOBS, expected=len(acknowledged))
    on_log = {int(m.key() and m.value().split(b'"job_id":"job-')[1][:5]) for m in records}
    missing = set(acknowledged) - on_log
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert len(acknowledged) > 1000


def test_a_handler_longer_than_the_poll_interval_keeps_its_group_membership(
    log_settings: LogSettings, producer: EventProducer
) -> None:
    """max.poll.interval is 10 s here; the handler takes 12 s, the loop polls meanwhile."""
    producer.publish_all([started(1), started(2)])
    handled: list[str] = []

    def slow(envelope: Envelope) -> None:
        assert isinstance(envelope.payload, DispatchStarted)
        if not handled:
            time.sleep(12)
        handled.append(envelope.payload.job_id)

    loop = ConsumerLoop(
        log_settings, group_id="slow", topics=[Topic.JOBS], handle=slow, producer=producer
    )
    with Collected(loop):
        wait_for(lambda: len(handled) == 2, timeout_s=60, what="both events handled")
    # The offsets were committed: the group has nothing left to redo.
    again: list[Envelope] = []
    second = ConsumerLoop(
        log_settings, group_id="slow", topics=[Topic.JOBS], handle=again.append, producer=producer
    )
    with Collected(second):
        time.sleep(8)
    assert sorted(handled) == ["job-00001", "job-00002"]
    assert again == []


def test_a_paused_loop_fetches_nothing_until_it_is_resumed(
    log_settings: LogSettings, producer: EventProducer
) -> None:
    paused = threading.Event()
    paused.set()
    handled: list[Envelope] = []
    loop = ConsumerLoop(
        log_settings,
        group_id="pausable",
        topics=[Topic.JOBS],
        handle=handled.append,
        producer=producer,
        paused=paused.is_set,
    )
    with Collected(loop):
        producer.publish_all([started(i) for i in range(5)])
        time.sleep(4)
        assert handled == []
        paused.clear()
        wait_for(lambda: len(handled) == 5, timeout_s=30, what="events after resuming")


def test_a_flush_that_fails_for_good_stops_the_loop_without_skipping_the_batch(
    log_settings: LogSettings, producer: EventProducer
) -> None:
    producer.publish_all([started(1), started(2)])
    buffered: list[str] = []

    def broken_flush() -> None:
        raise ValueError("the table is gone")

    def remember(envelope: Envelope) -> None:
        buffered.append(envelope.payload.job_id)  # type: ignore[attr-defined]

    failing = ConsumerLoop(
        log_settings,
        group_id="flushing",
        topics=[Topic.JOBS],
        handle=remember,
        flush=broken_flush,
        producer=producer,
    )
    with pytest.raises(ValueError, match="the table is gone"):
        failing.run()
    again: list[Envelope] = []
    healthy = ConsumerLoop(
        log_settings,
        group_id="flushing",
        topics=[Topic.JOBS],
        handle=again.append,
        producer=producer,
    )
    with Collected(healthy):
        wait_for(lambda: len(again) == 2, timeout_s=30, what="the batch redone")
