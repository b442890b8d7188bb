"""The other doors: STOW-RS and uploads over HTTP, folder import and the receiver as a command,
all ending in the same blob store and on the same log as a C-STORE."""

import io
import signal
import subprocess
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydicom import dcmread

from infra.catalogue import InstanceReceived
from ingest.service import open_intake
from ingest.settings import IngestSettings
from ingest.web import intake_router
from tests.ingest.conftest import (
    INGEST,
    STORESCU,
    events,
    received,
    receiving_in_workers,
    storescu,
    talaria_env,
)
from tests.ingest.dicom_files import write_study
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def client(settings: IngestSettings) -> Iterator[httpx.Client]:
    """The router mounted on an app, as the UI will, served by a real uvicorn."""
    with open_intake(settings) as intake:
        app = FastAPI()
        app.include_router(intake_router(intake))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run)
        thread.start()
        try:
            wait_for(lambda: server.started, timeout_s=10, what="uvicorn")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                yield http
        finally:
            server.should_exit = True
            thread.join(10)


def multipart_related(files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), data)
        for data in files
    )
    body += b"--%s--\r\n" % boundary.encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def zipped(files: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in files:
            archive.write(path, f"{path.parent.name}/{path.name}")
    return buffer.getvalue()


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_stow_rs_stores_what_it_can_and_names_what_it_could_not(
    settings: IngestSettings, client: httpx.Client, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", series=1, instances=2)
    body, content_type = multipart_related([p.read_bytes() for p in files] + [b"not dicom"])

    response = client.post(
        "/dicomweb/studies", content=body, headers={"content-type": content_type}
    )

    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+json"
    stored = response.json()["00081199"]["Value"]
    assert sorted(i["00081155"]["Value"][0] for i in stored) == sorted(map(sop_uid, files))
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC210]
    arrived = received(events(settings, expected=3))
    assert {e.intake for e in arrived} == {"stow"}
    assert settings.blob_dir is not None
    for event, path in zip(
        sorted(arrived, key=lambda e: e.sop_uid), sorted(files, key=sop_uid), strict=True
    ):
        assert (settings.blob_dir / event.blob.key).read_bytes() == path.read_bytes()


def test_a_zip_a_single_file_and_a_browser_form_can_be_uploaded(
    settings: IngestSettings, client: httpx.Client, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", series=2, instances=2)

    as_zip = client.post(
        "/ingest/upload", content=zipped(files[:2]), headers={"content-type": "application/zip"}
    )
    as_file = client.post(
        "/ingest/upload",
        content=files[2].read_bytes(),
        headers={"content-type": "application/dicom"},
    )
    as_form = client.post(
        "/ingest/upload", files={"file": ("study.zip", zipped(files[3:]), "application/zip")}
    )

    assert [as_zip.status_code, as_file.status_code, as_form.status_code] == [200, 200, 200]
    arrived = received(events(settings, expected=4))
    assert sorted(e.sop_uid for e in arrived) == sorted(map(sop_uid, files))
    assert {e.intake for e in arrived} == {"upload"}


def test_stow_rs_wants_multipart_related(client: httpx.Client) -> None:
    response = client.post(
        "/dicomweb/studies", content=b"x", headers={"content-type": "application/json"}
    )

    assert response.status_code == 415


def test_a_folder_is_imported_and_its_strays_are_counted(
    settings: IngestSettings, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "folder", series=1, instances=3)
    (tmp_path / "folder" / "README.txt").write_text("not an image")

    result = subprocess.run(
        [*INGEST, "import", str(tmp_path / "folder")],
        env=talaria_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1  # one file was not DICOM
    assert "Imported 3 of 4 files; refused 1 with 0xC210." in result.stdout
    arrived = received(events(settings, expected=4))
    assert sorted(e.sop_uid for e in arrived) == sorted(map(sop_uid, files))
    assert {e.intake for e in arrived} == {"import"}


def test_the_receiver_runs_as_a_command_with_metrics_until_terminated(
    settings: IngestSettings, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = talaria_env(settings) | {"TALARIA_METRICS_PORT": str(metrics_port)}
    process = subprocess.Popen([*INGEST, "run"], env=env)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_for(lambda: _answers(metrics_url), timeout_s=30, what="the receiver's /metrics")
        files = write_study(tmp_path / "study", series=1, instances=2)
        assert storescu(settings, files).returncode == 0
        metrics = httpx.get(metrics_url).text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert 'talaria_ingest_instances_total{intake="dicom"} 2.0' in metrics
    assert 'talaria_ingest_associations_total{outcome="released"} 1.0' in metrics
    assert "talaria_ingest_publish_seconds_count 2.0" in metrics


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def test_receiver_workers_share_the_port_evenly_each_with_its_journal(
    settings: IngestSettings, tmp_path: Path
) -> None:
    journal = settings.journal_root
    env = {"TALARIA_ACK_AFTER": "journal", "TALARIA_JOURNAL_DIR": str(journal)}
    with receiving_in_workers(settings, 2, **env) as metrics_port:
        # The port is bound only once both workers are ready, their /metrics served.
        assert _answers(f"http://127.0.0.1:{metrics_port}/metrics")
        assert _answers(f"http://127.0.0.1:{metrics_port + 1}/metrics")
        # Six associations at once, each long enough to overlap the others: three per worker,
        # where a hash of the peer addresses (SO_REUSEPORT) splits them 3/3 in 20 of 64 cases.
        studies = [write_study(tmp_path / f"s{n}", series=1, instances=30) for n in range(6)]
        senders = [
            subprocess.Popen(
                [STORESCU, "-aec", settings.ae_title, "127.0.0.1", str(settings.dicom_port)]
                + [str(path) for path in files],
                env={"TCP_NODELAY": "1"},
            )
            for files in studies
        ]
        assert [sender.wait(timeout=120) for sender in senders] == [0] * len(studies)
    sent = [path for files in studies for path in files]
    found = events(settings, expected=len(sent), kind="InstanceReceived")
    arrived = received(found)
    assert sorted(e.sop_uid for e in arrived) == sorted(map(sop_uid, sent))
    associations_by_worker: dict[str, set[int]] = {}
    for event in found:
        if isinstance(event.payload, InstanceReceived):
            associations_by_worker.setdefault(event.source, set()).add(event.payload.peer_port)
    assert sorted(map(len, associations_by_worker.values())) == [3, 3]
    assert (journal / "events.journal").exists()
    assert (journal.with_name(f"{journal.name}.1") / "events.journal").exists()


def test_receiver_workers_stop_when_their_parent_is_killed(settings: IngestSettings) -> None:
    metrics_port = free_port()
    env = talaria_env(settings) | {
        "TALARIA_DICOM_WORKERS": "2",
        "TALARIA_METRICS_PORT": str(metrics_port),
    }
    process = subprocess.Popen([*INGEST, "run"], env=env)
    try:
        for port in (metrics_port, metrics_port + 1):
            url = f"http://127.0.0.1:{port}/metrics"
            wait_for(lambda url=url: _answers(url), timeout_s=60, what="each worker's /metrics")
    finally:
        process.kill()
        process.wait(timeout=10)
    for port in (metrics_port, metrics_port + 1):
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda url=url: not _answers(url), timeout_s=30, what="the orphaned worker's end")
