"""A DICOM requestor (SCU) for C-STORE and C-ECHO on blocking sockets, built on the receiver's
upper layer and DIMSE codecs (`ingest.pdu`, `ingest.dimse`).

One association at a time, one operation outstanding (no asynchronous operations window is
negotiated, PS3.7 §D.3.3.3): a request's command and data set go out as P-DATA-TF PDUs cut to
the peer's maximum length, written in blocks of about a megabyte with TCP_NODELAY; the caller
reads the response when it has prepared the next request, so its work overlaps the peer's.
Every socket operation has the timeout. Failures are dispatch errors: the peer unreachable,
silent, aborting or breaking the protocol is `TargetUnavailable`; an association rejected
permanently is `TargetRefused`.
"""

import contextlib
import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Self

from executors.dispatch import TargetRefused, TargetUnavailable
from ingest.dimse import Response, decode_response, encode_echo_rq, encode_store_rq
from ingest.errors import ProtocolViolation
from ingest.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ingest.pdu import (
    PDV_HEADER_BYTES,
    ContextResult,
    PduType,
    ProposedContext,
    decode_associate_ac,
    decode_associate_rj,
    decode_pdvs,
    encode_abort,
    encode_associate_rq,
    encode_release_rq,
    p_data_pieces,
)

MAX_CONTEXTS = 128  # PS3.8 §9.3.2.2: context ids are the odd numbers 1-255
MAX_PDU = 65_536  # what we accept; responses are small
WRITE_BLOCK = 1 << 20  # bytes of a data set framed and written at once
_LONGEST_PDU = 1 << 24  # a longer length from the peer is a broken stream, not a PDU


@dataclass(frozen=True, kw_only=True)
class Peer:
    host: str
    port: int
    called: str
    calling: str

    def __str__(self) -> str:
        return f"{self.called}@{self.host}:{self.port}"


