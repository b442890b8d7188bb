"""The DICOM targets' own SCU: its PDUs, and what it does when DCMTK's storescp misbehaves."""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless

from bench.dicom_data import CT_IMAGE_STORAGE
from executors.dispatch import TargetRefused, TargetUnavailable
from executors.dispatch.scu import Peer, read_pdu
from executors.dispatch.staging import describe
from executors.dispatch.target import Batch, Delivery, Target
from executors.dispatch.targets import open_target
from ingest.dimse import (
    C_STORE_RQ,
    decode_command,
    decode_response,
    encode_response,
    encode_store_rq,
)
from ingest.pdu import (
    ContextAnswer,
    ContextResult,
    PduType,
    ProposedContext,
    decode_associate_ac,
    decode_associate_rq,
    decode_pdvs,
    encode_associate_ac,
    encode_associate_rj,
    encode_associate_rq,
    p_data_pieces,
)
from tests.executors.dispatch.conftest import dataset_bytes
from tests.ingest.dicom_files import compress, write_study
from tests.support import DCMTK, free_port, serving

STORESCP = f"{DCMTK}/storescp"


def test_an_association_request_reads_back_as_proposed() -> None:
    contexts = [
        ProposedContext(id=1, abstract_syntax=CT_IMAGE_STORAGE, transfer_syntaxes=("1.2.3",)),
        ProposedContext(
            id=3,
            abstract_syntax=CT_IMAGE_STORAGE,
            transfer_syntaxes=(ExplicitVRLittleEndian, ImplicitVRLittleEndian),
        ),
    ]
    raw = encode_associate_rq(
        called_aet="PACS",
        calling_aet="TALARIA",
        contexts=contexts,
        max_pdu=65536,
        implementation_class_uid="1.2.3.4",
        implementation_version_name="V1",
    )
    assert raw[0] == PduType.ASSOCIATE_RQ
    request = decode_associate_rq(raw[6:])
    assert (request.called_aet, request.calling_aet, request.max_pdu) == ("PACS", "TALARIA", 65536)
    assert request.contexts == tuple(contexts)
    assert request.implementation_class_uid == "1.2.3.4"

    answers = [
        ContextAnswer(id=1, result=ContextResult.ACCEPTANCE, transfer_syntax="1.2.3"),
        ContextAnswer(
            id=3,
            result=ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED,
            transfer_syntax=ExplicitVRLittleEndian,
        ),
    ]
    accept = encode_associate_ac(
        request,
        answers,
        max_pdu=16384,
        implementation_class_uid="9.9",
        implementation_version_name="",
    )
    decoded = decode_associate_ac(accept[6:])
    assert decoded.contexts == tuple(answers)
    assert decoded.max_pdu == 16384


@given(
    data=st.binary(max_size=3000),
    max_pdu=st.sampled_from([0, 7, 100, 4096]),
    split=st.integers(min_value=0, max_value=3000),
)
def test_p_data_fragments_respect_the_peer_limit_and_mark_only_the_last(
    data: bytes, max_pdu: int, split: int
) -> None:
    """A message written in two calls (as the SCU writes large data sets in blocks)."""
    split = min(split, len(data))
    pieces = [
        *p_data_pieces(context_id=5, command=False, data=data[:split], max_pdu=max_pdu, last=False),
        *p_data_pieces(context_id=5, command=False, data=data[split:], max_pdu=max_pdu),
    ]
    stream = b"".join(pieces)
    fragments = []
    while stream:
        assert stream[0] == PduType.P_DATA_TF
        length = int.from_bytes(stream[2:6], "big")
        if max_pdu:
            assert length <= max_pdu
        fragments += list(decode_pdvs(stream[6 : 6 + length]))
        stream = stream[6 + length :]
    assert b"".join(bytes(f.data) for f in fragments) == data
    assert [f.is_last for f in fragments] == [False] * (len(fragments) - 1) + [True]
    assert {(f.context_id, f.is_command) for f in fragments} == {(5, False)}


