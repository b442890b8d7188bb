"""DICOM targets (plain and TLS): C-STORE every instance with pynetdicom and check each answer.

Presentation contexts come from the job's real SOP classes and transfer syntaxes (at most 128
per association, PS3.8 §9.3.2.2; more make several associations). Each stored syntax is
proposed as it is; an uncompressed one also with the two uncompressed little-endian syntaxes as
a fallback, so the bytes are converted only when the target refuses the stored syntax.
C-STORE statuses (PS3.4 Annex B.2.3): 0x0000 success; 0xB000, 0xB006, 0xB007 warnings, counted
and confirmed; 0xA7xx out of resources, retried; anything else refused for good.
`ip: sender` sends the job back to the address that sent it (mercure's "return to sender").
"""

import contextlib
import re
import socket
import ssl
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import Field, field_validator
from pydicom import dcmread
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket

from executors.dispatch import TargetMisconfigured, TargetRefused, TargetUnavailable
from executors.dispatch.target import (
    Batch,
    Delivery,
    Direction,
    StagedInstance,
    TargetSettings,
    register,
)

MAX_CONTEXTS = 128
VERIFICATION = "1.2.840.10008.1.1"
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})
_AE_TITLE = re.compile(r"[A-Za-z0-9 _\-.]{1,16}")
RETURN_TO_SENDER = "sender"


def _valid_ae_title(value: str) -> str:
    if value and not _AE_TITLE.fullmatch(value):
        raise ValueError("an AE title is 1-16 letters, digits, space, '_', '-' or '.'")
    return value


class DicomSettings(TargetSettings):
    direction: Direction = "store"
    retrieve: Literal["get", "move"] = Field(
        default="get",
        description="As a source: C-GET, or C-MOVE to aet_source (the source must know that "
        "AE title at move_bind:move_port).",
    )
    move_bind: str = Field(default="127.0.0.1", description="Where C-MOVE's storage SCP listens.")
    move_port: int = Field(default=11113, ge=1, le=65535)
    ip: str = Field(min_length=1, description="Host, or 'sender' to return to the sender.")
    port: int = Field(ge=1, le=65535)
    aet_target: str = Field(default="ANY-SCP", description="Called AE title.")
    aet_source: str = Field(default="TALARIA", description="Calling AE title.")
    pass_sender_aet: bool = False
    pass_receiver_aet: bool = False
    timeout_s: float = Field(default=30.0, gt=0)

    _ae_titles = field_validator("aet_target", "aet_source")(_valid_ae_title)


class DicomTlsSettings(DicomSettings):
    tls_key: str = Field(min_length=1)
    tls_cert: str = Field(min_length=1)
    ca_cert: str = Field(min_length=1)


@dataclass(frozen=True, kw_only=True)
class Peer:
    host: str
    port: int
    called: str
    calling: str


@register("dicom", DicomSettings)
class DicomTarget:
    def __init__(self, settings: DicomSettings) -> None:
        self._settings = settings

    def send(self, batch: Batch) -> Delivery:
        peer = self.peer(batch.tags)
        confirmed = warnings = 0
        for chunk in _chunks_by_context(batch.instances):
            with self.associate(peer, contexts=_contexts_for(chunk)) as association:
                for instance in chunk:
                    warnings += _store(association, instance)
                    confirmed += 1
        return Delivery(confirmed=confirmed, warnings=warnings)

    def test(self) -> str:
        peer = self.peer({})
        with self.associate(peer, contexts=[build_context(VERIFICATION)]) as association:
            status = association.send_c_echo()
        if not status or status.Status != 0x0000:
            raise TargetUnavailable(f"C-ECHO to {peer.called}@{peer.host}:{peer.port} failed")
        return f"C-ECHO to {peer.called}@{peer.host}:{peer.port} succeeded"

    def peer(self, tags: Mapping[str, str]) -> Peer:
        """Whom to associate with for a job with `tags` (return to sender, passed AE titles)."""
        settings = self._settings
        host = settings.ip
        if host == RETURN_TO_SENDER:
            host = tags.get("SenderAddress", "")
            if not host:
                raise TargetMisconfigured("return to sender: the job has no sender address")
        called = tags.get("ReceiverAET", "") if settings.pass_receiver_aet else ""
        calling = tags.get("SenderAET", "") if settings.pass_sender_aet else ""
        return Peer(
            host=host,
            port=settings.port,
            called=called or settings.aet_target,
            calling=calling or settings.aet_source,
        )

    def _tls(self) -> tuple[ssl.SSLContext, str] | None:
        return None

    def associate(
        self,
        peer: Peer,
        *,
        contexts: list[PresentationContext],
        roles: list[SCP_SCU_RoleSelectionNegotiation] | None = None,
        handlers: list[EventHandlerType] | None = None,
    ) -> "_Open":
        """An association for a `with` block: released at its end, aborted on an error.
        `roles` and `handlers` serve C-GET, where the peer sends us C-STOREs."""
        ae = AE(ae_title=peer.calling)
        ae.requested_contexts = contexts
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._settings.timeout_s
        ae.connection_timeout = self._settings.timeout_s
        association = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.called,
            tls_args=self._tls(),
            ext_neg=cast("list[Any] | None", roles),
            evt_handlers=handlers,
        )
        return _Open(association, peer)


