"""The whole stack as a user runs it (`talaria up` as a subprocess) and a logged-in API client,
for the end-to-end tests and `bench/e2e.py`."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import free_port, wait_until_listening

ROOT = Path(__file__).parents[2]
ADMIN_PASSWORD = "first-password-for-the-story"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    dicom_port: int
    ui_url: str
    data_dir: Path
    process: "subprocess.Popen[bytes]"

    @property
    def bootstrap(self) -> str:
        return self.env.get("TALARIA_KAFKA_BOOTSTRAP") or (
            f"127.0.0.1:{self.env['TALARIA_KAFKA_PORT']}"
        )

    def talaria(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command beside the stack, talking to its broker."""
        return subprocess.run(
            [sys.executable, "-m", "ui", *args],
            cwd=ROOT,
            env={**self.env, "TALARIA_KAFKA_BOOTSTRAP": self.bootstrap},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def service_log(self, name: str) -> str:
        return (self.data_dir / "run" / f"{name}.log").read_text(errors="replace")


@contextmanager
def talaria_up(folder: Path, **env: str) -> Iterator[Stack]:
    """`talaria up` with its state in `folder`, on free ports; stopped with Ctrl-C (SIGINT),
    which must end it cleanly. `env` adds settings (e.g. TALARIA_KAFKA_BOOTSTRAP)."""
    dicom_port, ui_port = free_port(), free_port()
    environment = {
        **os.environ,
        "TALARIA_DATA_DIR": str(folder / "data"),
        "TALARIA_KAFKA_PORT": str(free_port()),
        "TALARIA_KAFKA_CONTROLLER_PORT": str(free_port()),
        "TALARIA_KAFKA_HEAP_MB": "384",
        "TALARIA_KAFKA_OPTIMIZING_JIT": "false",
        "TALARIA_DICOM_PORT": str(dicom_port),
        "TALARIA_UI_PORT": str(ui_port),
        "TALARIA_METRICS_PORT": str(free_port()),
        "TALARIA_BLOB_MIN_FREE_BYTES": "0",
        "TALARIA_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **env,
    }
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "ui", "up"],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_listening(dicom_port, up, timeout_s=180)
            wait_until_listening(ui_port, up, timeout_s=120)
            yield Stack(
                env=environment,
                dicom_port=dicom_port,
                ui_url=f"http://127.0.0.1:{ui_port}",
                data_dir=folder / "data",
                process=up,
            )
        finally:
            up.send_signal(signal.SIGINT)
            try:
                code = up.wait(timeout=120)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
                code = -1
    assert code == 0, log_path.read_text()[-3000:]


def logged_in(stack: Stack) -> httpx.Client:
    """The first-run admin, password changed as the UI demands."""
    client = httpx.Client(base_url=stack.ui_url, timeout=30)
    token = client.get("/api/session").json()["csrf_token"]
    answer = client.post(
        "/api/login",
        json={"username": "admin", "password": ADMIN_PASSWORD},
        headers={CSRF_HEADER: token},
    )
    assert answer.status_code == 200, answer.text
    client.headers[CSRF_HEADER] = answer.json()["csrf_token"]
    changed = client.post(
        "/api/password",
        json={"current_password": ADMIN_PASSWORD, "new_password": "a-better-password-2026"},
    )
    assert changed.status_code == 200, changed.text
    client.headers[CSRF_HEADER] = changed.json()["csrf_token"]
    return client
