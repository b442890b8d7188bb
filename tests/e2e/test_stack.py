"""The whole stack as a user runs it: `talaria up`, a routing file, two studies from DCMTK.

Study 1 is a CT series: rule `ct` routes it to a DICOM target (DCMTK storescp) and a folder
target and notifies a webhook (a local HTTP server) on reception and completion. Study 2 has a
PT series, which rule `pt` runs through a processing module (a busybox container copying its
inputs) and routes the module's output to the DICOM target, and an MR series that matches no rule
and is discarded. The DICOM target is suspended through the API while the series arrive, so the
queue shows their jobs waiting; once resumed, everything arrives byte for byte. The archive, the
queue, the audit trail and the services' JSON logs tell the same story.
"""

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydicom import dcmread

from tests.e2e.stack import Stack, logged_in
from tests.executors.dispatch.conftest import dataset_bytes, storescp_command
from tests.executors.images import busybox_module_image, docker_client
from tests.executors.notify.conftest import WebhookServer
from tests.ingest.dicom_files import write_study
from tests.support import DCMTK, free_port, serving, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
WEBHOOK_PAYLOAD = (
    '"rule": "{{ rule }}", "event": "{{ event }}", "task": "{{ task_id }}", '
    '"patient": "{{ patient_name }}"'
)


@pytest.fixture(scope="module")
def copy_module() -> str:
    """The busybox module image (Docker started first, so that `talaria up` runs the processor)."""
    return busybox_module_image(docker_client())


def routing(*, pacs_port: int, folder: Path, webhook_url: str, module: str) -> dict[str, object]:
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
        "modules": {"copy": {"docker_tag": module, "environment": {"BEHAVIOUR": "copy"}}},
        "rules": {
            "ct": {
                "rule": "@Modality@ == 'CT'",
                "action": "route",
                "target": ["pacs", "archive"],
                "notification_webhook": webhook_url,
                "notification_payload": WEBHOOK_PAYLOAD,
            },
            "pt": {
                "rule": "@Modality@ == 'PT'",
                "action": "both",
                "processing_module": "copy",
                "target": "pacs",
            },
        },
    }


def statuses(client: httpx.Client) -> dict[str, str]:
    rows = client.get("/api/archive").json()["rows"]
    return {row["modality"]: row["status"] for row in rows}


def send(stack: Stack, files: list[Path]) -> None:
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


def set_modality(files: list[Path], modality: str) -> None:
    for path in files:
        subprocess.run(
            [f"{DCMTK}/dcmodify", "-nb", "-m", f"Modality={modality}", str(path)], check=True
        )


def log_entries(stack: Stack, service: str) -> list[dict[str, Any]]:
    """The service's JSON log lines (other output, e.g. a library's, is not JSON)."""
    entries = []
    for line in stack.service_log(service).splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


