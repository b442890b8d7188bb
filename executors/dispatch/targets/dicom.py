"""DICOM targets (plain and TLS): C-STORE every instance and check each answer.

Presentation contexts come from the job's real SOP classes and transfer syntaxes (at most 128
per association, PS3.8 §9.3.2.2; more make several associations). Each stored syntax is
proposed as it is, and the stored data set goes out byte for byte; an uncompressed syntax other
than the default one is also proposed, in a second context, as the other little-endian
uncompressed syntaxes, so the data set is converted only when the target refuses the stored
syntax. C-STORE statuses (PS3.4 Annex B.2.3): 0x0000 success; 0xB000, 0xB006, 0xB007 warnings,
counted and confirmed; 0xA7xx out of resources, retried; anything else refused for good.
`ip: sender` sends the job back to the address that sent it (mercure's "return to sender").
"""

import re
import ssl
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Literal

from pydantic import Field, field_validator
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from executors.dispatch import TargetMisconfigured, TargetRefused, TargetUnavailable
from executors.dispatch.scu import MAX_CONTEXTS, Association, Peer, associate
from executors.dispatch.target import (
    Batch,
    Delivery,
    Direction,
    StagedInstance,
    TargetSettings,
    register,
)
from ingest.dimse import VERIFICATION
from ingest.errors import CannotUnderstand
from ingest.part10 import read_file_meta

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


@register("dicom", DicomSettings)
class DicomTarget:
    def __init__(self, settings: DicomSettings) -> None:
        self._settings = settings

    def send(self, batch: Batch) -> Delivery:
        peer = self.peer(batch.tags)
        confirmed = warnings = 0
        for chunk in _chunks_by_context(batch.instances):
            with self._associate(peer, _contexts_for(chunk)) as association:
                warnings += _store(association, chunk)
            confirmed += len(chunk)
        return Delivery(confirmed=confirmed, warnings=warnings)

    def test(self) -> str:
        peer = self.peer({})
        with self._associate(peer, [(VERIFICATION, [ImplicitVRLittleEndian])]) as association:
            context = association.context_for(VERIFICATION, ImplicitVRLittleEndian)
            status = association.echo(context).status if context is not None else None
        if status != 0x0000:
            raise TargetUnavailable(f"C-ECHO to {peer} failed")
        return f"C-ECHO to {peer} succeeded"

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

    def tls(self) -> ssl.SSLContext | None:
        """The client TLS context (None: plain TCP)."""
        return None

    def _associate(self, peer: Peer, contexts: list[tuple[str, list[str]]]) -> Association:
        return associate(peer, contexts, timeout_s=self._settings.timeout_s, tls=self.tls())


@register("dicomtls", DicomTlsSettings)
class DicomTlsTarget(DicomTarget):
    def __init__(self, settings: DicomTlsSettings) -> None:
        super().__init__(settings)
        self._tls_settings = settings

    def tls(self) -> ssl.SSLContext:
        settings = self._tls_settings
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_cert)
            context.load_cert_chain(certfile=settings.tls_cert, keyfile=settings.tls_key)
        except (OSError, ssl.SSLError) as error:
            raise TargetMisconfigured(f"TLS key, certificate or CA unusable: {error}") from error
        return context


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
    return 1 if syntax == ImplicitVRLittleEndian or UID(syntax).is_compressed else 2


def _contexts_for(instances: list[StagedInstance]) -> list[tuple[str, list[str]]]:
    pairs = dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances)
    contexts = []
    for sop_class, syntax in pairs:
        contexts.append((sop_class, [syntax]))
        if _contexts_needed(syntax) == 2:
            contexts.append((sop_class, [other for other in _UNCOMPRESSED if other != syntax]))
    return contexts


def _store(association: Association, instances: list[StagedInstance]) -> int:
    """C-STORE every instance, each read and framed while the target stores the one before;
    how many the target answered with a warning."""
    warnings = 0
    waiting: tuple[StagedInstance, int, int] | None = None  # instance, context, message ID
    for instance in instances:
        context, data_set = _data_set_for(association, instance)
        if waiting is not None:
            warnings += _answer(association, *waiting)
        message_id = association.send_store(
            context,
            sop_class_uid=instance.sop_class_uid,
            sop_instance_uid=instance.sop_uid,
            data_set=data_set,
        )
        waiting = (instance, context, message_id)
    if waiting is not None:
        warnings += _answer(association, *waiting)
    return warnings


def _answer(
    association: Association, instance: StagedInstance, context: int, message_id: int
) -> int:
    """The target's verdict on `instance`: 1 for a warning, 0 for success, else an error."""
    status = association.response(context, message_id).status
    if status == 0x0000:
        return 0
    if status in _WARNINGS:
        return 1
    if status & 0xFF00 == 0xA700:
        raise TargetUnavailable(f"target out of resources (0x{status:04X}) for {instance.sop_uid}")
    raise TargetRefused(f"target refused {instance.sop_uid} with status 0x{status:04X}")


def _data_set_for(association: Association, instance: StagedInstance) -> tuple[int, memoryview]:
    """The context to send `instance` on, and its data set encoded for that context: the stored
    bytes when the stored syntax was accepted, else converted to an accepted uncompressed one."""
    context = association.context_for(instance.sop_class_uid, instance.transfer_syntax_uid)
    if context is not None:
        raw = instance.path.read_bytes()
        try:
            offset = read_file_meta(raw).dataset_offset
        except CannotUnderstand as error:
            raise TargetRefused(f"stored {instance.path.name}: {error}") from error
        return context, memoryview(raw)[offset:]
    if not UID(instance.transfer_syntax_uid).is_compressed:
        for syntax in _UNCOMPRESSED:
            context = association.context_for(instance.sop_class_uid, syntax)
            if context is not None:
                return context, _converted(instance, syntax)
    raise TargetRefused(
        f"target accepts {instance.sop_class_uid} in none of the syntaxes it could be sent in "
        f"(stored as {instance.transfer_syntax_uid})"
    )


def _converted(instance: StagedInstance, syntax: str) -> memoryview:
    """The instance's data set re-encoded in an uncompressed little-endian `syntax`."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(buffer, dcmread(instance.path))
    return memoryview(buffer.getvalue())
