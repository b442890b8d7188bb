"""The whole stack as a user runs it: `talaria up`, a routing file, two series from DCMTK.

The CT series reaches a DICOM target (DCMTK storescp) and a folder target byte for byte; the MR
series matches no rule and is discarded; the archive, the queue and the audit trail show it
through the web API.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.executors.dispatch.conftest import dataset_bytes, storescp_command
from tests.ingest.dicom_files import write_study
from tests.support import DCMTK, free_port, serving, wait_for, wait_until_listening

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
ROOT = Path(__file__).parents[2]
ADMIN_PASSWORD = "first-password-for-the-story"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    dicom_port: int
    ui_url: str
    data_dir: Path

    def talaria(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command beside the stack, talking to the broker `talaria up` started."""
        port = self.env["TALARIA_KAFKA_PORT"]
        return subprocess.run(
            [sys.executable, "-m", "ui", *args],
            cwd=ROOT,
            env={**self.env, "TALARIA_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    dicom_port, ui_port = free_port(), free_port()
    env = {
        **os.environ,
        "TALARIA_DATA_DIR": str(tmp_path / "data"),
        "TALARIA_KAFKA_PORT": str(free_port()),
        "TALARIA_KAFKA_CONTROLLER_PORT": str(free_port()),
        "TALARIA_KAFKA_HEAP_MB": "384",
        "TALARIA_DICOM_PORT": str(dicom_port),
        "TALARIA_UI_PORT": str(ui_port),
        "TALARIA_METRICS_PORT": str(free_port()),
        "TALARIA_BLOB_MIN_FREE_BYTES": "0",
        "TALARIA_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "ui", "up"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_until_listening(dicom_port, up, timeout_s=180)
        wait_until_listening(ui_port, up, timeout_s=120)
        yield Stack(
            env=env,
            dicom_port=dicom_port,
            ui_url=f"http://127.0.0.1:{ui_port}",
            data_dir=tmp_path / "data",
        )
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(timeout=120)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
            code = -1
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]


def routing(*, pacs_port: int, folder: Path) -> dict[str, object]:
    return {
        "settings": {"series_complete_trigger": 2},
        "targets": {
            "pacs": {
                "target_type": "dicom",
                "ip": "127.0.0.1",
                "port": pacs_port,
                "aet_target": "PACS",
            },
            "archive": {"target_type": "folder", "folder": str(folder)},
        },
        "rules": {
            "ct": {"rule": "@Modality@ == 'CT'", "action": "route", "target": ["pacs", "archive"]}
        },
    }


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


def statuses(client: httpx.Client) -> dict[str, str]:
    rows = client.get("/api/archive").json()["rows"]
    return {row["modality"]: row["status"] for row in rows}


def test_a_ct_series_is_routed_to_two_targets_and_an_mr_series_is_discarded(
    stack: Stack, tmp_path: Path
) -> None:
    pacs_port = free_port()
    pacs, folder = tmp_path / "pacs", tmp_path / "archive"
    pacs.mkdir()
    folder.mkdir()
    config = tmp_path / "routing.yaml"
    config.write_text(yaml.safe_dump(routing(pacs_port=pacs_port, folder=folder)))
    applied = stack.talaria("config", "apply", str(config))
    assert applied.returncode == 0, applied.stderr

    ct = write_study(tmp_path / "ct", series=1, instances=3)
    mr = write_study(tmp_path / "mr", series=1, instances=2)
    for path in mr:
        subprocess.run([f"{DCMTK}/dcmodify", "-nb", "-m", "Modality=MR", str(path)], check=True)
    with serving(storescp_command(pacs_port, pacs), port=pacs_port):
        for files in (ct, mr):
            sent = subprocess.run(
                [
                    f"{DCMTK}/storescu",
                    "-aec",
                    "TALARIA",
                    "127.0.0.1",
                    str(stack.dicom_port),
                    *map(str, files),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(list(pacs.iterdir())) == 3, timeout_s=120, what="3 instances at PACS")
        jobs = [p for p in folder.iterdir() if p.is_dir()]
        wait_for(
            lambda: any((job / ".complete").exists() for job in folder.iterdir()),
            timeout_s=60,
            what="the folder target's job",
        )

    assert {dataset_bytes(p) for p in pacs.iterdir()} == {dataset_bytes(p) for p in ct}
    (job,) = [p for p in folder.iterdir() if p.is_dir()]
    copied = {p.read_bytes() for p in job.iterdir() if p.suffix == ".dcm"}
    assert copied == {p.read_bytes() for p in ct}
    del jobs

    client = logged_in(stack)
    try:
        wait_for(
            lambda: statuses(client) == {"CT": "done", "MR": "discarded"},
            timeout_s=90,
            what="the archive to show the CT series done and the MR series discarded",
        )
        queue = client.get("/api/queue").json()
        assert queue is not None
        audit = client.get("/api/audit").json()
        saved = {(entry["type"], entry["name"]) for entry in audit["entries"]}
        assert {("RuleSaved", "ct"), ("TargetSaved", "pacs")} <= saved
    finally:
        client.close()
