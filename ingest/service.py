"""Wiring: settings to blob store, producer, intake and receiver; `talaria ingest run` serves."""

import asyncio
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
import uvloop
from prometheus_client import start_http_server

from infra.blobstore import BlobStore, open_blob_store
from infra.heartbeat import Heartbeat
from infra.log import EventProducer
from ingest.intake import Intake
from ingest.outbox import BrokerOutbox, Journal, Outbox
from ingest.scp import Receiver
from ingest.settings import IngestSettings
from ingest.tags import TagReader

log = structlog.get_logger(__name__)


def source_name() -> str:
    """The envelope `source` of what this process publishes."""
    return f"ingest@{socket.gethostname()}:{os.getpid()}"


@contextmanager
def open_intake(settings: IngestSettings) -> Iterator[Intake]:
    """An intake on the configured blob store and broker, closed (events flushed) at exit."""
    blobs = open_blob_store(settings)
    producer = EventProducer(settings, client_id=source_name())
    outbox = open_outbox(settings, producer=producer, blobs=blobs)
    try:
        yield Intake(
            blobs=blobs,
            producer=producer,
            outbox=outbox,
            reader=TagReader(settings.extra_tags),
            source=source_name(),
        )
    finally:
        outbox.close()
        producer.close()
        blobs.close()


def open_outbox(settings: IngestSettings, *, producer: EventProducer, blobs: BlobStore) -> Outbox:
    """The outbox `ack_after` names."""
    if settings.ack_after == "broker":
        return BrokerOutbox(producer, timeout_s=settings.publish_timeout_s + 5)
    return Journal(
        settings.journal_root,
        producer=producer,
        blobs=blobs,
        max_wait_s=settings.publish_timeout_s,
    )


def new_receiver_loop() -> asyncio.AbstractEventLoop:
    """The receiver's event loop, uvloop's: the same receiver took 4 % more small instances
    per second than on asyncio's own (10 kB, 4 senders to 2 workers: 1000 against 961
    inst/s; 1 sender 728 against 701; medians of 4 interleaved runs)."""
    return uvloop.new_event_loop()


def run_until_signalled(settings: IngestSettings, *, handoffs: socket.socket | None = None) -> None:
    """`serve` until SIGINT or SIGTERM, on `new_receiver_loop`."""
    with asyncio.Runner(loop_factory=new_receiver_loop) as runner:
        runner.run(_serve_until_signalled(settings, handoffs=handoffs))


async def _serve_until_signalled(
    settings: IngestSettings, *, handoffs: socket.socket | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(settings, stop=stop, handoffs=handoffs)


async def serve(
    settings: IngestSettings, *, stop: asyncio.Event, handoffs: socket.socket | None = None
) -> None:
    """Run the DICOM receiver (and /metrics) until `stop` is set; on its own ports, or on
    the connections handed over on `handoffs` (see `Receiver.start`)."""
    with open_intake(settings) as intake:
        if settings.metrics_port is not None:
            start_http_server(settings.metrics_port, addr=settings.metrics_bind)
        receiver = Receiver(settings, intake)
        await receiver.start(handoffs)
        heartbeat = Heartbeat(settings, intake.producer, service="receiver").start()
        try:
            await stop.wait()
        finally:
            heartbeat.stop()
            await receiver.stop()
            log.info("DICOM receiver stopped")