@pytest.mark.timeout(600)  # the stack starts in 1-2 minutes on a loaded 2-core machine
def test_two_studies_are_routed_processed_notified_and_discarded_as_the_rules_say(
    copy_module: str, stack: Stack, webhook: WebhookServer, tmp_path: Path
) -> None:
    pacs_port = free_port()
    pacs, folder = tmp_path / "pacs", tmp_path / "archive"
    pacs.mkdir()
    folder.mkdir()
    config = tmp_path / "routing.yaml"
    config.write_text(
        yaml.safe_dump(
            routing(pacs_port=pacs_port, folder=folder, webhook_url=webhook.url, module=copy_module)
        )
    )
    applied = stack.talaria("config", "apply", str(config))
    assert applied.returncode == 0, applied.stderr

    ct = write_study(tmp_path / "ct", series=1, instances=3)
    second = write_study(tmp_path / "second", series=2, instances=2)
    pt, mr = second[:2], second[2:]
    set_modality(pt, "PT")
    set_modality(mr, "MR")

    client = logged_in(stack)
    try:
        held = client.post("/api/queue/suspend", json={"queue": "target:pacs"})
        assert held.status_code == 204, held.text
        send(stack, ct)
        send(stack, second)

        def waiting_for_pacs() -> list[dict[str, Any]]:
            routing_jobs = client.get("/api/queue").json()["routing"]
            return [job for job in routing_jobs if job["target"] == "pacs"]

        wait_for(
            lambda: len(waiting_for_pacs()) == 2,
            timeout_s=120,
            what="the CT series and the module's output waiting for the suspended target",
        )
        queue = client.get("/api/queue").json()
        assert queue["suspended"] == ["target:pacs"]
        assert {job["rule"] for job in waiting_for_pacs()} == {"ct", "pt"}
        assert {job["state"] for job in waiting_for_pacs()} == {"queued"}
        assert list(pacs.iterdir()) == []

        with serving(storescp_command(pacs_port, pacs), port=pacs_port):
            resumed = client.post("/api/queue/resume", json={"queue": "target:pacs"})
            assert resumed.status_code == 204, resumed.text
            wait_for(lambda: len(list(pacs.iterdir())) == 5, timeout_s=120, what="5 at PACS")
            wait_for(
                lambda: any((job / ".complete").exists() for job in folder.iterdir()),
                timeout_s=60,
                what="the folder target's job",
            )

        # The CT series and the module's output (a copy of the PT series) reached PACS unchanged.
        assert {dataset_bytes(p) for p in pacs.iterdir()} == {dataset_bytes(p) for p in ct + pt}
        (job,) = [p for p in folder.iterdir() if p.is_dir()]
        copied = {p.read_bytes() for p in job.iterdir() if p.suffix == ".dcm"}
        assert copied == {p.read_bytes() for p in ct}

        wait_for(
            lambda: statuses(client) == {"CT": "done", "PT": "done", "MR": "discarded"},
            timeout_s=90,
            what="the archive to show CT and PT done and MR discarded",
        )
        wait_for(
            lambda: len(webhook.received) == 3, timeout_s=60, what="the CT rule's three webhooks"
        )
        queue = client.get("/api/queue").json()
        assert (queue["routing"], queue["processing"], queue["failures"]) == ([], [], [])
        assert queue["suspended"] == []
        pt_uid = next(
            row["series_uid"]
            for row in client.get("/api/archive").json()["rows"]
            if row["modality"] == "PT"
        )
        detail = client.get(f"/api/archive/{pt_uid}").json()
        assert [result["module"] for result in detail["results"]] == ["copy"]

        audit = client.get("/api/audit").json()["entries"]
        saved = {(entry["type"], entry["name"]) for entry in audit}
        assert {("RuleSaved", "ct"), ("RuleSaved", "pt"), ("ModuleSaved", "copy")} <= saved
        assert {("TargetSaved", "pacs"), ("TargetSaved", "archive")} <= saved
        operator = {(entry["type"], entry["actor"]) for entry in audit}
        assert {("QueueSuspended", "admin"), ("QueueResumed", "admin")} <= operator
    finally:
        client.close()

    # Reception once, completion once per target; patient data hidden without PHI notifications.
    hooks = [body for status, body in webhook.received if status == 200]
    assert sorted(hook["event"] for hook in hooks) == ["COMPLETED", "COMPLETED", "RECEIVED"]
    assert {(hook["rule"], hook["patient"]) for hook in hooks} == {("ct", "UNKNOWN")}
    assert len({hook["task"] for hook in hooks}) == 3

    ct_study = dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID
    dispatched = [e for e in log_entries(stack, "dispatcher") if e["event"] == "dispatched"]
    assert {e["target"] for e in dispatched if e["study_uid"] == ct_study} == {"pacs", "archive"}
    assert all(e["job_id"] and e["series_uids"] and e["level"] == "info" for e in dispatched)
    decided = [e for e in log_entries(stack, "streams") if e["event"] == "decided"]
    assert {e["type"] for e in decided} >= {"DispatchSeries", "ProcessSeries", "SeriesDiscarded"}
