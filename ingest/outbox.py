"""How an accepted instance's `InstanceReceived` gets to the log: the two ways to keep the rule
that an instance is answered 0x0000 only once its bytes are durable and its event will reach
the log.

- `BrokerOutbox` publishes once the blob's bytes are written, before they are made durable,
  and waits for the broker's acknowledgement after they were: the broker round trip and the
  disk flush overlap instead of adding up (together they were about 90 % of a C-STORE's
  time). If the blob then cannot be made durable (a failing disk), the instance is refused
  but its event may already be on the log, naming a blob that is not there: consumers treat
  it as any missing blob, and the sender's retry logs the instance again.
- `Journal` appends the event to a local append-only file while the blob is made durable,
  fsyncs it (one fsync for all instances arriving together: group commit), and answers; a
  forwarder thread publishes journaled events in batches and records how far it got. After a
  crash the entries past that point are published again once their blobs are found intact,
  so an event may reach the log twice with the same `event_id` (consumers dedupe on it).
  When the broker has not taken an event for `publish_timeout_s`, the journal refuses new
  instances (0xA700) until it does, so it never becomes a second, unbounded store.
"""

import fcntl
import hashlib
import os
import struct
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from infra.blobstore import BlobNotFound, BlobStore, BlobStoreError, parse_key
from infra.catalogue import CATALOGUE, InstanceReceived
from infra.events import Envelope, UndecodableEvent, decode
from infra.log import EventProducer, PublishFailed, PublishRejected, Record
from ingest import metrics
from ingest.errors import JournalInUse, OutOfResources

log = structlog.get_logger(__name__)

_RECORD_HEADER = struct.Struct(">II")  # length, CRC-32 of the envelope bytes
_COMPACT_AT_BYTES = 64 * 1024**2
# Where forwarding got to, overwritten in place: fixed width, so no longer number's tail stays.
_CHECKPOINT_FORMAT = b"%020d\n"


class Pending(Protocol):
    """An event on its way out, between `Outbox.begin` and `commit` or `abandon`."""

    envelope: Envelope


class Outbox(Protocol):
    """Takes the events of accepted instances to the log."""

    def admit(self) -> None:
        """Raise `OutOfResources` if new instances cannot be taken now."""

    def begin(self, envelope: Envelope) -> Pending:
        """Start on `envelope`, once its blob's bytes are written and before they are durable;
        raise `OutOfResources` if it cannot be started."""

    def settled(self, pending: Pending) -> "Future[None]":
        """Done (within the publish timeout) once `commit` of `pending` will not wait."""

    def commit(self, pending: Pending) -> None:
        """Return once the event will reach the log (its blob is durable); else raise
        `OutOfResources`."""

    def abandon(self, pending: Pending) -> None:
        """The blob could not be written: the event must not reach the log."""

    def close(self) -> None:
        """Hand over what is pending (as far as possible) and stop."""


@dataclass
class _Published:
    envelope: Envelope
    acknowledged: "Future[None]"
    began: float


class BrokerOutbox:
    """Publish while the blob is made durable; commit once the broker acknowledged."""

    def __init__(self, producer: EventProducer, *, timeout_s: float) -> None:
        self._producer = producer
        self._timeout_s = timeout_s

    def admit(self) -> None:
        """The broker is asked per instance; nothing to check up front."""

    def begin(self, envelope: Envelope) -> Pending:
        began = time.perf_counter()
        try:
            acknowledged = self._producer.publish_async(envelope)
        except (PublishFailed, PublishRejected) as error:
            raise OutOfResources(f"event not published: {error}") from error
        return _Published(envelope, acknowledged, began)

    def settled(self, pending: Pending) -> "Future[None]":
        assert isinstance(pending, _Published)  # the outbox only gets back what it handed out
        return pending.acknowledged

    def commit(self, pending: Pending) -> None:
        assert isinstance(pending, _Published)  # the outbox only gets back what it handed out
        try:
            pending.acknowledged.result(timeout=self._timeout_s)
        except (PublishFailed, PublishRejected) as error:
            raise OutOfResources(f"event not acknowledged by the broker: {error}") from error
        except TimeoutError as error:
            raise OutOfResources("event not acknowledged by the broker in time") from error
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - pending.began)

    def abandon(self, pending: Pending) -> None:
        """The event is on its way and cannot be called back (see the module's notes)."""
        log.error(
            "event published for an instance whose blob was not stored",
            sop_uid=getattr(pending.envelope.payload, "sop_uid", ""),
        )

    def close(self) -> None:
        """Nothing is held."""


