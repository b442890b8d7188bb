"""Each target type against a real peer: what arrives is what was ingested, byte for byte."""

import base64
import getpass
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest
from pynetdicom import AE, StoragePresentationContexts, evt

from executors.dispatch import TargetMisconfigured, TargetRefused, TargetUnavailable
from executors.dispatch.target import Batch
from executors.dispatch.targets import open_target, target_settings
from executors.dispatch.targets.folder import COMPLETE_MARKER
from tests.executors.dispatch.conftest import (
    Orthanc,
    Sshd,
    StoreSCP,
    dataset_bytes,
    dataset_bytes_of,
    make_certificates,
    storescp_command,
)
from tests.support import free_port, serving

pytestmark = pytest.mark.integration


def by_sop(paths: list[Path]) -> dict[str, bytes]:
    return {path.name.split(".", 1)[1]: dataset_bytes(path) for path in paths}


def sent(batch: Batch) -> dict[str, bytes]:
    return {i.sop_uid: dataset_bytes(i.path) for i in batch.instances}


def test_a_dicom_target_stores_every_instance_unchanged(storescp: StoreSCP, study: Batch) -> None:
    target = open_target(
        {"target_type": "dicom", "ip": "127.0.0.1", "port": storescp.port, "aet_target": "STORE"}
    )
    assert "succeeded" in target.test()
    delivery = target.send(study)
    assert delivery.confirmed == 6
    assert by_sop(storescp.received()) == sent(study)


def test_a_dicom_target_that_is_down_is_unavailable_not_refused(study: Batch) -> None:
    target = open_target({"target_type": "dicom", "ip": "127.0.0.1", "port": free_port()})
    with pytest.raises(TargetUnavailable):
        target.send(study)
    with pytest.raises(TargetUnavailable):
        target.test()


def test_return_to_sender_and_passing_the_incoming_ae_titles(
    storescp: StoreSCP, study: Batch
) -> None:
    target = open_target(
        {
            "target_type": "dicom",
            "ip": "sender",
            "port": storescp.port,
            "pass_receiver_aet": True,
        }
    )
    with pytest.raises(TargetMisconfigured, match="sender address"):
        target.send(study)
    back = Batch(
        job_id="job-2",
        study_uid=study.study_uid,
        instances=study.instances[:1],
        tags={"SenderAddress": "127.0.0.1", "ReceiverAET": "STORE", "SenderAET": "CT1"},
    )
    assert target.send(back).confirmed == 1
    assert len(storescp.received()) == 1


def test_a_dicom_tls_target_stores_over_mutual_tls(tmp_path: Path, study: Batch) -> None:
    certificates = make_certificates(tmp_path / "tls")
    folder = tmp_path / "tls-received"
    folder.mkdir()
    port = free_port()
    tls_options = (
        "+tls",
        str(certificates["server.key"]),
        str(certificates["server.pem"]),
        "+cf",
        str(certificates["ca.pem"]),
        "-rc",
    )
    with serving(storescp_command(port, folder, *tls_options), port=port):
        target = open_target(
            {
                "target_type": "dicomtls",
                "ip": "127.0.0.1",
                "port": port,
                "aet_target": "STORE",
                "tls_key": str(certificates["client.key"]),
                "tls_cert": str(certificates["client.pem"]),
                "ca_cert": str(certificates["ca.pem"]),
            }
        )
        assert target.send(study).confirmed == 6
        assert by_sop(sorted(folder.iterdir())) == sent(study)


def test_a_folder_target_copies_the_job_and_marks_it_complete_last(
    tmp_path: Path, study: Batch
) -> None:
    root = tmp_path / "out"
    root.mkdir()
    target = open_target(
        {"target_type": "folder", "folder": str(root), "exclude_pattern": ["*#nothing*"]}
    )
    assert "writable" in target.test()
    assert target.send(study).confirmed == 6
    job = root / study.job_id
    files = sorted(p for p in job.iterdir() if p.name != COMPLETE_MARKER)
    assert (job / COMPLETE_MARKER).exists()
    assert {p.name for p in files} == {f"{i.series_uid}#{i.sop_uid}.dcm" for i in study.instances}
    for instance in study.instances:
        path = job / f"{instance.series_uid}#{instance.sop_uid}.dcm"
        assert path.read_bytes() == instance.path.read_bytes()


def test_an_s3_target_uploads_every_instance(moto_endpoint: str, study: Batch) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket="archive")
    config = {
        "target_type": "s3",
        "bucket": "archive",
        "prefix": "talaria",
        "endpoint_url": moto_endpoint,
        "access_key_id": "test",
        "secret_access_key": "test",
    }
    target = open_target(config)
    assert "reachable" in target.test()
    assert target.send(study).confirmed == 6
    for instance in study.instances:
        key = f"talaria/{study.study_uid}/{instance.series_uid}/{instance.sop_uid}.dcm"
        body = s3.get_object(Bucket="archive", Key=key)["Body"]
        assert body.read() == instance.path.read_bytes()
        body.close()
    with pytest.raises(TargetMisconfigured):
        open_target({**config, "bucket": "nope-missing"}).test()


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"target_type": "carrier-pigeon"}, "unknown target type"),
        ({"target_type": "dicom", "ip": "x"}, "port"),
        ({"target_type": "dicom", "ip": "x", "port": 99999}, "port"),
        ({"target_type": "dicom", "ip": "x", "port": 104, "aet_target": "A" * 17}, "AE title"),
        ({"target_type": "folder", "folder": ""}, "folder"),
    ],
)
def test_invalid_target_settings_are_refused_with_a_reason(
    config: dict[str, object], problem: str
) -> None:
    with pytest.raises(TargetMisconfigured, match=problem):
        target_settings(config)


