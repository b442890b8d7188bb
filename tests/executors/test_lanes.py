"""Lanes: urgent work overtakes normal work, off-peak waits for its window, suspension holds."""

import threading
import time
from datetime import datetime
from datetime import time as clock_time

import pytest

from executors.lanes import OffPeakWindow, PriorityGate, lane_paused
from infra.topics import Lane
from tests.support import wait_for


@pytest.mark.parametrize(
    ("hour", "inside"),
    [(21, False), (22, True), (23, True), (0, True), (5, True), (6, False), (12, False)],
)
def test_the_default_window_wraps_past_midnight(hour: int, inside: bool) -> None:
    assert OffPeakWindow().contains(datetime(2026, 1, 1, hour, 30)) is inside


def test_a_daytime_window_does_not_wrap() -> None:
    window = OffPeakWindow.parse("12:00-13:30")
    assert window == OffPeakWindow(start=clock_time(12), end=clock_time(13, 30))
    assert window.contains(datetime(2026, 1, 1, 13, 0))
    assert not window.contains(datetime(2026, 1, 1, 13, 30))


@pytest.mark.parametrize("text", ["", "22:00", "25:00-06:00", "night"])
def test_a_malformed_window_is_refused_with_its_text(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        OffPeakWindow.parse(text)


def test_off_peak_is_paused_by_day_and_any_lane_while_suspended() -> None:
    noon = lambda: datetime(2026, 1, 1, 12)  # noqa: E731
    night = lambda: datetime(2026, 1, 1, 23)  # noqa: E731
    none_suspended = lambda lane: False  # noqa: E731
    window = OffPeakWindow()
    assert lane_paused(Lane.OFFPEAK, suspended=none_suspended, window=window, clock=noon)
    assert not lane_paused(Lane.OFFPEAK, suspended=none_suspended, window=window, clock=night)
    assert not lane_paused(Lane.NORMAL, suspended=none_suspended, window=window, clock=noon)
    normal_suspended = lambda lane: lane is Lane.NORMAL  # noqa: E731
    assert lane_paused(Lane.NORMAL, suspended=normal_suspended, window=window, clock=night)
    assert not lane_paused(Lane.URGENT, suspended=normal_suspended, window=window, clock=night)


def test_a_freed_slot_goes_to_urgent_before_normal_before_off_peak() -> None:
    gate = PriorityGate(slots=1)
    order: list[str] = []
    release_first = threading.Event()

    def job(lane: Lane, name: str, hold: threading.Event | None = None) -> None:
        with gate.slot(lane):
            order.append(name)
            if hold is not None:
                hold.wait(10)

    first = threading.Thread(target=job, args=(Lane.NORMAL, "running", release_first))
    first.start()
    wait_for(lambda: order == ["running"], timeout_s=5, what="the first job")
    waiting = [
        threading.Thread(target=job, args=(Lane.OFFPEAK, "offpeak")),
        threading.Thread(target=job, args=(Lane.NORMAL, "normal")),
        threading.Thread(target=job, args=(Lane.URGENT, "urgent")),
    ]
    for thread in waiting:
        thread.start()
        time.sleep(0.05)
    release_first.set()
    for thread in [first, *waiting]:
        thread.join(10)
    assert order == ["running", "urgent", "normal", "offpeak"]


def test_several_slots_run_jobs_side_by_side() -> None:
    gate = PriorityGate(slots=2)
    inside = 0
    most = 0
    lock = threading.Lock()

    def job() -> None:
        nonlocal inside, most
        with gate.slot(Lane.NORMAL):
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.1)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=job) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most == 2