def test_store_requests_and_responses_read_back() -> None:
    request = decode_command(
        encode_store_rq(message_id=7, sop_class_uid=CT_IMAGE_STORAGE, sop_instance_uid="1.2.33")
    )
    assert (request.field, request.message_id, request.sop_instance_uid) == (
        C_STORE_RQ,
        7,
        "1.2.33",
    )
    assert request.has_data_set
    response = decode_response(encode_response(request, status=0xA900, comment="no"))
    assert (response.field, response.message_id, response.status) == (0x8001, 7, 0xA900)
    assert response.comment == "no"


def batch_of(files: list[Path]) -> Batch:
    return Batch(job_id="job-scu", study_uid="9.9", instances=[describe(p) for p in files], tags={})


def storescp(port: int, folder: Path, *options: str) -> list[str]:
    return [STORESCP, "+B", "-aet", "STORE", "-od", str(folder), *options, str(port)]


@pytest.mark.integration
def test_a_large_data_set_goes_out_in_the_peer_smallest_pdus_unchanged(tmp_path: Path) -> None:
    """2 MB of pixels to a storescp taking 4 kB PDUs: about 500 fragments over three writes."""
    files = write_study(tmp_path / "big", series=1, instances=1, rows=1024)
    files += write_study(tmp_path / "small", series=1, instances=2)
    folder, port = tmp_path / "received", free_port()
    folder.mkdir()
    with serving(storescp(port, folder, "+xa", "-pdu", "4096"), port=port):
        target = open_target(
            {"target_type": "dicom", "ip": "127.0.0.1", "port": port, "aet_target": "STORE"}
        )
        assert "succeeded" in target.test()
        assert target.send(batch_of(files)).confirmed == 3
    received = sorted(folder.iterdir())
    assert sorted(dataset_bytes(p) for p in received) == sorted(dataset_bytes(p) for p in files)


@pytest.mark.integration
def test_a_syntax_the_peer_refuses_is_converted_and_a_compressed_one_is_refused(
    tmp_path: Path,
) -> None:
    """storescp +xi takes implicit VR little endian only: the explicit VR files are converted
    (same elements, same pixels); a JPEG-LS file cannot be, and is refused for good."""
    files = write_study(tmp_path / "study", series=1, instances=2)
    folder, port = tmp_path / "received", free_port()
    folder.mkdir()
    with serving(storescp(port, folder, "+xi"), port=port):
        target = open_target(
            {"target_type": "dicom", "ip": "127.0.0.1", "port": port, "aet_target": "STORE"}
        )
        assert target.send(batch_of(files)).confirmed == 2
        received = {dcmread(p).SOPInstanceUID: dcmread(p) for p in folder.iterdir()}
        for path in files:
            original = dcmread(path)
            arrived = received[original.SOPInstanceUID]
            assert arrived.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
            assert {e.tag: e.value for e in arrived} == {e.tag: e.value for e in original}
        jpeg = compress(files[0], tmp_path / "jpeg.dcm", tool=f"{DCMTK}/dcmcjpls")
        assert describe(jpeg).transfer_syntax_uid == JPEGLSLossless
        with pytest.raises(TargetRefused, match="none of the syntaxes"):
            target.send(batch_of([jpeg]))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("options", "outcome", "message"),
    [
        (("--refuse",), TargetRefused, "rejected the association permanently"),
        (("--abort-after",), TargetUnavailable, "aborted the association"),
        (("--abort-during",), TargetUnavailable, "aborted the association|connection to .* lost"),
        (("--sleep-after", "5"), TargetUnavailable, "did not answer in time"),
    ],
)
def test_a_misbehaving_storescp_fails_the_dispatch_the_right_way(
    tmp_path: Path, options: tuple[str, ...], outcome: type[Exception], message: str
) -> None:
    files = write_study(tmp_path / "study", series=1, instances=3)
    folder, port = tmp_path / "received", free_port()
    folder.mkdir()
    with serving(storescp(port, folder, "+xa", *options), port=port):
        target = open_target(
            {
                "target_type": "dicom",
                "ip": "127.0.0.1",
                "port": port,
                "aet_target": "STORE",
                "timeout_s": 1,
            }
        )
        with pytest.raises(outcome, match=message):
            target.send(batch_of(files))