@pytest.fixture
def scripted_peer() -> Iterator[tuple[int, list[int]]]:
    """A pynetdicom SCP that knows only the called AE title PEER and answers each C-STORE with
    the next status of its script."""
    statuses: list[int] = []
    ae = AE(ae_title="PEER")
    ae.require_called_aet = True
    ae.supported_contexts = StoragePresentationContexts
    port = free_port()

    def answer(_event: evt.Event) -> int:
        return statuses.pop(0) if statuses else 0x0000

    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, answer)]
    )
    try:
        yield port, statuses
    finally:
        server.shutdown()


def test_a_peer_that_rejects_the_association_permanently_is_refused(
    scripted_peer: tuple[int, list[int]], study: Batch
) -> None:
    port, _ = scripted_peer
    target = open_target(
        {"target_type": "dicom", "ip": "127.0.0.1", "port": port, "aet_target": "STRANGER"}
    )
    with pytest.raises(TargetRefused, match="permanently"):
        target.send(study)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(0xA700, TargetUnavailable), (0xA900, TargetRefused), (0xC000, TargetRefused)],
)
def test_failure_statuses_are_kept_apart_from_warnings(
    scripted_peer: tuple[int, list[int]], study: Batch, status: int, outcome: type[Exception]
) -> None:
    port, statuses = scripted_peer
    target = open_target(
        {"target_type": "dicom", "ip": "127.0.0.1", "port": port, "aet_target": "PEER"}
    )
    statuses[:] = [0xB000, 0x0000, 0xB007]
    delivery = target.send(study)
    assert (delivery.confirmed, delivery.warnings) == (6, 2)
    statuses[:] = [0x0000, status]
    with pytest.raises(outcome, match=f"0x{status:04X}"):
        target.send(study)


def test_a_dicomweb_target_stores_through_stow_rs_into_orthanc(
    orthanc: Orthanc, study: Batch
) -> None:
    target = open_target(
        {"target_type": "dicomweb", "url": f"{orthanc.url}/dicom-web", "batch_size": 4}
    )
    assert "answered 200" in target.test()
    assert target.send(study).confirmed == 6
    with httpx.Client(base_url=orthanc.url) as client:
        for instance in study.instances:
            found = client.post("/tools/lookup", content=instance.sop_uid).json()
            (match,) = found
            stored = client.get(f"/instances/{match['ID']}/file").content
            assert dataset_bytes_of(stored) == dataset_bytes(instance.path)


def test_a_dicomweb_target_that_answers_5xx_or_is_down_is_unavailable(study: Batch) -> None:
    target = open_target({"target_type": "dicomweb", "url": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(TargetUnavailable):
        target.send(study)


def ssh_config(sshd: Sshd, **extra: object) -> dict[str, object]:
    return {
        "host": "127.0.0.1",
        "port": sshd.port,
        "user": getpass.getuser(),
        "key_file": str(sshd.key_file),
        "known_hosts": str(sshd.known_hosts),
        "folder": str(sshd.folder),
        **extra,
    }


@pytest.mark.parametrize("kind", ["sftp", "rsync"])
def test_ssh_targets_copy_the_job_and_run_the_command_after(
    sshd: Sshd, study: Batch, kind: str, tmp_path: Path
) -> None:
    marker = tmp_path / f"{kind}-ran"
    target = open_target({"target_type": kind, **ssh_config(sshd, command=f"touch {marker} && ls")})
    assert "logged in" in target.test()
    assert target.send(study).confirmed == 6
    job = sshd.folder / study.job_id
    for instance in study.instances:
        path = job / f"{instance.series_uid}#{instance.sop_uid}.dcm"
        assert path.read_bytes() == instance.path.read_bytes()
    assert marker.exists()


def test_an_unknown_host_key_is_refused_not_trusted(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    target = open_target({"target_type": "sftp", **ssh_config(sshd, known_hosts=str(empty))})
    with pytest.raises(TargetMisconfigured, match="key is not in"):
        target.test()


class XnatDouble(BaseHTTPRequestHandler):
    """A stand-in for XNAT's import service: XNAT itself cannot run here. It checks the
    credentials and the query, keeps the uploaded zip, and answers as XNAT does."""

    uploads: ClassVar[list[tuple[dict[str, list[str]], bytes]]] = []

    def _authorised(self) -> bool:
        expected = "Basic " + base64.b64encode(b"ann:secret").decode()
        if self.headers.get("Authorization") == expected:
            return True
        self.send_response(401)
        self.end_headers()
        return False

    def do_GET(self) -> None:
        if self._authorised() and self.path == "/data/auth":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

    def do_POST(self) -> None:
        if not self._authorised():
            return
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        XnatDouble.uploads.append((parse_qs(url.query), body))
        self.send_response(200 if url.path == "/data/services/import" else 404)
        self.end_headers()
        self.wfile.write(b"/data/prearchive/projects/P1/x")

    def log_message(self, *_args: object) -> None:
        pass


def test_an_xnat_target_imports_the_study_as_one_zip(study: Batch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), XnatDouble)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        config = {
            "target_type": "xnat",
            "host": f"http://127.0.0.1:{server.server_port}",
            "project_id": "P1",
            "user": "ann",
            "password": "secret",
        }
        target = open_target(config)
        assert "logged in" in target.test()
        assert target.send(study).confirmed == 6
        with pytest.raises(TargetMisconfigured):
            open_target({**config, "password": "wrong"}).test()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    ((query, body),) = XnatDouble.uploads
    assert query["PROJECT_ID"] == ["P1"]
    assert query["SUBJECT_ID"] == ["P001"]
    assert query["EXPT_LABEL"] == ["P001_2024-03-14"]
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        contents = {archive.read(name) for name in archive.namelist()}
    assert contents == {instance.path.read_bytes() for instance in study.instances}
