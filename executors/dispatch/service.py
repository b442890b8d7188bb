"""`talaria dispatch run`: the dispatcher wired to the log, the blob store and the config view."""

from prometheus_client import start_http_server

from executors.dispatch.dispatcher import Dispatcher, DispatchSettings
from executors.lanes import (
    OffPeakWindow,
    PriorityGate,
    lane_consumers,
    operations_consumer,
    retry_consumer,
)
from executors.retry import RetryPolicy
from executors.service import ExecutorService
from infra.log import ConsumerLoop
from infra.topics import CommandKind
from streams.config import Rule
from streams.view import ConfigView

GROUP = "dispatcher"


class ViewControls:
    """The config view as the dispatcher's `Controls`."""

    def __init__(self, view: ConfigView) -> None:
        self._view = view

    def target_config(self, name: str) -> dict[str, object] | None:
        target = self._view.config.targets.get(name)
        return None if target is None else target.model_dump()

    def rule(self, name: str) -> Rule | None:
        return self._view.config.rules.get(name)

    def suspended(self, queue: str) -> bool:
        return queue in self._view.suspended_queues

    def catch_up(self) -> None:
        self._view.catch_up()


def dispatch_service(settings: DispatchSettings) -> ExecutorService:
    """A dispatcher: one consumer per lane, one for scheduled retries, one for operator
    requests; the lanes and retries share one priority gate."""

    def build_loops(service: ExecutorService) -> list[ConsumerLoop]:
        controls = ViewControls(service.view)
        dispatcher = Dispatcher(
            producer=service.producer,
            store=service.store,
            controls=controls,
            policy=RetryPolicy(
                max_attempts=settings.retry_max_attempts,
                first_delay_s=settings.retry_first_delay_s,
                max_delay_s=settings.retry_max_delay_s,
            ),
            work_dir=settings.data_dir / "dispatch",
            stop=service.stop_requested,
        )
        gate = PriorityGate(slots=settings.dispatch_slots)
        return [
            *lane_consumers(
                settings,
                kind=CommandKind.DISPATCH,
                group_id=GROUP,
                handle=dispatcher.handle_command,
                producer=service.producer,
                gate=gate,
                window=OffPeakWindow.parse(settings.offpeak_window),
                suspended=lambda lane: (
                    controls.suspended(f"dispatch.{lane.value}") or controls.suspended("dispatch")
                ),
            ),
            retry_consumer(
                settings,
                kind=CommandKind.DISPATCH,
                group_id=GROUP,
                handle=dispatcher.handle_retry,
                producer=service.producer,
                gate=gate,
            ),
            operations_consumer(
                settings,
                group_id=GROUP,
                handle=dispatcher.handle_operation,
                producer=service.producer,
            ),
        ]

    return ExecutorService(settings, name=GROUP, build_loops=build_loops)


def run(settings: DispatchSettings) -> None:
    """Run until SIGTERM/SIGINT."""
    if settings.dispatch_metrics_port:
        start_http_server(settings.dispatch_metrics_port, addr="127.0.0.1")
    dispatch_service(settings).run_until_signalled()