class Association:
    """An established association; released on a clean exit from `with`, aborted otherwise."""

    def __init__(
        self,
        connection: socket.socket,
        reader: BinaryIO,
        peer: Peer,
        *,
        accepted: dict[tuple[str, str], int],
        max_pdu: int,
    ) -> None:
        self._socket = connection
        self._reader = reader
        self._peer = peer
        self._accepted = accepted
        self._max_pdu = max_pdu
        self._message_id = 0

    def context_for(self, sop_class_uid: str, transfer_syntax_uid: str) -> int | None:
        """The accepted presentation context for this pair, if any."""
        return self._accepted.get((sop_class_uid, transfer_syntax_uid))

    def send_store(
        self, context_id: int, *, sop_class_uid: str, sop_instance_uid: str, data_set: memoryview
    ) -> int:
        """Send a C-STORE-RQ with `data_set` (encoded in the context's transfer syntax); its
        message ID, for `response`. The caller may prepare the next instance before that."""
        message_id = self._next_message_id()
        command = encode_store_rq(
            message_id=message_id, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid
        )
        pieces = list(
            p_data_pieces(context_id=context_id, command=True, data=command, max_pdu=self._max_pdu)
        )
        fragment = max(1, self._max_pdu - PDV_HEADER_BYTES) if self._max_pdu else WRITE_BLOCK
        block = fragment * max(1, WRITE_BLOCK // fragment)  # whole fragments per write
        for start in range(0, max(1, len(data_set)), block):
            end = start + block
            pieces += p_data_pieces(
                context_id=context_id,
                command=False,
                data=data_set[start:end],
                max_pdu=self._max_pdu,
                last=end >= len(data_set),
            )
            self._send(b"".join(pieces))
            pieces = []
        return message_id

    def echo(self, context_id: int) -> Response:
        message_id = self._next_message_id()
        self._send(
            b"".join(
                p_data_pieces(
                    context_id=context_id,
                    command=True,
                    data=encode_echo_rq(message_id=message_id),
                    max_pdu=self._max_pdu,
                )
            )
        )
        return self.response(context_id, message_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if error_type is None:
                self._release()
            else:
                self._abort()
        finally:
            self._reader.close()
            self._socket.close()

    def _release(self) -> None:
        """Release; a peer that answers otherwise, or not at all, is aborted but not blamed:
        everything sent was confirmed already."""
        try:
            self._send(encode_release_rq())
            pdu_type, _ = read_pdu(self._reader, self._peer)
        except TargetUnavailable:
            pdu_type = None
        if pdu_type != PduType.RELEASE_RP:
            self._abort()

    def _abort(self) -> None:
        with contextlib.suppress(OSError):  # the connection is gone already: nothing to abort
            self._socket.sendall(encode_abort(source=0))

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _send(self, data: bytes) -> None:
        try:
            self._socket.sendall(data)
        except TimeoutError:
            raise TargetUnavailable(f"{self._peer} did not take data for too long") from None
        except OSError as error:
            raise TargetUnavailable(f"connection to {self._peer} lost: {error}") from error

    def response(self, context_id: int, message_id: int) -> Response:
        """Read P-DATA-TF PDUs until the response to `message_id` is whole."""
        parts: list[bytes] = []
        while True:
            pdu_type, body = read_pdu(self._reader, self._peer)
            if pdu_type == PduType.ABORT:
                raise TargetUnavailable(f"{self._peer} aborted the association")
            if pdu_type != PduType.P_DATA_TF:
                raise self._broken(f"sent PDU type 0x{pdu_type:02X} instead of a response")
            try:
                for pdv in decode_pdvs(body):
                    if pdv.context_id != context_id or not pdv.is_command:
                        raise ProtocolViolation("response on another context or with a data set")
                    parts.append(bytes(pdv.data))
                    if pdv.is_last:
                        response = decode_response(b"".join(parts))
                        if response.message_id != message_id:
                            raise ProtocolViolation(
                                f"response to message {response.message_id}, not {message_id}"
                            )
                        return response
            except ProtocolViolation as violation:
                raise self._broken(str(violation)) from None

    def _broken(self, what: str) -> TargetUnavailable:
        return TargetUnavailable(f"{self._peer} broke the DICOM protocol: {what}")


def read_pdu(reader: BinaryIO, peer: Peer) -> tuple[int, bytes]:
    """The next PDU's type and body from a blocking stream."""
    try:
        head = reader.read(6)
        if len(head) == 6:
            pdu_type, length = struct.unpack(">BxI", head)
            if length > _LONGEST_PDU:
                raise TargetUnavailable(f"{peer} sent a PDU of {length} bytes")
            body = reader.read(length)
            if len(body) == length:
                return pdu_type, body
    except TimeoutError:
        raise TargetUnavailable(f"{peer} did not answer in time") from None
    except OSError as error:
        raise TargetUnavailable(f"connection to {peer} lost: {error}") from error
    raise TargetUnavailable(f"{peer} closed the connection")


def associate(
    peer: Peer,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    timeout_s: float,
    tls: ssl.SSLContext | None = None,
) -> Association:
    """Connect and negotiate (abstract syntax, transfer syntaxes) proposals, one context each."""
    if not 0 < len(contexts) <= MAX_CONTEXTS:
        raise ValueError(f"an association proposes 1 to {MAX_CONTEXTS} presentation contexts")
    proposed = [
        ProposedContext(id=2 * index + 1, abstract_syntax=sop_class, transfer_syntaxes=tuple(ts))
        for index, (sop_class, ts) in enumerate(contexts)
    ]
    connection = _connect(peer, timeout_s=timeout_s, tls=tls)
    reader: BinaryIO = connection.makefile("rb")
    try:
        connection.sendall(
            encode_associate_rq(
                called_aet=peer.called,
                calling_aet=peer.calling,
                contexts=proposed,
                max_pdu=MAX_PDU,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            )
        )
        pdu_type, body = read_pdu(reader, peer)
        if pdu_type == PduType.ASSOCIATE_RJ:
            rejection = decode_associate_rj(body)
            why = f"(source {rejection.source}, reason {rejection.reason})"
            if rejection.result == 1:  # rejected-permanent (PS3.8 §7.1.1.7)
                raise TargetRefused(f"{peer} rejected the association permanently {why}")
            raise TargetUnavailable(f"{peer} rejected the association for now {why}")
        if pdu_type == PduType.ABORT:
            raise TargetUnavailable(f"{peer} aborted the association request")
        if pdu_type != PduType.ASSOCIATE_AC:
            raise TargetUnavailable(
                f"{peer} answered the association request with 0x{pdu_type:02X}"
            )
        accept = decode_associate_ac(body)
    except BaseException as error:
        reader.close()
        connection.close()
        if isinstance(error, ProtocolViolation):
            raise TargetUnavailable(f"{peer} broke the DICOM protocol: {error}") from None
        if isinstance(error, OSError):
            raise TargetUnavailable(f"association with {peer} failed: {error}") from error
        raise
    by_id = {context.id: context.abstract_syntax for context in proposed}
    accepted = {
        (by_id[answer.id], answer.transfer_syntax): answer.id
        for answer in accept.contexts
        if answer.result == ContextResult.ACCEPTANCE and answer.id in by_id
    }
    return Association(connection, reader, peer, accepted=accepted, max_pdu=accept.max_pdu)


def _connect(peer: Peer, *, timeout_s: float, tls: ssl.SSLContext | None) -> socket.socket:
    try:
        connection = socket.create_connection((peer.host, peer.port), timeout=timeout_s)
    except OSError as error:
        raise TargetUnavailable(f"{peer} could not be reached: {error}") from error
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return connection
    try:
        return tls.wrap_socket(connection, server_hostname=peer.host)
    except OSError as error:  # ssl.SSLError included
        connection.close()
        raise TargetUnavailable(f"TLS with {peer} failed: {error}") from error
