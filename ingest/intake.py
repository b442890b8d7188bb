"""The one path every instance takes, whatever door it came in by (C-STORE, STOW-RS, upload,
import): snapshot the tags, write the bytes to the blob store, and hand `InstanceReceived` to the
outbox (see `ingest.outbox`), which returns once the event will reach the log. Only then is the
instance accepted (DESIGN: "nothing acknowledged is lost"); anything else is a `Refused` with
the status the sender gets, reported as `InstanceRejected`, and leaves no new blob behind.
"""

import hashlib
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Literal

import structlog

from infra.blobstore import (
    BlobKey,
    BlobStore,
    BlobStoreError,
    InsufficientSpace,
    InvalidKey,
    InvalidUID,
    StagedBlob,
    instance_key,
    validate_uid,
)
from infra.catalogue import BlobReference, InstanceReceived, InstanceRejected, IntakeFact
from infra.events import Envelope
from infra.log import EventProducer, PublishFailed, PublishRejected
from ingest import metrics
from ingest.errors import CannotUnderstand, OutOfResources, Refused
from ingest.outbox import Outbox, Pending
from ingest.part10 import FileMeta, encode_file_meta, read_file_meta
from ingest.tags import Snapshot, TagReader
from streams.decisions import FORCE_RULE_TAGS

log = structlog.get_logger(__name__)

IntakeKind = Literal["dicom", "stow", "upload", "import", "retrieve"]


@dataclass(frozen=True, kw_only=True)
class Origin:
    """Who handed us an instance, and through which door."""

    intake: IntakeKind
    calling_aet: str = ""
    called_aet: str = ""
    peer_address: str = ""
    peer_port: int = 0
    job_id: str | None = None
    """The query job that retrieved the instance."""
    forced_rule: str = ""
    """A rule the instance's series must be routed by, whatever the rules say."""


@dataclass(frozen=True, kw_only=True)
class Arrival:
    """One instance as a Part 10 file (bytes as received), with its file meta read."""

    file: bytes
    meta: FileMeta

    @classmethod
    def from_file(cls, data: bytes) -> "Arrival":
        """A whole file (STOW-RS, upload, import); `CannotUnderstand` if it is not Part 10."""
        return cls(file=data, meta=read_file_meta(data))

    @classmethod
    def from_data_set(
        cls,
        fragments: list[memoryview],
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        implementation_class_uid: str,
        implementation_version_name: str,
    ) -> "Arrival":
        """A C-STORE data set as received, behind a file meta group (bytes copied once)."""
        head = encode_file_meta(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            implementation_class_uid=implementation_class_uid,
            implementation_version_name=implementation_version_name,
        )
        meta = FileMeta(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            dataset_offset=len(head),
        )
        return cls(file=b"".join([head, *fragments]), meta=meta)

    @property
    def dataset(self) -> memoryview:
        return memoryview(self.file)[self.meta.dataset_offset :]


class Intake:
    """Accepts instances into the blob store and onto the log; thread-safe."""

    def __init__(
        self,
        *,
        blobs: BlobStore,
        producer: EventProducer,
        outbox: Outbox,
        reader: TagReader,
        source: str,
    ) -> None:
        self.blobs = blobs
        self.producer = producer
        self.outbox = outbox
        self._reader = reader
        self._source = source

    def receive(self, arrival: Arrival, origin: Origin) -> InstanceReceived:
        """Make `arrival` durable and logged; raise `Refused` (already reported) if it cannot be."""
        acceptance = self.begin(arrival, origin)
        acceptance.store()
        return acceptance.finish()

    def begin(self, arrival: Arrival, origin: Origin) -> "Acceptance":
        """The first step of `receive`, which never waits for the disk or the broker: read the
        tags, write the bytes (not yet durable) and start publishing the event. The C-STORE
        path runs the steps itself, to wait for the broker and the disk without a thread in
        between."""
        with self.refusals(sop_uid=arrival.meta.sop_instance_uid, origin=origin):
            snapshot = _snapshot(arrival, self._reader)
            self.outbox.admit()
            key = instance_key(
                study_uid=snapshot.study_uid,
                series_uid=snapshot.series_uid,
                sop_uid=snapshot.sop_uid,
            )
            blob = BlobReference(
                key=key.path,
                size=len(arrival.file),
                sha256=hashlib.sha256(arrival.file).hexdigest(),
            )
            received = _instance_received(snapshot, blob=blob, meta=arrival.meta, origin=origin)
            with _refusing_blob_errors():
                staged = self.blobs.stage(key, arrival.file)
            try:
                pending = self.outbox.begin(
                    Envelope(payload=received, source=self._source, subject=received.sop_uid)
                )
            except BaseException:
                staged.discard()
                raise
        return Acceptance(
            intake=self,
            arrival=arrival,
            origin=origin,
            key=key,
            received=received,
            staged=staged,
            pending=pending,
        )

    @contextmanager
    def refusals(self, *, sop_uid: str, origin: Origin) -> Iterator[None]:
        """Report a `Refused` raised inside as `InstanceRejected` (and re-raise it)."""
        try:
            yield
        except Refused as refusal:
            self._refused(refusal, sop_uid=sop_uid, origin=origin)
            raise

    def receive_file(self, data: bytes, origin: Origin) -> InstanceReceived:
        """A whole Part 10 file (STOW-RS, upload, import), as `receive`."""
        try:
            arrival = Arrival.from_file(data)
        except CannotUnderstand as refusal:
            self._refused(refusal, sop_uid="", origin=origin)
            raise
        return self.receive(arrival, origin)

    def report(self, fact: IntakeFact) -> None:
        """Publish an association fact without waiting: intake must not stall on it."""
        subject = fact.partition_key() or "intake"  # web and import have no AE title
        envelope = Envelope(payload=fact, source=self._source, subject=subject)
        try:
            self.producer.publish_async(envelope).add_done_callback(_log_failure)
        except (PublishFailed, PublishRejected) as error:
            log.warning("intake fact not published", type=fact.TYPE, error=str(error))

    def _refused(self, refusal: Refused, *, sop_uid: str, origin: Origin) -> None:
        metrics.REJECTIONS.labels(origin.intake, f"0x{refusal.status:04X}").inc()
        log.warning(
            "instance refused",
            status=f"0x{refusal.status:04X}",
            reason=str(refusal),
            sop_uid=sop_uid,
            calling_aet=origin.calling_aet,
            peer=origin.peer_address,
        )
        self.report(
            InstanceRejected(
                status=refusal.status,
                reason=str(refusal)[:2000],
                sop_uid=sop_uid[:64] or None,
                calling_aet=origin.calling_aet,
                called_aet=origin.called_aet,
                peer_address=origin.peer_address,
                peer_port=origin.peer_port,
            )
        )


