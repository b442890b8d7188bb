"""`talaria notify run`: the notifier wired to the log, the blob store and the config view."""

from executors.lanes import (
    OffPeakWindow,
    PriorityGate,
    lane_consumers,
    operations_consumer,
    retry_consumer,
)
from executors.notify.notifier import Notifier, NotifySettings
from executors.service import ExecutorService
from infra.log import ConsumerLoop
from infra.topics import CommandKind

GROUP = "notifier"


def notify_service(settings: NotifySettings) -> ExecutorService:
    """A notifier: one consumer per lane and one for scheduled retries, sharing one priority
    gate, and one for operator requests.

    The lanes pause while the queue "notify" (or "notify.<lane>") is suspended.
    """

    def build_loops(service: ExecutorService) -> list[ConsumerLoop]:
        view = service.view
        notifier = Notifier(
            settings,
            producer=service.producer,
            store=service.store,
            rules=lambda name: view.config.rules.get(name),  # today's rules
            stop=service.stop_requested,
        )
        gate = PriorityGate(slots=settings.notify_slots)
        return [
            *lane_consumers(
                settings,
                kind=CommandKind.NOTIFY,
                group_id=GROUP,
                handle=notifier.handle_command,
                producer=service.producer,
                gate=gate,
                window=OffPeakWindow.parse(settings.offpeak_window),
                suspended=lambda lane: bool(
                    {"notify", f"notify.{lane.value}"} & view.suspended_queues
                ),
            ),
            retry_consumer(
                settings,
                kind=CommandKind.NOTIFY,
                group_id=GROUP,
                handle=notifier.handle_command,
                producer=service.producer,
                gate=gate,
            ),
            operations_consumer(
                settings,
                group_id=GROUP,
                handle=notifier.handle_operation,
                producer=service.producer,
            ),
        ]

    return ExecutorService(settings, name=GROUP, build_loops=build_loops)
