"""`talaria dispatch run`: the dispatcher wired to the log, the blob store and the config view."""

import signal
import threading

import structlog
from prometheus_client import start_http_server

from executors.dispatch.dispatcher import Dispatcher, DispatchSettings, RetryPolicy
from executors.lanes import OffPeakWindow, PriorityGate, lane_consumers
from infra.blobstore import open_blob_store
from infra.log import ConsumerLoop, EventProducer
from infra.topics import CommandKind, Lane, Topic
from streams.view import ConfigUnavailable, ConfigView

log = structlog.get_logger(__name__)
GROUP = "dispatcher"


class ViewControls:
    """The config view as the dispatcher's `Controls`."""

    def __init__(self, view: ConfigView) -> None:
        self._view = view

    def target_config(self, name: str) -> dict[str, object] | None:
        target = self._view.config.targets.get(name)
        return None if target is None else target.model_dump()

    def suspended(self, queue: str) -> bool:
        return queue in self._view.suspended_queues


def consumers(
    settings: DispatchSettings,
    *,
    dispatcher: Dispatcher,
    producer: EventProducer,
    controls: ViewControls,
) -> list[ConsumerLoop]:
    """Every loop the dispatcher runs: one per lane, the retry topic, operator requests."""
    gate = PriorityGate(slots=settings.dispatch_slots)
    lanes = lane_consumers(
        settings,
        kind=CommandKind.DISPATCH,
        group_id=GROUP,
        handle=dispatcher.handle_command,
        producer=producer,
        gate=gate,
        window=OffPeakWindow.parse(settings.offpeak_window),
        suspended=lambda lane: (
            controls.suspended(f"dispatch.{lane.value}") or controls.suspended("dispatch")
        ),
    )

    def retry_in_slot(envelope: object) -> None:
        with gate.slot(Lane.NORMAL):
            dispatcher.handle_retry(envelope)  # type: ignore[arg-type]

    retries = ConsumerLoop(
        settings,
        group_id=f"{GROUP}.retry",
        topics=[Topic.DISPATCH_RETRY],
        handle=retry_in_slot,
        producer=producer,
        max_batch=1,
    )
    operations = ConsumerLoop(
        settings,
        group_id=f"{GROUP}.operations",
        topics=[Topic.OPERATIONS],
        handle=dispatcher.handle_operation,
        producer=producer,
    )
    return [*lanes, retries, operations]


class DispatchService:
    """A dispatcher with its consumer loops, config view, producer and blob store."""

    def __init__(self, settings: DispatchSettings) -> None:
        self.stop_requested = threading.Event()
        self._producer = EventProducer(settings, client_id="dispatcher")
        self._store = open_blob_store(settings)
        self._view = ConfigView(settings)
        controls = ViewControls(self._view)
        dispatcher = Dispatcher(
            producer=self._producer,
            store=self._store,
            controls=controls,
            policy=RetryPolicy(
                max_attempts=settings.retry_max_attempts,
                first_delay_s=settings.retry_first_delay_s,
                max_delay_s=settings.retry_max_delay_s,
            ),
            work_dir=settings.data_dir / "dispatch",
            stop=self.stop_requested,
        )
        self._loops = consumers(
            settings, dispatcher=dispatcher, producer=self._producer, controls=controls
        )
        self._threads = [
            threading.Thread(target=loop.run, name="dispatch-loop") for loop in self._loops
        ]

    def start(self) -> "DispatchService":
        """Read the configuration, then start consuming."""
        self._view.start()
        if not self._view.ready.wait(60):
            raise ConfigUnavailable("the config topic could not be read within 60 s")
        for thread in self._threads:
            thread.start()
        return self

    def __enter__(self) -> "DispatchService":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Finish the job in hand (or leave it to be redone), then close everything."""
        self.stop_requested.set()
        for loop in self._loops:
            loop.stop_requested.set()
        for thread in self._threads:
            thread.join()
        self._view.stop()
        self._producer.close()
        self._store.close()


def run(settings: DispatchSettings) -> None:
    """Run until SIGTERM/SIGINT."""
    if settings.dispatch_metrics_port:
        start_http_server(settings.dispatch_metrics_port, addr="127.0.0.1")
    service = DispatchService(settings).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stop_requested.set())
    log.info("dispatcher running", slots=settings.dispatch_slots)
    service.stop_requested.wait()
    service.stop()
