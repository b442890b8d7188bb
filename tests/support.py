"""Helpers shared by tests: free ports, waiting for conditions, real service processes."""

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from confluent_kafka import Consumer, TopicPartition

from infra.catalogue import CATALOGUE
from infra.events import Envelope, Payload, decode
from infra.log import EventProducer
from infra.settings import LogSettings
from infra.topics import Topic, topic_name

P = TypeVar("P", bound=Payload)

DCMTK = "/usr/bin"  # DCMTK's tools; pynetdicom installs Python scripts of the same names


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll `condition` until true; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def wait_until_listening(port: int, process: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    """Wait until `process` accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{process.args!r} did not listen on port {port} within {timeout_s} s")


@contextmanager
def serving(
    command: list[str], *, port: int, timeout_s: float = 30, env: dict[str, str] | None = None
) -> Iterator[None]:
    """Run a server process for the duration of the block; it must listen on `port`."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_until_listening(port, process, timeout_s=timeout_s)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class LogReader:
    """Every record of some topics, read from the beginning on a background thread."""

    def __init__(self, settings: LogSettings, topics: Iterable[Topic]) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": "reader",
                "enable.auto.commit": False,
            }
        )
        partitions = []
        for topic in topics:
            name = topic_name(topic, prefix=settings.topic_prefix)
            meta = self._consumer.list_topics(name, timeout=10).topics[name]
            partitions += [TopicPartition(name, p, 0) for p in meta.partitions]
        self._consumer.assign(partitions)
        self.seen: list[tuple[Envelope, float]] = []  # with the broker's timestamp (s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(500, timeout=0.1):
                if message.error() is None:
                    envelope = decode(message.value(), message.headers(), CATALOGUE)  # type: ignore[arg-type]
                    self.seen.append((envelope, message.timestamp()[1] / 1000))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()

    def of(self, kind: type[P]) -> list[P]:
        """Payloads of one type, in the order read."""
        return [envelope.payload for envelope, _ in self.seen if isinstance(envelope.payload, kind)]

    def envelopes(self, kind: type[Payload]) -> list[tuple[Envelope, float]]:
        """Envelopes of one type with the broker's timestamps, in the order read."""
        return [(e, at) for e, at in self.seen if isinstance(e.payload, kind)]

    def wait(
        self, condition: Callable[["LogReader"], bool], *, timeout_s: float, what: str
    ) -> None:
        wait_for(lambda: condition(self), timeout_s=timeout_s, what=what)


@contextmanager
def reading(settings: LogSettings, topics: Iterable[Topic]) -> Iterator[LogReader]:
    """A `LogReader` for the block."""
    reader = LogReader(settings, topics)
    try:
        yield reader
    finally:
        reader.close()


def publish(settings: LogSettings, envelopes: Iterable[Envelope]) -> None:
    """Publish envelopes as a test stands in for another service."""
    with EventProducer(settings, client_id="test") as producer:
        producer.publish_all(envelopes)
