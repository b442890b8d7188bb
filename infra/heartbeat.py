"""Heartbeats: every long-running service says on the `heartbeats` topic that it is alive.

A `Heartbeat` thread publishes a `ServiceHeartbeat` through the service's own producer at once
and then every `heartbeat_interval_s`; the UI shows each instance's latest one and calls it
stale after `STALE_AFTER_INTERVALS` intervals without a newer one. A failed publish is logged
and the next beat tried: a broker outage never stops the service itself.
"""

import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Self

import structlog

from infra.catalogue import ServiceHeartbeat
from infra.errors import TalariaError
from infra.events import Envelope
from infra.log import EventProducer
from infra.settings import LogSettings

log = structlog.get_logger(__name__)

STALE_AFTER_INTERVALS = 3


def instance_name() -> str:
    """Which copy of a service this process is: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Publishes this process's `ServiceHeartbeat` on a thread until `stop`."""

    def __init__(
        self,
        settings: LogSettings,
        producer: EventProducer,
        *,
        service: str,
        status: Callable[[], str] = lambda: "running",
    ) -> None:
        self._producer = producer
        self._interval_s = settings.heartbeat_interval_s
        self._status = status
        self._service = service
        self._instance = instance_name()
        self._started_at = datetime.now(UTC)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{service}-heartbeat", daemon=True)
        self._join_timeout_s = settings.publish_timeout_s + 10

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (before the producer closes)."""
        self._stop.set()
        self._thread.join(timeout=self._join_timeout_s)

    def _run(self) -> None:
        while True:
            self._beat()
            if self._stop.wait(self._interval_s):
                return

    def _beat(self) -> None:
        payload = ServiceHeartbeat(
            service=self._service,
            instance=self._instance,
            started_at=self._started_at,
            interval_s=self._interval_s,
            status=self._status(),
        )
        envelope = Envelope(
            payload=payload,
            source=f"{self._service}@{self._instance}",
            subject=payload.partition_key(),
        )
        try:
            self._producer.publish(envelope)
        except TalariaError as error:
            log.warning("heartbeat not published", service=self._service, error=str(error))
