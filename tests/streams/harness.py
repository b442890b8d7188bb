"""Helpers for the streams stories: real workers, instances, config, the log read back."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from infra.catalogue import (
    CATALOGUE,
    BlobReference,
    InstanceReceived,
    ModuleSaved,
    RuleSaved,
    SettingsSaved,
    TargetSaved,
)
from infra.events import Envelope, Payload, decode
from infra.log import EventProducer
from infra.settings import LogSettings
from infra.topics import Topic, topic_name
from streams.config import SETTINGS_NAME

ROOT = Path(__file__).parents[2]
DECISION_TOPICS = [topic for topic in Topic if topic.value.startswith("commands.")] + [Topic.SERIES]


def config_event(payload: Payload) -> Envelope:
    return Envelope(payload=payload, source="test", subject=payload.partition_key(), actor="alice")


def settings_saved(**values: float) -> Envelope:
    return config_event(SettingsSaved(name=SETTINGS_NAME, after=values))


def target_saved(name: str, **fields: Any) -> Envelope:
    return config_event(TargetSaved(name=name, after={"target_type": "dummy", **fields}))


def module_saved(name: str, **fields: Any) -> Envelope:
    return config_event(ModuleSaved(name=name, after={"docker_tag": f"{name}:1", **fields}))


def rule_saved(name: str, **fields: Any) -> Envelope:
    return config_event(RuleSaved(name=name, after=fields))


def instance(study: str, series: str, number: int, **tags: str) -> Envelope:
    sop = f"{series}.{number}"
    return Envelope(
        payload=InstanceReceived(
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            blob=BlobReference(key=f"{study}/{series}/{sop}.dcm", size=100, sha256="0" * 64),
            tags={"StudyInstanceUID": study, "SeriesInstanceUID": series, **tags},
        ),
        source="test-ingest",
        subject=sop,
    )


class LogReader:
    """Every record of the decision topics, read from the beginning on a background thread."""

    def __init__(self, settings: LogSettings) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": "reader",
                "enable.auto.commit": False,
            }
        )
        partitions = []
        for topic in DECISION_TOPICS:
            name = topic_name(topic, prefix=settings.topic_prefix)
            meta = self._consumer.list_topics(name, timeout=10).topics[name]
            partitions += [TopicPartition(name, p, 0) for p in meta.partitions]
        self._consumer.assign(partitions)
        self.seen: list[tuple[Envelope, float]] = []  # with the broker's timestamp (s)
        self.failure: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                for message in self._consumer.consume(500, timeout=0.1):
                    if message.error() is None:
                        envelope = decode(message.value(), message.headers(), CATALOGUE)  # type: ignore[arg-type]
                        self.seen.append((envelope, message.timestamp()[1] / 1000))
        except Exception as error:
            self.failure = error
            raise

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()

    def of(self, kind: type[Payload]) -> list[Any]:
        return [envelope.payload for envelope, _ in self.seen if isinstance(envelope.payload, kind)]

    def envelopes(self, kind: type[Payload]) -> list[tuple[Envelope, float]]:
        return [(e, at) for e, at in self.seen if isinstance(e.payload, kind)]

    def wait(
        self, condition: Callable[["LogReader"], bool], *, timeout_s: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition(self):
            if self.failure is not None:
                raise self.failure
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.05)


@contextmanager
def reading(settings: LogSettings) -> Iterator[LogReader]:
    reader = LogReader(settings)
    try:
        yield reader
    finally:
        reader.close()


class WorkerProcess:
    """`python -m streams` against the test's topics; stopped (or killed) by the test."""

    def __init__(self, settings: LogSettings, logfile: Path) -> None:
        env = {
            **os.environ,
            "TALARIA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "TALARIA_TOPIC_PREFIX": settings.topic_prefix,
            "TALARIA_CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
            "TALARIA_CONSUMER_HEARTBEAT_MS": str(settings.consumer_heartbeat_ms),
            "TALARIA_CONSUMER_MAX_POLL_INTERVAL_MS": str(settings.consumer_max_poll_interval_ms),
        }
        self._log = logfile.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@contextmanager
def workers(settings: LogSettings, logdir: Path, count: int = 1) -> Iterator[list[WorkerProcess]]:
    started = [WorkerProcess(settings, logdir / f"worker-{i}.log") for i in range(count)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def publish(settings: LogSettings, envelopes: list[Envelope]) -> None:
    with EventProducer(settings, client_id="test") as producer:
        producer.publish_all(envelopes)
