"""`talaria up`'s supervisor: services start in order, a crashing one comes back with backoff,
and Ctrl-C stops them in reverse order."""

import threading
import time
from pathlib import Path

from infra.supervisor import ServiceSpec, Supervisor, read_states
from tests.support import wait_for


def polite(name: str, journal: Path) -> ServiceSpec:
    """A service that notes its own stop in the journal when asked to stop."""
    script = f'trap "echo {name} >> {journal}; exit 0" TERM; while true; do sleep 0.05; done'
    return ServiceSpec(name=name, command=["sh", "-c", script])


def test_services_restart_with_backoff_and_stop_in_reverse_order(tmp_path: Path) -> None:
    journal = tmp_path / "stopped.txt"
    crasher = ServiceSpec(name="crasher", command=["sh", "-c", "exit 3"])
    supervisor = Supervisor(
        [polite("first", journal), crasher, polite("last", journal)], run_dir=tmp_path / "run"
    )
    thread = threading.Thread(target=supervisor.run, kwargs={"grace_s": 5, "poll_s": 0.1})
    thread.start()
    try:
        wait_for(
            lambda: any(
                s.name == "crasher" and s.restarts >= 2 for s in read_states(tmp_path / "run")
            ),
            timeout_s=20,
            what="two restarts of the crashing service",
        )
        states = {s.name: s for s in read_states(tmp_path / "run")}
        assert states["first"].state == "running"
        assert states["last"].state == "running"
        assert states["crasher"].last_exit == 3
    finally:
        supervisor.stop_requested.set()
        thread.join(30)
    assert journal.read_text().split() == ["last", "first"]
    assert {s.state for s in read_states(tmp_path / "run")} == {"stopped"}


def test_backoff_doubles_while_a_service_keeps_failing(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [ServiceSpec(name="crasher", command=["false"])], run_dir=tmp_path / "run"
    )
    thread = threading.Thread(target=supervisor.run, kwargs={"grace_s": 5, "poll_s": 0.05})
    began = time.monotonic()
    thread.start()
    try:
        # Restarts after 2 s and 4 s more (1 s is skipped: the first failure doubles it).
        wait_for(lambda: supervisor.states()[0].restarts >= 2, timeout_s=20, what="2 restarts")
    finally:
        supervisor.stop_requested.set()
        thread.join(30)
    assert time.monotonic() - began >= 5.5
