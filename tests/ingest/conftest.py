"""Fixtures for intake tests: a receiver on a real broker and blob folder, DCMTK as the sender."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.catalogue import CATALOGUE, InstanceReceived
from infra.events import Envelope, decode
from infra.kafka.broker import LocalBroker
from infra.topics import Topic, topic_name
from ingest.scp import Receiver
from ingest.service import new_receiver_loop, open_intake
from ingest.settings import IngestSettings
from tests.conftest import settings_for
from tests.support import free_port, wait_until_listening

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"


def ingest_settings_for(broker: LocalBroker, blob_dir: Path, **overrides: object) -> IngestSettings:
    """Settings for a receiver on a free port, its own topics and blob folder."""
    log_settings = settings_for(broker)
    values: dict[str, object] = {
        **log_settings.model_dump(),
        "blob_dir": blob_dir,
        "journal_dir": blob_dir.with_name(f"{blob_dir.name}-journal"),
        "blob_min_free_bytes": 0,
        "dicom_port": free_port(),
        "metrics_port": None,
        **overrides,
    }
    return IngestSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(kafka_broker: LocalBroker, tmp_path: Path) -> IngestSettings:
    return ingest_settings_for(kafka_broker, tmp_path / "blobs")


class RunningReceiver:
    """A receiver serving on its own event loop thread."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self._loop = new_receiver_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))
        self._error: BaseException | None = None

    async def _run(self) -> None:
        try:
            with open_intake(self.settings) as intake:
                self.receiver = Receiver(self.settings, intake)
                await self.receiver.start()
                self._stop = asyncio.Event()
                self._ready.set()
                await self._stop.wait()
                await self.receiver.stop()
        except BaseException as error:
            self._error = error
            self._ready.set()
            raise

    def __enter__(self) -> "RunningReceiver":
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()
        self._loop.close()


@contextmanager
def receiving(settings: IngestSettings) -> Iterator[RunningReceiver]:
    with RunningReceiver(settings) as running:
        yield running


@contextmanager
def receiving_in_workers(settings: IngestSettings, workers: int, **env: str) -> Iterator[int]:
    """`talaria ingest run` with `workers` worker processes (and `env` on top of `settings`),
    listening; yields the first worker's /metrics port. Stopped at exit, and it must stop
    cleanly."""
    metrics_port = free_port()
    env = talaria_env(settings) | {
        "TALARIA_DICOM_WORKERS": str(workers),
        "TALARIA_METRICS_PORT": str(metrics_port),
        **env,
    }
    process = subprocess.Popen([*INGEST, "run"], env=env)
    try:
        wait_until_listening(settings.dicom_port, process, timeout_s=60)
        yield metrics_port
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


@pytest.fixture
def receiver(settings: IngestSettings) -> Iterator[RunningReceiver]:
    with receiving(settings) as running:
        yield running


def storescu(
    settings: IngestSettings, files: list[Path], *options: str, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sending `files` over one association (Nagle off, as the bench)."""
    return subprocess.run(
        [
            STORESCU,
            "-aet",
            "SCANNER",
            "-aec",
            settings.ae_title,
            *options,
            "127.0.0.1",
            str(port or settings.dicom_port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TCP_NODELAY": "1"},
    )


def events(
    settings: IngestSettings, *, expected: int, kind: str | None = None, timeout_s: float = 20
) -> list[Envelope]:
    """Every event on the instances topic, once `expected` of them (of type `kind`) are there."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "test-reader",
            "enable.auto.commit": False,
        }
    )
    name = topic_name(Topic.INSTANCES, prefix=settings.topic_prefix)
    partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, 0) for p in partitions])
    found: list[Envelope] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = [m for m in consumer.consume(500, timeout=0.3) if m.error() is None]
        found += [decode(m.value(), m.headers(), CATALOGUE) for m in batch]
        counted = [e for e in found if kind is None or e.type == kind]
        if len(counted) >= expected and not batch:
            break
    consumer.close()
    return found


def received(found: list[Envelope]) -> list[InstanceReceived]:
    return [e.payload for e in found if isinstance(e.payload, InstanceReceived)]


def of_type(found: list[Envelope], type_name: str) -> list[Envelope]:
    return [e for e in found if e.type == type_name]


def talaria_env(settings: IngestSettings) -> dict[str, str]:
    """The environment that gives `talaria ingest` these settings (its TLS ones included)."""
    env = {
        **os.environ,
        "TALARIA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TALARIA_TOPIC_PREFIX": settings.topic_prefix,
        "TALARIA_BLOB_DIR": str(settings.blob_dir),
        "TALARIA_BLOB_MIN_FREE_BYTES": "0",
        "TALARIA_DICOM_PORT": str(settings.dicom_port),
    }
    tls = {
        "TALARIA_TLS_PORT": settings.tls_port,
        "TALARIA_TLS_CERT": settings.tls_cert,
        "TALARIA_TLS_KEY": settings.tls_key,
        "TALARIA_TLS_CA": settings.tls_ca,
    }
    return env | {name: str(value) for name, value in tls.items() if value is not None}


INGEST = [sys.executable, "-m", "ingest"]  # `talaria ingest`, without the rest of the CLI
