"""What the blob store holds about one processing job, so that each effect happens once.

Under ``processing/<job id>/``: the first command (``command.json``, what a retry re-runs), and
per attempt an outbox of the events the attempt published, the modules' logs and the outputs::

    processing/<job>/command.json
    processing/<job>/attempt-<n>/outbox/<name>.json        events, recorded before publishing
    processing/<job>/attempt-<n>/outbox/<name>.published   marker, written after the broker's ack
    processing/<job>/requests/<name>.json|.published      the same for operator requests (retries)
    processing/<job>/attempt-<n>/step-<k>.log
    processing/<job>/attempt-<n>/out/<series>/<sop>.dcm

`publish_once` records the events, publishes them and marks them published. A command redelivered
after a crash finds the marker and publishes nothing again; one that finds only the record
publishes the recorded events, with their original ids, so consumers dedupe them.
"""

import json
import re
from collections.abc import Sequence

import structlog

from infra.blobstore import BlobKey, BlobStore, blob_key, instance_key
from infra.catalogue import CATALOGUE, ProcessingFailed, ProcessSeries
from infra.events import Envelope, decode, encode
from infra.log import EventProducer

log = structlog.get_logger(__name__)

OUTCOME = "outcome"
_ATTEMPT = re.compile(r"attempt-([0-9]+)")


class JobJournal:
    """The blob-store record of one processing job."""

    def __init__(self, blobs: BlobStore, job_id: str) -> None:
        self._blobs = blobs
        self._job = ("processing", job_id)

    def record_command(self, command: ProcessSeries) -> None:
        """Keep the job's first command: its inputs are what a retry runs on."""
        key = blob_key(*self._job, "command.json")
        if not self._blobs.exists(key):
            self._blobs.put(key, command.model_dump_json().encode())

    def command(self) -> ProcessSeries | None:
        """The job's first command, or None if this is no processing job seen here."""
        key = blob_key(*self._job, "command.json")
        if not self._blobs.exists(key):
            return None
        return ProcessSeries.model_validate_json(self._blobs.get(key))

    def latest_attempt(self) -> int:
        """The highest attempt that recorded anything (0 if none)."""
        prefix = "/".join(self._job)
        attempts = [
            int(match.group(1))
            for key in self._blobs.list(prefix)
            if (match := _ATTEMPT.fullmatch(key.split("/")[2]))
        ]
        return max(attempts, default=0)

    def failed(self, attempt: int) -> bool:
        """Whether `attempt` ended with `ProcessingFailed`."""
        key = self._outbox(attempt, OUTCOME, "json")
        if not self._blobs.exists(key):
            return False
        return any(isinstance(event.payload, ProcessingFailed) for event in self._recorded(key))

    def is_published(self, attempt: int, name: str) -> bool:
        return self._blobs.exists(self._outbox(attempt, name, "published"))

    def publish_once(
        self,
        producer: EventProducer,
        envelopes: Sequence[Envelope],
        *,
        attempt: int | None,
        name: str,
    ) -> None:
        """Publish `envelopes` unless this attempt (or None: the job) already published `name`."""
        marker = self._outbox(attempt, name, "published")
        if self._blobs.exists(marker):
            log.info("already published", group=name, attempt=attempt)
            return
        record = self._outbox(attempt, name, "json")
        if self._blobs.exists(record):
            envelopes = self._recorded(record)
        else:
            values = [encode(envelope)[1].decode() for envelope in envelopes]
            self._blobs.put(record, json.dumps(values).encode())
        producer.publish_all(envelopes)
        self._blobs.put(marker, b"")

    def log_key(self, attempt: int, step: int) -> BlobKey:
        return blob_key(*self._job, f"attempt-{attempt}", f"step-{step}.log")

    def output_key(self, attempt: int, *, study_uid: str, series_uid: str, sop_uid: str) -> BlobKey:
        """Where an output instance goes; its UIDs are validated as at ingest."""
        validated = instance_key(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
        series, sop = validated.path.split("/")[2:]
        return blob_key(*self._job, f"attempt-{attempt}", "out", series, sop)

    def _outbox(self, attempt: int | None, name: str, suffix: str) -> BlobKey:
        if attempt is None:
            return blob_key(*self._job, "requests", f"{name}.{suffix}")
        return blob_key(*self._job, f"attempt-{attempt}", "outbox", f"{name}.{suffix}")

    def _recorded(self, key: BlobKey) -> list[Envelope]:
        values = json.loads(self._blobs.get(key))
        return [decode(value.encode(), None, CATALOGUE) for value in values]
