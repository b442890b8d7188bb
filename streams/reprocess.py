"""Reprocessing: decide again, with today's rules or one named rule, on series already stored.

Every `SeriesCompleted` is kept in the blob store (`completions/<study>/<series>.json`, the
latest completion of the series). A `ReprocessRequested` for a series or a whole study reads
those records, checks that the instances are still in the blob store, and runs the same
decision as a live completion under a new completion id, so the commands are new jobs. A series
that was never completed, or whose instances were purged by retention, gets `ReprocessRejected`
with the reason. Study-level rules are not re-run this way: they wait for a study completion.
"""

from collections.abc import Callable, Iterator

import structlog

from infra.blobstore import BlobKey, BlobStore, blob_key, parse_key
from infra.catalogue import (
    ReprocessRejected,
    ReprocessRequested,
    SeriesCompleted,
)
from infra.events import Envelope, Payload
from infra.log import EventProducer
from streams.config import Configuration
from streams.decisions import decide_series, subject_of

log = structlog.get_logger(__name__)
SOURCE = "streams/reprocess"


def completion_key(study_uid: str, series_uid: str) -> BlobKey:
    return blob_key("completions", study_uid, f"{series_uid}.json")


class Reprocessor:
    """Keeps completion records and answers reprocessing requests."""

    def __init__(
        self,
        *,
        store: BlobStore,
        producer: EventProducer,
        configuration: Callable[[], Configuration],
    ) -> None:
        self._store = store
        self._producer = producer
        self._configuration = configuration

    def handle(self, envelope: Envelope) -> None:
        payload = envelope.payload
        if isinstance(payload, SeriesCompleted):
            key = completion_key(payload.study_uid, payload.series_uid)
            self._store.put(key, payload.model_dump_json().encode())
        elif isinstance(payload, ReprocessRequested):
            self._producer.publish_all(
                envelope.caused(decided, source=SOURCE, subject=subject_of(decided))
                for decided in self.decide(envelope, payload)
            )

    def decide(self, cause: Envelope, request: ReprocessRequested) -> list[Payload]:
        """The events answering one request (pure but for reading the blob store)."""
        records = list(self._records(request))
        if not records:
            return [_rejected(request, "no completed series is stored for this request")]
        config = self._configuration()
        if request.rule is not None and request.rule not in config.rules:
            return [_rejected(request, f"there is no rule named {request.rule!r}")]
        decided: list[Payload] = []
        for completed in records:
            missing = [b.key for b in completed.blobs if not self._store.exists(parse_key(b.key))]
            if missing:
                decided.append(
                    _rejected(
                        request,
                        f"{len(missing)} of {len(completed.blobs)} instances of series "
                        f"{completed.series_uid} are no longer stored (purged by retention)",
                        series_uid=completed.series_uid,
                    )
                )
                continue
            again = completed.model_copy(
                update={"completion_id": f"{completed.completion_id}~{cause.event_id}"}
            )
            decided += decide_series(again, config, forced_rule=request.rule)
        return decided

    def _records(self, request: ReprocessRequested) -> Iterator[SeriesCompleted]:
        if request.series_uid is not None:
            keys = [completion_key(request.study_uid, request.series_uid).path]
            keys = [k for k in keys if self._store.exists(parse_key(k))]
        else:
            keys = list(self._store.list(f"completions/{request.study_uid}"))
        for key in keys:
            yield SeriesCompleted.model_validate_json(self._store.get(parse_key(key)))


def _rejected(
    request: ReprocessRequested, reason: str, *, series_uid: str | None = None
) -> ReprocessRejected:
    log.warning("reprocessing rejected", study_uid=request.study_uid, reason=reason)
    return ReprocessRejected(
        study_uid=request.study_uid, series_uid=series_uid or request.series_uid, reason=reason
    )
