"""Series and study completion as a fold over a study's events, and what is due at a moment.

Pure: no Kafka, no clock. A study's `StudyRecord` is folded from its events as they come off the
log (`admit_instance`, `record_series_completed`, `record_rules_evaluated`,
`record_study_completed`); `due` says which completions a record owes at `now`. Arrival times are
the events' `occurred_at`, so folding the same events again gives the same record.

- A series is complete when no instance arrived for `series_complete_trigger` seconds. An
  instance arriving after its series completed starts a new completion marked `late_arrival`.
  A replayed instance (its offset at or below the last one a completion included) is ignored.
- A series matched by a study-level rule waits in that rule's `StudyBucket`. The bucket completes
  on `received_series` (mercure's expression over series descriptions), on `timeout` (no new
  series for `study_complete_trigger` and no series of the study still incomplete), by operator
  request, or after `study_forcecomplete_trigger` with the rule's action (discard, proceed, or
  ignore = keep waiting). A `received_series` rule without an expression waits by timeout.
"""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field

from infra.catalogue import (
    BlobReference,
    InstanceReceived,
    RulesEvaluated,
    SeriesCompleted,
    StudyCompleted,
    StudyDeferral,
    Tags,
)
from infra.events import Value
from streams import rules as rule_language
from streams.config import RoutingSettings

_COMPLETION_NAMESPACE = uuid.UUID("0f4b1f57-33a4-4f39-8a1e-0d64a1c2b7e3")


class PendingSeries(Value):
    """A series still receiving instances."""

    first_at: datetime
    last_at: datetime
    tags: Tags
    late_arrival: bool = False


class CompletedSeries(Value):
    """What the record remembers of a series after its last completion."""

    through_offset: int
    completion_id: str
    completions: int = 1
    description: str = ""


class BucketEntry(Value):
    """A completed series waiting for its study under one study-level rule."""

    series_uid: str
    completion_id: str
    description: str


class StudyBucket(Value):
    """The series a study-level rule collects until the study completes."""

    terms: StudyDeferral
    created_at: datetime
    last_received_at: datetime
    entries: list[BucketEntry] = Field(default_factory=list)


class StudyRecord(Value):
    """Completion state of one study, on the partition its events live on."""

    study_uid: str
    partition: int
    updated_at: datetime
    pending: dict[str, PendingSeries] = Field(default_factory=dict)
    completed: dict[str, CompletedSeries] = Field(default_factory=dict)
    buckets: dict[str, StudyBucket] = Field(default_factory=dict)

    def is_idle(self) -> bool:
        return not self.pending and not self.buckets


def admit_instance(
    record: StudyRecord | None,
    instance: InstanceReceived,
    *,
    partition: int,
    offset: int,
    at: datetime,
) -> StudyRecord | None:
    """The record after `instance` arrived; None when it is a replay of a completed instance."""
    current = record or StudyRecord(
        study_uid=instance.study_uid, partition=partition, updated_at=at
    )
    done = current.completed.get(instance.series_uid)
    if done is not None and offset <= done.through_offset:
        return None
    series = current.pending.get(instance.series_uid)
    if series is None:
        series = PendingSeries(
            first_at=at, last_at=at, tags=instance.tags, late_arrival=done is not None
        )
    else:
        series = series.model_copy(update={"last_at": max(series.last_at, at)})
    return current.model_copy(
        update={
            "pending": {**current.pending, instance.series_uid: series},
            "updated_at": max(current.updated_at, at),
        }
    )


def record_series_completed(
    record: StudyRecord,
    completed: SeriesCompleted,
    *,
    through_offset: int,
    still_pending: bool,
    at: datetime,
) -> StudyRecord:
    """The record after `completed`; `still_pending` when instances arrived after it was taken."""
    previous = record.completed.get(completed.series_uid)
    if previous is not None and previous.completion_id == completed.completion_id:
        return record
    pending = dict(record.pending)
    if still_pending and completed.series_uid in pending:
        pending[completed.series_uid] = pending[completed.series_uid].model_copy(
            update={"late_arrival": True}
        )
    else:
        pending.pop(completed.series_uid, None)
    remembered = CompletedSeries(
        through_offset=max(through_offset, previous.through_offset if previous else -1),
        completion_id=completed.completion_id,
        completions=(previous.completions + 1) if previous else 1,
        description=completed.tags.get("SeriesDescription", ""),
    )
    return record.model_copy(
        update={
            "pending": pending,
            "completed": {**record.completed, completed.series_uid: remembered},
            "updated_at": max(record.updated_at, at),
        }
    )


def record_rules_evaluated(
    record: StudyRecord, evaluated: RulesEvaluated, *, at: datetime
) -> StudyRecord:
    """The record after a series decision: the series joins the buckets of its study rules."""
    if not evaluated.deferred or evaluated.series_uid is None:
        return record
    series = record.completed.get(evaluated.series_uid)
    entry = BucketEntry(
        series_uid=evaluated.series_uid,
        completion_id=evaluated.completion_id,
        description=series.description if series else "",
    )
    buckets = dict(record.buckets)
    for terms in evaluated.deferred:
        bucket = buckets.get(terms.rule) or StudyBucket(
            terms=terms, created_at=at, last_received_at=at
        )
        if all(known.completion_id != entry.completion_id for known in bucket.entries):
            bucket = bucket.model_copy(
                update={"entries": [*bucket.entries, entry], "last_received_at": at}
            )
        buckets[terms.rule] = bucket
    return record.model_copy(update={"buckets": buckets, "updated_at": max(record.updated_at, at)})