@register("dicomtls", DicomTlsSettings)
class DicomTlsTarget(DicomTarget):
    def __init__(self, settings: DicomTlsSettings) -> None:
        super().__init__(settings)
        self._tls_settings = settings

    def _tls(self) -> tuple[ssl.SSLContext, str]:
        settings = self._tls_settings
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_cert)
            context.load_cert_chain(certfile=settings.tls_cert, keyfile=settings.tls_key)
        except (OSError, ssl.SSLError) as error:
            raise TargetMisconfigured(f"TLS key, certificate or CA unusable: {error}") from error
        return context, settings.ip


class _Open:
    """An established association, released on exit (aborted if an error escapes)."""

    def __init__(self, association: Association, peer: Peer) -> None:
        self._association = association
        self._peer = peer

    def __enter__(self) -> Association:
        association = self._association
        where = f"{self._peer.called}@{self._peer.host}:{self._peer.port}"
        if association.is_rejected:
            result = association.acceptor.primitive.result if association.acceptor.primitive else 0
            if result == 0x01:  # rejected-permanent (PS3.8 §7.1.1.7)
                raise TargetRefused(f"{where} rejected the association permanently")
            raise TargetUnavailable(f"{where} rejected the association for now")
        if not association.is_established:
            raise TargetUnavailable(f"{where} could not be reached")
        _send_without_delay(association)
        return association

    def __exit__(self, error_type: type[BaseException] | None, *_rest: object) -> None:
        if not self._association.is_established:
            return
        if error_type is None:
            self._association.release()
        else:
            self._association.abort()


def _shutdown_and_close(transport: AssociationSocket) -> None:
    """pynetdicom 3.0 skips close() when shutdown() fails, as it does on a refused connection,
    and leaks the socket; always close."""
    if transport.socket is not None:
        with contextlib.suppress(OSError):
            transport.socket.shutdown(socket.SHUT_RDWR)
        transport.socket.close()


AssociationSocket._shutdown_socket = _shutdown_and_close  # type: ignore[method-assign, assignment]


def _send_without_delay(association: Association) -> None:
    """Disable Nagle (many small PDUs otherwise wait for delayed ACKs, measured 4x slower),
    and let pynetdicom's DUL reactor nap 0.1 ms instead of 1 ms whenever its queue is
    momentarily empty, which it is between every two of a series' thousands of PDUs."""
    transport = association.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    association.dul._run_loop_delay = 0.0001


def _chunks_by_context(instances: list[StagedInstance]) -> Iterator[list[StagedInstance]]:
    """Instances grouped so that no association needs more than 128 contexts."""
    by_pair: dict[tuple[str, str], list[StagedInstance]] = defaultdict(list)
    for instance in instances:
        by_pair[(instance.sop_class_uid, instance.transfer_syntax_uid)].append(instance)
    chunk: list[StagedInstance] = []
    contexts = 0
    for (_, syntax), group in by_pair.items():
        needed = _contexts_needed(syntax)
        if contexts + needed > MAX_CONTEXTS:
            yield chunk
            chunk, contexts = [], 0
        chunk += group
        contexts += needed
    if chunk:
        yield chunk


def _contexts_needed(syntax: str) -> int:
    return 1 if UID(syntax) in _UNCOMPRESSED or UID(syntax).is_compressed else 2


def _contexts_for(instances: list[StagedInstance]) -> list[PresentationContext]:
    pairs = dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances)
    contexts = []
    for sop_class, syntax in pairs:
        contexts.append(build_context(sop_class, [syntax]))
        if _contexts_needed(syntax) == 2:
            contexts.append(build_context(sop_class, list(_UNCOMPRESSED)))
    return contexts


def _store(association: Association, instance: StagedInstance) -> int:
    """C-STORE one instance; 1 if the target answered with a warning, else 0."""
    if _accepts(association, instance.sop_class_uid, instance.transfer_syntax_uid):
        response = association.send_c_store(instance.path)
    elif not UID(instance.transfer_syntax_uid).is_compressed and any(
        _accepts(association, instance.sop_class_uid, syntax) for syntax in _UNCOMPRESSED
    ):
        response = association.send_c_store(dcmread(instance.path))
    else:
        raise TargetRefused(
            f"target accepts {instance.sop_class_uid} in none of the syntaxes it could be sent in "
            f"(stored as {instance.transfer_syntax_uid})"
        )
    status = getattr(response, "Status", None) if response else None
    if status is None:
        raise TargetUnavailable(f"no C-STORE response for {instance.sop_uid}")
    if status == 0x0000:
        return 0
    if status in _WARNINGS:
        return 1
    if status & 0xFF00 == 0xA700:
        raise TargetUnavailable(f"target out of resources (0x{status:04X}) for {instance.sop_uid}")
    raise TargetRefused(f"target refused {instance.sop_uid} with status 0x{status:04X}")


def _accepts(association: Association, sop_class: str, syntax: str) -> bool:
    return any(
        context.abstract_syntax == sop_class and context.transfer_syntax[0] == syntax
        for context in association.accepted_contexts
    )
