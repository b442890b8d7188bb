"""DICOM senders talk to the receiver: DCMTK's storescu and echoscu, never our own code."""

import subprocess
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config

from bench.dicom_data import ct_instance, new_uid
from infra.catalogue import InstanceReceived
from infra.kafka.broker import LocalBroker
from ingest.part10 import read_file_meta
from ingest.settings import IngestSettings
from tests.ingest.conftest import (
    ECHOSCU,
    RunningReceiver,
    events,
    ingest_settings_for,
    of_type,
    received,
    receiving,
    storescu,
)
from tests.ingest.dicom_files import compress, save_as_dcmtk_file, write_study

pytestmark = pytest.mark.integration


def blob_of(settings: IngestSettings, event: InstanceReceived) -> bytes:
    assert settings.blob_dir is not None
    return (settings.blob_dir / event.blob.key).read_bytes()


def test_echoscu_gets_an_answer(settings: IngestSettings, receiver: RunningReceiver) -> None:
    result = subprocess.run(
        [ECHOSCU, "-aec", "TALARIA", "127.0.0.1", str(settings.dicom_port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_a_two_series_study_arrives_byte_for_byte_with_one_event_per_instance(
    settings: IngestSettings, receiver: RunningReceiver, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", series=2, instances=3)

    result = storescu(settings, files)

    assert result.returncode == 0, result.stderr
    found = events(settings, expected=6 + 2)
    arrived = {event.sop_uid: event for event in received(found)}
    assert len(received(found)) == 6
    for path in files:
        sent = dcmread(path)
        event = arrived[sent.SOPInstanceUID]
        assert blob_of(settings, event) == path.read_bytes()
        assert event.blob.size == path.stat().st_size
        assert event.study_uid == sent.StudyInstanceUID
        assert event.series_uid == sent.SeriesInstanceUID
        assert event.calling_aet == "SCANNER"
        assert event.called_aet == "TALARIA"
        assert event.peer_address == "127.0.0.1"
        assert event.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        assert event.tags["PatientName"] == "Müller^Jürgen"
        assert event.tags["InstitutionName"] == "Hôpital Général"
        assert event.tags["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
        assert event.tags["CodeMeaning"] == "CT of the chest"
        assert event.tags["InstanceNumber"] == str(sent.InstanceNumber)
        assert event.tags["SenderAET"] == "SCANNER"
        assert event.tags["ReceiverAET"] == "TALARIA"
        assert event.tags["SenderAddress"] == "127.0.0.1"
        assert event.tags["ProtocolName"] == ""
    accepted = of_type(found, "AssociationAccepted")
    released = of_type(found, "AssociationReleased")
    assert len(accepted) == len(released) == 1
    assert released[0].payload.instances == 6  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("tool", "proposal", "syntax"),
    [
        ("dcmcjpeg", "-xs", "1.2.840.10008.1.2.4.70"),  # JPEG lossless SV1
        ("dcmcjpls", "-xt", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
        ("dcmcrle", "-xr", "1.2.840.10008.1.2.5"),  # RLE lossless
    ],
)
def test_compressed_instances_are_accepted_as_sent(
    settings: IngestSettings,
    receiver: RunningReceiver,
    tmp_path: Path,
    tool: str,
    proposal: str,
    syntax: str,
) -> None:
    plain = write_study(tmp_path / "plain", series=1, instances=2)
    files = [compress(p, tmp_path / tool / p.name, tool=tool) for p in plain]

    result = storescu(settings, files, proposal)

    assert result.returncode == 0, result.stderr
    arrived = received(events(settings, expected=2 + 2))
    assert {event.transfer_syntax_uid for event in arrived} == {syntax}
    by_uid = {event.sop_uid: event for event in arrived}
    for path in files:
        assert blob_of(settings, by_uid[dcmread(path).SOPInstanceUID]) == path.read_bytes()


def test_eight_concurrent_associations_all_arrive(
    settings: IngestSettings, receiver: RunningReceiver, tmp_path: Path
) -> None:
    # Half the studies have images large enough to be stored off the loop, half small ones.
    studies = [
        write_study(tmp_path / f"study{n}", series=1, instances=4, rows=256 if n % 2 else 64)
        for n in range(8)
    ]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda files: storescu(settings, files), studies))

    assert all(result.returncode == 0 for result in results), [r.stderr for r in results]
    found = events(settings, expected=32 + 16)
    arrived = {event.sop_uid: event for event in received(found)}
    assert len(arrived) == 32
    assert len(of_type(found, "AssociationReleased")) == 8
    for path in (path for files in studies for path in files):
        sent = path.read_bytes()
        assert blob_of(settings, arrived[dcmread(path).SOPInstanceUID]) == sent


def test_a_deflated_instance_is_kept_deflated(
    settings: IngestSettings, receiver: RunningReceiver, tmp_path: Path
) -> None:
    (plain,) = write_study(tmp_path / "plain", series=1, instances=1)
    deflated = compress(plain, tmp_path / "deflated.dcm", tool="dcmconv", options=("+td",))

    result = storescu(settings, [deflated], "-xd")

    assert result.returncode == 0, result.stderr
    (event,) = received(events(settings, expected=1 + 2))
    assert event.transfer_syntax_uid == "1.2.840.10008.1.2.1.99"
    assert event.tags["PatientName"] == "Müller^Jürgen"
    # storescu deflates again as it sends: the stream differs, the data set does not.
    stored = dcmread(BytesIO(blob_of(settings, event)))
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert stored == dcmread(deflated)


def test_compressed_syntaxes_are_refused_when_switched_off(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = ingest_settings_for(kafka_broker, tmp_path / "blobs", accept_compressed=False)
    (plain,) = write_study(tmp_path / "plain", series=1, instances=1)
    jpeg = compress(plain, tmp_path / "jpeg.dcm", tool="dcmcjpeg")

    with receiving(settings):
        result = storescu(settings, [jpeg], "-xs", "-R")

    assert result.returncode != 0
    assert "unable to convert dataset from 'JPEG Lossless" in result.stderr


def test_a_private_sop_class_is_stored_like_any_other(
    settings: IngestSettings,
    receiver: RunningReceiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private = "1.2.826.0.1.3680043.9.7777.1.1"
    ds = ct_instance(study_uid=new_uid(), series_uid=new_uid(), number=1, SOPClassUID=private)
    path = save_as_dcmtk_file(ds, tmp_path / "private.dcm")
    # storescu refuses SOP classes it does not know; pynetdicom sends the file's bytes as they are
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(private, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title="TALARIA")

    status = assoc.send_c_store(path)
    assoc.release()

    assert status.Status == 0x0000
    (event,) = received(events(settings, expected=1 + 2))
    assert event.sop_class_uid == private
    assert event.tags["MediaStorageSOPClassUID"] == private
    # The data set is as sent; the file meta names the sender's implementation (pynetdicom).
    assert data_set(blob_of(settings, event)) == data_set(path.read_bytes())


def data_set(part10: bytes) -> bytes:
    return part10[read_file_meta(part10).dataset_offset :]
