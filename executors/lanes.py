"""Priority lanes: how an executor takes commands from the urgent, normal and off-peak topics.

One consumer per lane topic feeds a `PriorityGate` that lets at most `slots` jobs run at once in
this process and gives a free slot to a waiting urgent job before a normal one, and to a normal
one before an off-peak one. The off-peak lane fetches nothing outside its window (default
22:00-06:00, local time), and a suspended queue fetches nothing at all; a job already running
finishes either way. Waiting happens inside `ConsumerLoop` handlers, which keep their group
membership while they wait.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, time

from infra.events import Envelope
from infra.log import ConsumerLoop, EventProducer
from infra.settings import LogSettings
from infra.topics import CommandKind, Lane, Topic, command_topic, retry_topic

LANE_ORDER = (Lane.URGENT, Lane.NORMAL, Lane.OFFPEAK)


@dataclass(frozen=True, kw_only=True)
class OffPeakWindow:
    """A daily window of local time; `start > end` wraps past midnight (22:00-06:00)."""

    start: time = time(22, 0)
    end: time = time(6, 0)

    def contains(self, moment: datetime) -> bool:
        now = moment.time()
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    @classmethod
    def parse(cls, text: str) -> "OffPeakWindow":
        """`HH:MM-HH:MM`, as configured by staff."""
        try:
            start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
        except ValueError:
            raise ValueError(f"off-peak window {text!r} is not HH:MM-HH:MM") from None
        return cls(start=start, end=end)


class PriorityGate:
    """At most `slots` jobs at once; a freed slot goes to the most urgent waiting lane."""

    def __init__(self, *, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        self._free = slots
        self._waiting = dict.fromkeys(LANE_ORDER, 0)
        self._changed = threading.Condition()

    @contextmanager
    def slot(self, lane: Lane) -> Iterator[None]:
        """Hold a slot for the duration of one job."""
        with self._changed:
            self._waiting[lane] += 1
            try:
                self._changed.wait_for(lambda: self._my_turn(lane))
            finally:
                self._waiting[lane] -= 1
            self._free -= 1
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()

    def _my_turn(self, lane: Lane) -> bool:
        if self._free == 0:
            return False
        ahead = LANE_ORDER[: LANE_ORDER.index(lane)]
        return not any(self._waiting[other] for other in ahead)


def lane_paused(
    lane: Lane,
    *,
    suspended: Callable[[Lane], bool],
    window: OffPeakWindow,
    clock: Callable[[], datetime] = datetime.now,
) -> bool:
    """Whether `lane` should fetch nothing right now."""
    if suspended(lane):
        return True
    return lane is Lane.OFFPEAK and not window.contains(clock())


def lane_consumers(
    settings: LogSettings,
    *,
    kind: CommandKind,
    group_id: str,
    handle: Callable[[Envelope], None],
    producer: EventProducer,
    gate: PriorityGate,
    window: OffPeakWindow,
    suspended: Callable[[Lane], bool],
) -> list[ConsumerLoop]:
    """One consumer loop per lane of `kind`; each job runs inside a gate slot."""

    def loop_for(lane: Lane) -> ConsumerLoop:
        def handle_in_slot(envelope: Envelope) -> None:
            with gate.slot(lane):
                handle(envelope)

        return ConsumerLoop(
            settings,
            group_id=f"{group_id}.{lane.value}",
            topics=[command_topic(kind, lane)],
            handle=handle_in_slot,
            producer=producer,
            max_batch=1,
            paused=lambda: lane_paused(lane, suspended=suspended, window=window),
        )

    return [loop_for(lane) for lane in LANE_ORDER]


def retry_consumer(
    settings: LogSettings,
    *,
    kind: CommandKind,
    group_id: str,
    handle: Callable[[Envelope], None],
    producer: EventProducer,
    gate: PriorityGate,
) -> ConsumerLoop:
    """The consumer of `kind`'s scheduled retries; each runs in a normal-lane slot of `gate`."""

    def handle_in_slot(envelope: Envelope) -> None:
        with gate.slot(Lane.NORMAL):
            handle(envelope)

    return ConsumerLoop(
        settings,
        group_id=f"{group_id}.retry",
        topics=[retry_topic(kind)],
        handle=handle_in_slot,
        producer=producer,
        max_batch=1,
    )


def operations_consumer(
    settings: LogSettings,
    *,
    group_id: str,
    handle: Callable[[Envelope], None],
    producer: EventProducer,
) -> ConsumerLoop:
    """The consumer of operator requests (retry, cancel) for one kind of executor."""
    return ConsumerLoop(
        settings,
        group_id=f"{group_id}.operations",
        topics=[Topic.OPERATIONS],
        handle=handle,
        producer=producer,
    )
