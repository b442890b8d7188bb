"""Whatever a peer sends and whatever fails behind us, the receiver answers with a DICOM status
and stays up; an instance refused leaves nothing half-stored behind, and nothing taken is lost."""

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config

from bench.dicom_data import CT_IMAGE_STORAGE
from infra.catalogue import InstanceReceived, InstanceRejected, ServiceHeartbeat
from infra.kafka.broker import LocalBroker
from infra.topics import Topic
from ingest.settings import IngestSettings
from tests.conftest import start_broker
from tests.ingest.conftest import (
    ECHOSCU,
    RunningReceiver,
    events,
    ingest_settings_for,
    receiving,
    storescu,
)
from tests.ingest.dicom_files import write_study
from tests.support import free_port, reading, wait_for

pytestmark = pytest.mark.integration

OUT_OF_RESOURCES = "Refused: OutOfResources"
CANNOT_UNDERSTAND = "Error: CannotUnderstand"


def statuses(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The store responses storescu -v reports, in order."""
    lines = (result.stdout + result.stderr).splitlines()
    return [
        line.split("(", 1)[1].rstrip(")") for line in lines if "Received Store Response" in line
    ]


def stored_files(settings: IngestSettings) -> list[Path]:
    assert settings.blob_dir is not None
    return [p for p in settings.blob_dir.rglob("*") if p.is_file()]


def rejections(settings: IngestSettings, expected: int) -> list[InstanceRejected]:
    found = events(settings, expected=expected)
    return [e.payload for e in found if isinstance(e.payload, InstanceRejected)]


def still_answers(settings: IngestSettings) -> bool:
    echo = [ECHOSCU, "-aec", "TALARIA", "127.0.0.1", str(settings.dicom_port)]
    return subprocess.run(echo, capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def stoppable_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A broker these stories may stop and start without disturbing the others."""
    broker = start_broker(tmp_path_factory.mktemp("kafka"))
    yield broker
    broker.stop()


@pytest.fixture
def own_broker(stoppable_broker: LocalBroker) -> LocalBroker:
    stoppable_broker.start()  # a no-op unless an earlier story left it stopped
    return stoppable_broker


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def retry_until_stored(settings: IngestSettings, files: list[Path], *, timeout_s: float) -> None:
    """What a sending PACS does: send again later until every instance is answered Success."""
    deadline = time.monotonic() + timeout_s
    while statuses(storescu(settings, files, "-v", "-nh")) != ["Success"] * len(files):
        assert time.monotonic() < deadline, "the receiver never took the instances back"
        time.sleep(1)


def assert_on_log_as_sent(settings: IngestSettings, files: list[Path]) -> None:
    """Each file has one InstanceReceived (one event id) and its blob is the file as sent."""
    found = events(settings, expected=len(files), kind="InstanceReceived", timeout_s=60)
    event_ids: dict[str, set[str]] = {}
    blobs: dict[str, str] = {}
    for envelope in found:
        if isinstance(envelope.payload, InstanceReceived):
            event_ids.setdefault(envelope.payload.sop_uid, set()).add(envelope.event_id)
            blobs[envelope.payload.sop_uid] = envelope.payload.blob.key
    sent = {sop_uid(path): path for path in files}
    assert sorted(event_ids) == sorted(sent)
    assert all(len(ids) == 1 for ids in event_ids.values())  # redelivery keeps the event id
    assert settings.blob_dir is not None
    for uid, key in blobs.items():
        assert (settings.blob_dir / key).read_bytes() == sent[uid].read_bytes()


def test_broker_acknowledged_intake_refuses_while_the_broker_is_down_and_loses_nothing(
    own_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = ingest_settings_for(
        own_broker, tmp_path / "blobs", publish_timeout_s=3, ack_after="broker"
    )
    before = write_study(tmp_path / "before", series=1, instances=2)
    during = write_study(tmp_path / "during", series=1, instances=2)
    with receiving(settings):
        assert storescu(settings, before).returncode == 0
        own_broker.stop()

        refused = storescu(settings, during, "-v", "-nh")

        assert statuses(refused) == [OUT_OF_RESOURCES] * 2
        assert len(stored_files(settings)) == 2  # nothing of the refused ones stays
        own_broker.start()
        retry_until_stored(settings, during, timeout_s=60)

    assert_on_log_as_sent(settings, before + during)


def test_journaled_intake_keeps_what_it_took_and_refuses_once_the_broker_stays_away(
    own_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = ingest_settings_for(
        own_broker, tmp_path / "blobs", publish_timeout_s=4, ack_after="journal"
    )
    before = write_study(tmp_path / "before", series=1, instances=2)
    just_after = write_study(tmp_path / "just-after", series=1, instances=2)
    later = write_study(tmp_path / "later", series=1, instances=2)
    with receiving(settings):
        assert storescu(settings, before).returncode == 0
        assert_on_log_as_sent(settings, before)  # forwarded: nothing waits in the journal
        own_broker.stop()

        taken = storescu(settings, just_after, "-v", "-nh")  # durable, in the journal
        time.sleep(settings.publish_timeout_s + 1)
        refused = storescu(settings, later, "-v", "-nh")

        assert statuses(taken) == ["Success"] * 2
        assert statuses(refused) == [OUT_OF_RESOURCES] * 2
        assert len(stored_files(settings)) == 4
        own_broker.start()
        retry_until_stored(settings, later, timeout_s=60)

    assert_on_log_as_sent(settings, before + just_after + later)


def test_journaled_events_survive_a_killed_receiver(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = ingest_settings_for(
        kafka_broker, tmp_path / "blobs", publish_timeout_s=30, ack_after="journal"
    )
    files = write_study(tmp_path / "study", series=1, instances=3)
    env = {
        **os.environ,
        "TALARIA_ACK_AFTER": "journal",
        "TALARIA_TOPIC_PREFIX": settings.topic_prefix,
        "TALARIA_BLOB_DIR": str(settings.blob_dir),
        "TALARIA_JOURNAL_DIR": str(settings.journal_dir),
        "TALARIA_BLOB_MIN_FREE_BYTES": "0",
        "TALARIA_DICOM_PORT": str(settings.dicom_port),
        "TALARIA_METRICS_PORT": str(free_port()),
    }
    talaria = [sys.executable, "-m", "ingest", "run"]
    no_broker = f"127.0.0.1:{free_port()}"  # the first run never reaches a broker
    first = subprocess.Popen(talaria, env=env | {"TALARIA_KAFKA_BOOTSTRAP": no_broker})
    try:
        wait_for(lambda: still_answers(settings), timeout_s=30, what="the receiver")
        assert statuses(storescu(settings, files, "-v")) == ["Success"] * 3
    finally:
        first.kill()
        first.wait()

    second = subprocess.Popen(
        talaria, env=env | {"TALARIA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    )
    try:
        assert_on_log_as_sent(settings, files)
        with reading(settings, [Topic.HEARTBEATS]) as log:  # the first one could not publish
            log.wait(
                lambda r: (
                    {(b.service, b.instance) for b in r.of(ServiceHeartbeat)}
                    == {("receiver", f"{socket.gethostname()}:{second.pid}")}
                ),
                timeout_s=20,
                what="the second receiver's heartbeat",
            )
    finally:
        second.terminate()
        second.wait(timeout=30)


def test_below_the_free_space_watermark_instances_are_refused_out_of_resources(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = ingest_settings_for(kafka_broker, tmp_path / "blobs", blob_min_free_bytes=10**18)
    files = write_study(tmp_path / "study", series=1, instances=2)

    with receiving(settings):
        result = storescu(settings, files, "-v", "-nh")

    assert statuses(result) == [OUT_OF_RESOURCES] * 2
    assert stored_files(settings) == []
    refused = rejections(settings, expected=2 + 2)
    assert [r.status for r in refused] == [0xA700, 0xA700]
    assert "blob store full" in refused[0].reason


def test_a_path_in_the_series_uid_and_a_ten_megabyte_name_cannot_be_understood(
    settings: IngestSettings, receiver: RunningReceiver, tmp_path: Path
) -> None:
    traversal, huge = write_study(tmp_path / "study", series=1, instances=2)
    subprocess.run(["dcmodify", "-nb", "-m", "(0020,000e)=../../x", str(traversal)], check=True)
    name = tmp_path / "name.txt"
    name.write_text("A" * 10_000_000)
    implicit = tmp_path / "implicit.dcm"
    subprocess.run(["dcmconv", "+ti", str(huge), str(implicit)], check=True)
    subprocess.run(["dcmodify", "-nb", "-mf", f"(0010,0010)={name}", str(implicit)], check=True)

    result = storescu(settings, [traversal, implicit], "-v", "-nh", "-xi")

    assert statuses(result) == [CANNOT_UNDERSTAND] * 2
    assert stored_files(settings) == []
    reasons = [r.reason for r in rejections(settings, expected=2 + 2)]
    assert any("SeriesInstanceUID" in reason for reason in reasons)
    assert any("PatientName" in reason for reason in reasons)
    assert still_answers(settings)


def send_raw_data_set(settings: IngestSettings, path: Path) -> int:
    """pynetdicom sends the file's bytes after its meta without decoding them; the status."""
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title="TALARIA")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


@pytest.fixture
def chunked_sending() -> Iterator[None]:
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = previous


@pytest.mark.usefixtures("chunked_sending")
def test_garbage_and_truncated_data_sets_cannot_be_understood(
    settings: IngestSettings, receiver: RunningReceiver, tmp_path: Path
) -> None:
    (good,) = write_study(tmp_path / "study", series=1, instances=1)
    data = good.read_bytes()
    meta_end = data.index(b"\x08\x00\x05\x00")  # the data set's first element
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(data[:meta_end] + os.urandom(5000))
    cut_in_header = tmp_path / "cut-header.dcm"
    cut_in_header.write_bytes(data[: meta_end + 400])
    cut_in_pixels = tmp_path / "cut-pixels.dcm"
    cut_in_pixels.write_bytes(data[: len(data) - 1000])

    answers = [send_raw_data_set(settings, f) for f in (garbage, cut_in_header, cut_in_pixels)]

    assert answers == [0xC210] * 3
    assert stored_files(settings) == []
    assert send_raw_data_set(settings, good) == 0x0000


def test_bytes_that_are_not_dicom_end_the_connection_and_nothing_else(
    settings: IngestSettings, receiver: RunningReceiver
) -> None:
    for payload in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        os.urandom(4096),
        struct.pack(">BxI", 0x01, 2**31) + b"x" * 100,  # an association request of 2 GB
        struct.pack(">BxI", 0x04, 10) + bytes(10),  # data before any association
    ):
        with socket.create_connection(("127.0.0.1", settings.dicom_port), timeout=10) as peer:
            peer.sendall(payload)
            peer.shutdown(socket.SHUT_WR)
            while peer.recv(65536):
                pass

    assert still_answers(settings)


def test_a_peer_that_says_nothing_is_hung_up_on_after_the_acse_timeout(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = ingest_settings_for(kafka_broker, tmp_path / "blobs", acse_timeout_s=0.5)
    with receiving(settings), socket.create_connection(("127.0.0.1", settings.dicom_port)) as peer:
        peer.settimeout(10)
        began = time.monotonic()
        while peer.recv(65536):  # an A-ABORT, then the end of the connection
            pass
        assert time.monotonic() - began < 5