class Acceptance:
    """One instance on its way in, started by `Intake.begin` (tags read, bytes written, event
    handed to the outbox) and completed by `store` (the blob made durable: waits for the
    disk) and `finish` (once `settled` is done it does not wait). The event is published
    once the bytes are written, so a reader given its key finds them all, and before they
    are made durable, so that the broker's round trip overlaps the disk flush."""

    def __init__(
        self,
        *,
        intake: Intake,
        arrival: Arrival,
        origin: Origin,
        key: BlobKey,
        received: InstanceReceived,
        staged: StagedBlob,
        pending: Pending,
    ) -> None:
        self._intake = intake
        self._arrival = arrival
        self._origin = origin
        self._key = key
        self.received = received
        self._staged = staged
        self._pending = pending

    @property
    def settled(self) -> "Future[None]":
        """Done once `finish` will not wait."""
        return self._intake.outbox.settled(self._pending)

    def store(self) -> None:
        """Make the blob durable; `Refused` (reported) if it cannot be."""
        with self._refusals():
            try:
                with _refusing_blob_errors():
                    self._staged.commit()
            except Refused:
                self._intake.outbox.abandon(self._pending)
                raise

    def finish(self) -> InstanceReceived:
        """Once the blob is stored: return once the event will reach the log; else `Refused`
        (reported), with the blob gone again unless an earlier copy was there."""
        with self._refusals():
            try:
                self._intake.outbox.commit(self._pending)
            except OutOfResources:
                # An earlier, acknowledged copy stays: its event names it.
                if not self._staged.replaces:
                    self._remove()
                raise
        metrics.INSTANCES.labels(self._origin.intake).inc()
        metrics.BYTES.labels(self._origin.intake).inc(len(self._arrival.file))
        return self.received

    def _refusals(self) -> AbstractContextManager[None]:
        return self._intake.refusals(
            sop_uid=self._arrival.meta.sop_instance_uid, origin=self._origin
        )

    def _remove(self) -> None:
        try:
            self._intake.blobs.delete(self._key)
        except BlobStoreError as error:
            log.error(
                "blob of a refused instance left behind", key=self._key.path, error=str(error)
            )


def _snapshot(arrival: Arrival, reader: TagReader) -> Snapshot:
    try:
        validate_uid(arrival.meta.sop_class_uid)
    except InvalidUID as error:
        raise CannotUnderstand(f"SOP Class UID: {error}") from error
    snapshot = reader.read(
        arrival.dataset,
        transfer_syntax_uid=arrival.meta.transfer_syntax_uid,
        media_sop_class_uid=arrival.meta.sop_class_uid,
    )
    if snapshot.sop_uid != arrival.meta.sop_instance_uid:
        raise CannotUnderstand(
            f"SOP Instance UID {snapshot.sop_uid} differs from the one announced "
            f"({arrival.meta.sop_instance_uid})"
        )
    return snapshot


@contextmanager
def _refusing_blob_errors() -> Iterator[None]:
    """Blob store errors as the status the sender gets."""
    try:
        yield
    except InsufficientSpace as error:
        raise OutOfResources(f"blob store full: {error}") from error
    except InvalidKey as error:
        raise CannotUnderstand(f"no valid blob key: {error}") from error
    except BlobStoreError as error:
        raise OutOfResources(f"blob store unavailable: {error}") from error


def _instance_received(
    snapshot: Snapshot, *, blob: BlobReference, meta: FileMeta, origin: Origin
) -> InstanceReceived:
    tags = {
        **snapshot.tags,
        "SenderAET": origin.calling_aet,
        "ReceiverAET": origin.called_aet,
        "SenderAddress": origin.peer_address,
    }
    if origin.forced_rule:
        tags[FORCE_RULE_TAGS[0]] = origin.forced_rule
    return InstanceReceived(
        study_uid=snapshot.study_uid,
        series_uid=snapshot.series_uid,
        sop_uid=snapshot.sop_uid,
        sop_class_uid=meta.sop_class_uid,
        transfer_syntax_uid=meta.transfer_syntax_uid,
        blob=blob,
        intake=origin.intake,
        calling_aet=origin.calling_aet,
        called_aet=origin.called_aet,
        peer_address=origin.peer_address,
        peer_port=origin.peer_port,
        tags=tags,
        job_id=origin.job_id,
    )


def _log_failure(future: "Future[None]") -> None:
    error = future.exception()
    if error is not None:
        log.warning("intake fact not acknowledged", error=str(error))