def record_study_completed(
    record: StudyRecord, completed: StudyCompleted, *, at: datetime
) -> StudyRecord:
    """The record after a study completion: its series leave the bucket (later ones stay)."""
    bucket = record.buckets.get(completed.rule or "")
    if bucket is None:
        return record
    taken = set(completed.series_completions)
    left = [entry for entry in bucket.entries if entry.completion_id not in taken]
    buckets = dict(record.buckets)
    if left:
        buckets[bucket.terms.rule] = bucket.model_copy(
            update={"entries": left, "created_at": at, "last_received_at": at}
        )
    else:
        del buckets[bucket.terms.rule]
    return record.model_copy(update={"buckets": buckets, "updated_at": max(record.updated_at, at)})


# --- what is due -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesDue:
    series_uid: str


@dataclass(frozen=True)
class StudyDue:
    rule: str
    reason: Literal["timeout", "received_series", "forced", "operator"]
    action: Literal["proceed", "discard"] = "proceed"


Due = SeriesDue | StudyDue


def due(
    record: StudyRecord,
    *,
    now: datetime,
    settings: RoutingSettings,
    forced_at: datetime | None = None,
) -> list[Due]:
    """The completions `record` owes at `now`; `forced_at`: an operator forced the study then."""
    quiet = timedelta(seconds=settings.series_complete_trigger)
    owed: list[Due] = [
        SeriesDue(uid) for uid, series in record.pending.items() if series.last_at + quiet <= now
    ]
    for bucket in record.buckets.values():
        owed_study = _study_due(
            bucket,
            now=now,
            settings=settings,
            forced_at=forced_at,
            series_pending=bool(record.pending),
        )
        if owed_study is not None:
            owed.append(owed_study)
    return owed


def _study_due(
    bucket: StudyBucket,
    *,
    now: datetime,
    settings: RoutingSettings,
    forced_at: datetime | None,
    series_pending: bool,
) -> StudyDue | None:
    terms = bucket.terms
    if forced_at is not None and forced_at >= bucket.created_at:
        return StudyDue(terms.rule, "operator")
    by_series = terms.condition == "received_series" and terms.required_series.strip()
    if by_series:
        descriptions = [entry.description for entry in bucket.entries]
        if rule_language.completion_series_met(terms.required_series, descriptions):
            return StudyDue(terms.rule, "received_series")
    else:
        quiet = timedelta(seconds=settings.study_complete_trigger)
        if bucket.last_received_at + quiet <= now and not series_pending:
            return StudyDue(terms.rule, "timeout")
    deadline = bucket.created_at + timedelta(seconds=settings.study_forcecomplete_trigger)
    if deadline <= now and terms.force_action != "ignore":
        return StudyDue(terms.rule, "forced", terms.force_action)
    return None


# --- the facts a completion becomes ---------------------------------------------------------


def series_completed(
    record: StudyRecord, series_uid: str, blobs: Sequence[BlobReference]
) -> SeriesCompleted:
    """The `SeriesCompleted` for a due series with the blobs of its pending instances."""
    series = record.pending[series_uid]
    keys = sorted(blob.key for blob in blobs)
    completion_id = uuid.uuid5(_COMPLETION_NAMESPACE, "\n".join([series_uid, *keys]))
    return SeriesCompleted(
        study_uid=record.study_uid,
        series_uid=series_uid,
        completion_id=str(completion_id),
        instance_count=len(blobs),
        blobs=sorted(blobs, key=lambda blob: blob.key),
        tags=series.tags,
        late_arrival=series.late_arrival,
    )


def study_completed(
    record: StudyRecord, owed: StudyDue, parked: Mapping[str, SeriesCompleted]
) -> StudyCompleted:
    """The `StudyCompleted` for a due bucket, from the completed series parked for it."""
    bucket = record.buckets[owed.rule]
    series = [
        parked[entry.completion_id] for entry in bucket.entries if entry.completion_id in parked
    ]
    completions = [entry.completion_id for entry in bucket.entries]
    completion_id = uuid.uuid5(
        _COMPLETION_NAMESPACE, "\n".join([record.study_uid, owed.rule, *completions])
    )
    return StudyCompleted(
        study_uid=record.study_uid,
        completion_id=str(completion_id),
        series_uids=list(dict.fromkeys(entry.series_uid for entry in bucket.entries)),
        reason=owed.reason,
        rule=owed.rule,
        action=owed.action,
        series_completions=completions,
        received_series=[entry.description for entry in bucket.entries],
        blobs=[blob for completed in series for blob in completed.blobs],
        tags=series[0].tags if series else {},
    )