@dataclass(eq=False)
class _Entry:
    """One journaled event: durable once `written` is done, forwardable once `ready`."""

    envelope: Envelope
    encoded: Record  # as published, encoded once
    record: bytes  # as journaled
    written: "Future[None]" = field(default_factory=Future)
    ready: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False
    end_offset: int = 0
    ready_at: float = 0.0


def encode_record(value: bytes) -> bytes:
    """The journal record of an encoded envelope."""
    return _RECORD_HEADER.pack(len(value), zlib.crc32(value)) + value


def read_records(data: bytes) -> list[tuple[bytes, int]]:
    """Envelope bytes and end offset of each complete record; a torn tail is ignored."""
    records = []
    position = 0
    while position + _RECORD_HEADER.size <= len(data):
        length, checksum = _RECORD_HEADER.unpack_from(data, position)
        start = position + _RECORD_HEADER.size
        value = data[start : start + length]
        if len(value) < length or zlib.crc32(value) != checksum:
            break  # written but never synced: never acknowledged either
        position = start + length
        records.append((value, position))
    return records


class Journal:
    """Events made durable on local disk, forwarded to the broker in batches."""

    def __init__(
        self,
        folder: Path,
        *,
        producer: EventProducer,
        blobs: BlobStore,
        max_wait_s: float,
        batch_size: int = 500,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._path = folder / "events.journal"
        self._producer = producer
        self._blobs = blobs
        self._max_wait_s = max_wait_s
        self._batch_size = batch_size
        # One lock, a condition per waiter: each change wakes only the thread it concerns.
        self._lock = threading.Lock()
        self._writable = threading.Condition(self._lock)  # entries to write, or stopping
        self._forwardable = threading.Condition(self._lock)  # an entry settled, or stopping
        self._drained = threading.Condition(self._lock)  # entries forwarded
        self._to_write: list[_Entry] = []
        self._unforwarded: deque[_Entry] = deque()
        self._stopping = False
        self._broken = False
        self._file = self._path.open("ab")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise JournalInUse(f"another receiver uses the journal in {folder}") from None
        self._checkpoint = os.open(folder / "forwarded.offset", os.O_RDWR | os.O_CREAT, 0o644)
        self._recover()
        metrics.JOURNAL_BACKLOG.set_function(lambda: self.backlog)
        self._threads = [
            threading.Thread(target=self._write_loop, name="journal-writer", daemon=True),
            threading.Thread(target=self._forward_loop, name="journal-forwarder", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # --- the Outbox protocol ------------------------------------------------------------------

    def admit(self) -> None:
        with self._lock:
            head = self._unforwarded[0] if self._unforwarded else None
            if self._broken:
                raise OutOfResources(f"the intake journal {self._path} cannot be written")
        if (
            head is not None
            and head.ready_at
            and time.monotonic() - head.ready_at > self._max_wait_s
        ):
            raise OutOfResources(
                f"the broker has not taken an event for {self._max_wait_s:.0f} s; "
                f"{len(self._unforwarded)} wait in the journal"
            )

    def begin(self, envelope: Envelope) -> Pending:
        encoded = self._producer.record(envelope)
        entry = _Entry(envelope=envelope, encoded=encoded, record=encode_record(encoded.value))
        with self._lock:
            if self._stopping:
                raise OutOfResources("the journal is closed")
            self._to_write.append(entry)
            self._unforwarded.append(entry)
            self._writable.notify()
        return entry

    def settled(self, pending: Pending) -> "Future[None]":
        return self._entry(pending).written

    def commit(self, pending: Pending) -> None:
        entry = self._entry(pending)
        try:
            entry.written.result()
        except OSError as error:
            self.abandon(entry)
            raise OutOfResources(f"event not journaled: {error}") from error
        with self._lock:
            entry.ready_at = time.monotonic()
            entry.ready.set()
            self._forwardable.notify()

    def abandon(self, pending: Pending) -> None:
        entry = self._entry(pending)
        with self._lock:
            entry.abandoned = True
            entry.ready.set()
            self._forwardable.notify()

    def close(self, *, timeout_s: float = 10.0) -> None:
        """Forward what is ready (up to `timeout_s`), then stop; the rest waits on disk."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._unforwarded and time.monotonic() < deadline:
                self._drained.wait(0.05)
            self._stopping = True
            self._writable.notify()
            self._forwardable.notify()
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self._file.close()
        os.close(self._checkpoint)

    @property
    def backlog(self) -> int:
        return len(self._unforwarded)

    # --- writing: group commit ------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._to_write and not self._stopping:
                    self._writable.wait()
                if self._stopping and not self._to_write:
                    return
                batch, self._to_write = self._to_write, []
            self._write(batch)

    def _write(self, batch: list[_Entry]) -> None:
        start = self._file.tell()
        try:
            self._file.write(b"".join(entry.record for entry in batch))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:
            self._cut_back(start)
            for entry in batch:
                entry.written.set_exception(error)
            return
        offset = self._file.tell()
        for entry in reversed(batch):
            entry.end_offset, offset = offset, offset - len(entry.record)
            entry.written.set_result(None)

    def _cut_back(self, offset: int) -> None:
        """Drop a failed write, so that records journaled later stay readable after it."""
        try:
            self._file.truncate(offset)
            self._file.seek(offset)
        except OSError as error:
            log.error("journal unusable, refusing instances", error=str(error))
            with self._lock:
                self._broken = True

    # --- forwarding ----------------------------------------------------------------------------

    def _forward_loop(self) -> None:
        delay = 0.05
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [entry.encoded for entry in batch if not entry.abandoned]
            try:
                began = time.perf_counter()
                self._producer.publish_records(live)
                metrics.PUBLISH_SECONDS.observe(time.perf_counter() - began)
            except (PublishFailed, PublishRejected) as error:
                log.warning("journal cannot forward yet", error=str(error), waiting=self.backlog)
                if self._stopped_waiting(delay):
                    return
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            self._forwarded(batch)

    def _stopped_waiting(self, delay: float) -> bool:
        with self._lock:
            self._forwardable.wait_for(lambda: self._stopping, timeout=delay)
            return self._stopping

    def _next_batch(self) -> list[_Entry] | None:
        """The longest prefix of settled entries (at most `batch_size`); None when stopping."""
        with self._lock:
            while True:
                settled: list[_Entry] = []
                for entry in self._unforwarded:
                    if not entry.ready.is_set() or len(settled) == self._batch_size:
                        break
                    settled.append(entry)
                if settled:
                    return settled
                if self._stopping:
                    return None
                self._forwardable.wait(0.5)

    def _forwarded(self, batch: list[_Entry]) -> None:
        with self._lock:
            for _ in batch:
                self._unforwarded.popleft()
            idle = not self._unforwarded and not self._to_write
            self._drained.notify_all()
            offset = max(entry.end_offset for entry in batch)
            if idle and self._file.tell() > _COMPACT_AT_BYTES:
                self._file.truncate(0)
                self._file.seek(0)
                offset = 0
            self._save_checkpoint(offset)

    def _save_checkpoint(self, offset: int) -> None:
        """Where forwarding got to; losing it only means forwarding some events again. One
        write in place: a temporary file renamed over it took a new inode per batch."""
        os.pwrite(self._checkpoint, _CHECKPOINT_FORMAT % offset, 0)

    def _read_checkpoint(self, journal_bytes: int) -> int:
        """Where forwarding got to; the journal's start if the checkpoint is unreadable or
        past the journal's end (a crash between compacting and saving the checkpoint):
        forwarding some events again is safe, skipping some is not."""
        text = os.pread(self._checkpoint, 64, 0).strip()
        try:
            offset = int(text or 0)
        except ValueError:
            offset = -1
        if not 0 <= offset <= journal_bytes:
            log.error("journal checkpoint unusable; forwarding from the start", checkpoint=text)
            return 0
        return offset

    # --- recovery ------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Queue the events journaled but not forwarded before the last stop or crash."""
        journal = self._path.read_bytes()
        start = self._read_checkpoint(len(journal))
        data = journal[start:]
        for value, end in read_records(data):
            envelope = self._decoded(value)
            if envelope is None or not self._blob_intact(envelope):
                continue
            entry = _Entry(
                envelope=envelope,
                encoded=self._producer.record(envelope),
                record=b"",
                end_offset=start + end,
            )
            entry.written.set_result(None)
            entry.ready_at = time.monotonic()
            entry.ready.set()
            self._unforwarded.append(entry)
        if self._unforwarded:
            log.info("journal recovered unforwarded events", count=len(self._unforwarded))

    def _decoded(self, value: bytes) -> Envelope | None:
        try:
            return decode(value, None, CATALOGUE)
        except UndecodableEvent as error:
            log.error("journal record undecodable", error=str(error))
            return None

    def _blob_intact(self, envelope: Envelope) -> bool:
        """Whether the blob an event names was stored (it was written beside the journal)."""
        payload = envelope.payload
        if not isinstance(payload, InstanceReceived):
            return True
        try:
            data = self._blobs.get(parse_key(payload.blob.key))
        except (BlobNotFound, BlobStoreError):
            return False
        return hashlib.sha256(data).hexdigest() == payload.blob.sha256

    @staticmethod
    def _entry(pending: Pending) -> _Entry:
        assert isinstance(pending, _Entry)  # the journal only gets back what it handed out
        return pending
