"""Who may associate, how many at once, and over TLS: DCMTK's echoscu and storescu knock."""

import contextlib
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom import AE

from infra.catalogue import AssociationRejected
from infra.kafka.broker import LocalBroker
from ingest.dimse import decode_command
from ingest.errors import ProtocolViolation
from ingest.pdu import decode_associate_rq, decode_pdvs
from ingest.settings import IngestSettings
from tests.ingest.conftest import (
    ECHOSCU,
    events,
    ingest_settings_for,
    received,
    receiving,
    receiving_in_workers,
    storescu,
)
from tests.ingest.dicom_files import write_study
from tests.support import free_port

pytestmark = pytest.mark.integration


def echo(settings: IngestSettings, *options: str, port: int | None = None) -> str:
    """echoscu's verdict: 'ok', or the line saying why the association failed."""
    result = subprocess.run(
        [ECHOSCU, *options, "127.0.0.1", str(port or settings.dicom_port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return "ok" if result.returncode == 0 else result.stderr


def rejected_reasons(settings: IngestSettings, expected: int) -> list[str]:
    found = events(settings, expected=expected)
    return [e.payload.reason for e in found if isinstance(e.payload, AssociationRejected)]


def test_any_ae_title_is_welcome_by_default(kafka_broker: LocalBroker, tmp_path: Path) -> None:
    settings = ingest_settings_for(kafka_broker, tmp_path / "b")
    with receiving(settings):
        assert echo(settings, "-aet", "WHOEVER", "-aec", "NOT-US") == "ok"


def test_the_called_ae_check_and_the_calling_allow_list_turn_strangers_away(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = ingest_settings_for(
        kafka_broker,
        tmp_path / "b",
        check_called_aet=True,
        allowed_calling_aets=["SCANNER"],
    )
    with receiving(settings):
        wrong_door = echo(settings, "-aet", "SCANNER", "-aec", "NOT-US")
        stranger = echo(settings, "-aet", "STRANGER", "-aec", "TALARIA")
        welcome = echo(settings, "-aet", "SCANNER", "-aec", "TALARIA")

    assert "Called AE Title Not Recognized" in wrong_door
    assert "Calling AE Title Not Recognized" in stranger
    assert welcome == "ok"
    reasons = rejected_reasons(settings, expected=2 + 2)
    assert any("'NOT-US' is not ours" in reason for reason in reasons)
    assert any("'STRANGER' not allowed" in reason for reason in reasons)


def test_beyond_the_association_limit_a_sender_is_told_to_come_back(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    settings = ingest_settings_for(kafka_broker, tmp_path / "b", max_associations=1)
    with receiving(settings):
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        holder = ae.associate("127.0.0.1", settings.dicom_port, ae_title="TALARIA")
        assert holder.is_established
        try:
            refused = echo(settings)
        finally:
            holder.release()
        after = echo(settings)

    assert "Local Limit Exceeded" in refused
    assert after == "ok"


def make_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.mark.parametrize("workers", [1, 2])
def test_dicom_tls_on_its_own_port_with_client_certificates(
    kafka_broker: LocalBroker, tmp_path: Path, workers: int
) -> None:
    """In one process, and behind the acceptor that hands connections to worker processes."""
    server_key, server_cert = make_certificate(tmp_path, "talaria")
    client_key, client_cert = make_certificate(tmp_path, "scanner")
    settings = ingest_settings_for(
        kafka_broker,
        tmp_path / "b",
        tls_port=free_port(),
        tls_cert=server_cert,
        tls_key=server_key,
        tls_ca=client_cert,
    )
    files = write_study(tmp_path / "study", series=1, instances=2)
    tls = ("+tls", str(client_key), str(client_cert), "+cf", str(server_cert))
    serving = receiving(settings) if workers == 1 else receiving_in_workers(settings, workers)
    with serving:
        assert settings.tls_port is not None
        result = storescu(settings, files, *tls, port=settings.tls_port)
        anonymous = echo(settings, "+tla", "+cf", str(server_cert), port=settings.tls_port)

    assert result.returncode == 0, result.stderr
    assert len(received(events(settings, expected=2 + 2))) == 2
    assert anonymous != "ok"  # no client certificate, no association


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_undecodable_pdus_and_commands_are_protocol_violations(data: bytes) -> None:
    for decoder in (decode_associate_rq, decode_command):
        with contextlib.suppress(ProtocolViolation):
            decoder(data)
    with contextlib.suppress(ProtocolViolation):
        list(decode_pdvs(data))