class ScriptedPeer:
    """A one-association acceptor on the receiver's codec, for faults storescp cannot play:
    it rejects transiently, or accepts everything and answers C-STOREs with `statuses` (then
    0x0000), answers with a wrong message ID once `misnumber` is set, and closes the connection
    instead of answering A-RELEASE-RQ."""

    def __init__(self, *, reject: bool = False, misnumber: bool = False) -> None:
        self.statuses: list[int] = []
        self.stored = 0
        self._reject = reject
        self._misnumber = misnumber
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def close(self) -> None:
        self._thread.join(timeout=10)
        self._listener.close()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection, connection.makefile("rb") as reader:
            _, body = read_pdu(reader, Peer(host="", port=0, called="", calling=""))
            request = decode_associate_rq(body)
            if self._reject:
                connection.sendall(encode_associate_rj(result=2, source=3, reason=2))
                return
            answers = [
                ContextAnswer(
                    id=c.id, result=ContextResult.ACCEPTANCE, transfer_syntax=c.transfer_syntaxes[0]
                )
                for c in request.contexts
            ]
            connection.sendall(
                encode_associate_ac(
                    request,
                    answers,
                    max_pdu=16384,
                    implementation_class_uid="1.2.3",
                    implementation_version_name="",
                )
            )
            command_parts: list[bytes] = []
            while True:
                pdu_type, body = read_pdu(reader, Peer(host="", port=0, called="", calling=""))
                if pdu_type != PduType.P_DATA_TF:
                    return  # A-RELEASE-RQ: hang up without A-RELEASE-RP
                for pdv in decode_pdvs(body):
                    if pdv.is_command:
                        command_parts.append(bytes(pdv.data))
                    elif pdv.is_last:
                        command = decode_command(b"".join(command_parts))
                        command_parts = []
                        status = self.statuses.pop(0) if self.statuses else 0x0000
                        self.stored += 1
                        if self._misnumber:
                            command = replace(command, message_id=command.message_id + 1)
                        response = encode_response(command, status=status)
                        connection.sendall(
                            b"".join(
                                p_data_pieces(
                                    context_id=pdv.context_id,
                                    command=True,
                                    data=response,
                                    max_pdu=request.max_pdu,
                                )
                            )
                        )


@contextmanager
def scripted_peer(**behaviour: bool) -> Iterator[ScriptedPeer]:
    peer = ScriptedPeer(**behaviour)
    try:
        yield peer
    finally:
        peer.close()


def scripted_target(peer: ScriptedPeer) -> Target:
    return open_target(
        {"target_type": "dicom", "ip": "127.0.0.1", "port": peer.port, "timeout_s": 5}
    )


@pytest.mark.integration
def test_a_transient_rejection_is_retried_later(tmp_path: Path) -> None:
    """Rejected-transient (PS3.8 §9.3.4, result 2, 'local limit exceeded'), as a receiver at
    its association limit answers."""
    files = write_study(tmp_path / "study", series=1, instances=1)
    with (
        scripted_peer(reject=True) as peer,
        pytest.raises(TargetUnavailable, match="rejected the association for now"),
    ):
        scripted_target(peer).send(batch_of(files))


@pytest.mark.integration
def test_one_failed_instance_fails_the_dispatch_and_a_warning_does_not(tmp_path: Path) -> None:
    """Also: a peer that hangs up instead of answering A-RELEASE-RQ does not undo a delivery
    it confirmed instance by instance."""
    files = write_study(tmp_path / "study", series=1, instances=4)
    with scripted_peer() as peer:
        peer.statuses[:] = [0x0000, 0xB007, 0x0000, 0x0000]
        assert scripted_target(peer).send(batch_of(files)) == Delivery(confirmed=4, warnings=1)
    with scripted_peer() as peer:
        peer.statuses[:] = [0x0000, 0xC123]
        with pytest.raises(TargetRefused, match="0xC123"):
            scripted_target(peer).send(batch_of(files))
        assert peer.stored == 2  # nothing sent after the failure


@pytest.mark.integration
def test_a_response_to_another_message_breaks_the_protocol(tmp_path: Path) -> None:
    files = write_study(tmp_path / "study", series=1, instances=1)
    with (
        scripted_peer(misnumber=True) as peer,
        pytest.raises(TargetUnavailable, match="response to message 2, not 1"),
    ):
        scripted_target(peer).send(batch_of(files))
