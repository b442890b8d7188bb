"""What every executor service shares: its consumer loops on threads, the config view, the
producer and the blob store, started and stopped in order."""

import signal
import threading
from collections.abc import Callable

import structlog
from pydantic import Field

from infra.blobstore import BlobStore, open_blob_store
from infra.heartbeat import Heartbeat
from infra.log import ConsumerLoop, EventProducer
from infra.settings import BlobSettings, LogSettings
from streams.view import ConfigUnavailable, ConfigView

log = structlog.get_logger(__name__)


class ExecutorSettings(LogSettings, BlobSettings):
    """Settings every executor reads: the log, the blob store, the off-peak window."""

    offpeak_window: str = Field(default="22:00-06:00", description="HH:MM-HH:MM, local time.")


class ExecutorService:
    """Consumer loops built by `build_loops` from the shared parts, run on threads."""

    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        name: str,
        build_loops: Callable[["ExecutorService"], list[ConsumerLoop]],
    ) -> None:
        self.name = name
        self.stop_requested = threading.Event()
        self.view = ConfigView(settings)
        self.producer = EventProducer(settings, client_id=name)
        self.store: BlobStore = open_blob_store(settings)
        self.heartbeat = Heartbeat(
            settings,
            self.producer,
            service=name,
            status=lambda: "stopping" if self.stop_requested.is_set() else "running",
        )
        self._loops = build_loops(self)
        self._threads = [
            threading.Thread(target=loop.run, name=f"{name}-loop") for loop in self._loops
        ]

    def start(self) -> "ExecutorService":
        """Read the whole configuration, then start consuming."""
        self.view.start()
        if not self.view.ready.wait(60):
            raise ConfigUnavailable("the config topic could not be read within 60 s")
        for thread in self._threads:
            thread.start()
        self.heartbeat.start()
        log.info("executor running", service=self.name, loops=len(self._loops))
        return self

    def stop(self) -> None:
        """Let the jobs in hand finish (or be redone after a restart), then close everything."""
        self.stop_requested.set()
        for loop in self._loops:
            loop.stop_requested.set()
        for thread in self._threads:
            thread.join()
        self.heartbeat.stop()
        self.view.stop()
        self.producer.close()
        self.store.close()

    def __enter__(self) -> "ExecutorService":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def run_until_signalled(self) -> None:
        """Start, serve until SIGTERM or SIGINT, stop."""
        self.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_requested.set())
        self.stop_requested.wait()
        self.stop()
