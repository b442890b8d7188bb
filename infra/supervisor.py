"""Supervise Talaria's services as child processes: start in order, restart with backoff,
stop in reverse order, and keep a state file that `talaria status` reads.

A child that exits is started again after 1 s, then 2, 4, ... up to 60 s while it keeps
failing; a child that stayed up for a minute starts again from 1 s. Stopping sends SIGTERM and
waits (services finish or hand back the job in hand), then SIGKILL after the grace period.
"""

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import structlog

log = structlog.get_logger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
HEALTHY_AFTER_S = 60.0


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    """One service: its name and the command that runs it in the foreground."""

    name: str
    command: list[str]


@dataclass(kw_only=True)
class ServiceState:
    """What `talaria status` shows of one service."""

    name: str
    state: str = "starting"
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = field(default_factory=time.time)


class _Child:
    def __init__(self, spec: ServiceSpec, *, log_dir: Path, env: dict[str, str]) -> None:
        self.spec = spec
        self.state = ServiceState(name=spec.name)
        self._log_path = log_dir / f"{spec.name}.log"
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._backoff_s = FIRST_BACKOFF_S
        self._restart_at = 0.0

    def start(self) -> None:
        self._log = self._log_path.open("ab")
        self._process = subprocess.Popen(
            self.spec.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
        )
        self.state.pid = self._process.pid
        self.state.state = "running"
        self.state.started_at = time.time()

    def check(self, now: float) -> None:
        """Notice an exit and restart when its backoff has passed."""
        if self._process is not None and self._process.poll() is not None:
            code = self._process.returncode
            up_for = time.time() - self.state.started_at
            self._close()
            self.state.last_exit, self.state.state, self.state.pid = code, "restarting", None
            self._backoff_s = (
                FIRST_BACKOFF_S
                if up_for > HEALTHY_AFTER_S
                else min(self._backoff_s * 2, MAX_BACKOFF_S)
            )
            self._restart_at = now + self._backoff_s
            log.warning(
                "service exited", service=self.spec.name, code=code, retry_in=self._backoff_s
            )
        if self._process is None and now >= self._restart_at:
            self.state.restarts += 1
            self.start()

    def stop(self, *, grace_s: float) -> None:
        if self._process is None:
            self.state.state = "stopped"
            return
        self.state.state = "stopping"
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("service did not stop in time; killed", service=self.spec.name)
                self._process.kill()
                self._process.wait()
        self.state.last_exit = self._process.returncode
        self._close()
        self.state.state, self.state.pid = "stopped", None

    def _close(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class Supervisor:
    """Runs services until `stop_requested`; the state file is rewritten on every change."""

    def __init__(
        self, services: list[ServiceSpec], *, run_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = run_dir / "services.json"
        self.stop_requested = threading.Event()
        environment = dict(os.environ if env is None else env)
        self._children = [_Child(spec, log_dir=run_dir, env=environment) for spec in services]

    def run(self, *, grace_s: float = 30.0, poll_s: float = 0.5) -> None:
        """Start every service, keep them running, stop them in reverse order."""
        try:
            for child in self._children:
                child.start()
            self._write_state()
            while not self.stop_requested.wait(poll_s):
                for child in self._children:
                    child.check(time.monotonic())
                self._write_state()
        finally:
            for child in reversed(self._children):
                child.stop(grace_s=grace_s)
                self._write_state()

    def states(self) -> list[ServiceState]:
        return [child.state for child in self._children]

    def _write_state(self) -> None:
        partial = self.state_file.with_suffix(".partial")
        partial.write_text(json.dumps([asdict(state) for state in self.states()], indent=1))
        partial.replace(self.state_file)


def read_states(run_dir: Path) -> list[ServiceState]:
    """The services as the supervisor last wrote them; a pid that is gone reads as 'gone'."""
    try:
        raw = json.loads((run_dir / "services.json").read_text())
    except FileNotFoundError:
        return []
    states = [ServiceState(**entry) for entry in raw]
    for state in states:
        if state.pid is not None and not Path(f"/proc/{state.pid}").exists():
            state.state, state.pid = "gone", None
    return states
