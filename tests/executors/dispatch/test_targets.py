"""Each target type against a real peer: what arrives is what was ingested, byte for byte."""

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from pynetdicom import AE, StoragePresentationContexts, evt

from executors.dispatch import TargetMisconfigured, TargetRefused, TargetUnavailable
from executors.dispatch.target import Batch
from executors.dispatch.targets import open_target, target_settings
from executors.dispatch.targets.folder import COMPLETE_MARKER
from tests.executors.dispatch.conftest import (
    StoreSCP,
    dataset_bytes,
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
