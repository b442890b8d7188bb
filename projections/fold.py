"""Fold rows: one per series, one per job and target, one per pending study and rule.

Each row is a pure fold over the events that concern it: `fold_series(row, event, at)` and its
siblings return the next row and never touch I/O or the clock. Two rules make the fold exact
under at-least-once delivery and independent of how partitions interleave:

- **Positions.** A row records, per topic-partition, the offset of the last event it applied
  (`positions`), and an event at or below that offset is skipped. Within a partition Kafka
  redelivers in order, so a batch applied twice (a crash after some rows were written, a
  rebuild) changes nothing, row by row, whatever else was or was not written.
- **Order-free merges.** Events about one row come from several partitions (instances, series,
  commands, jobs, operations) whose interleaving differs between a live run and a rebuild. So
  every field merges order-free: counts add, first/last times take min/max, sets take unions,
  and "latest" fields keep the value of the greatest (occurred_at, event_id). Inside one
  partition (a job's outcomes) order is the log's.

`version` counts the writes of a row, so the ReplacingMergeTree keeps the furthest-folded one.
A job's outcomes reach its series only once the job's command named them (the command pushes
the job's state so far), so `version` and `positions` are bookkeeping that depends on how
partitions interleaved; every other column is the same for any interleaving.
Payload fields that other services may still add are read with defaults (`field_of`).
"""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from infra.catalogue import (
    BlobsPurged,
    DispatchFailed,
    DispatchSeries,
    DispatchStarted,
    DispatchSucceeded,
    InstanceReceived,
    JobCancelled,
    JobRetryRequested,
    NotificationFailed,
    NotificationSent,
    Notify,
    ProcessingFailed,
    ProcessingStarted,
    ProcessingStepCompleted,
    ProcessSeries,
    RulesEvaluated,
    SeriesCompleted,
    SeriesDiscarded,
    StudyCompleted,
    StudyCompletionForced,
)
from infra.events import Envelope

ACTIVE_STATES = ("queued", "running", "retrying")


@dataclass(frozen=True, slots=True)
class At:
    """Where an event sits: `partition_key` is "topic/partition" (topic without prefix)."""

    partition_key: str
    offset: int


Row = TypeVar("Row")


def _with(row: Row, **changes: Any) -> Row:
    """A copy of the frozen `row` with `changes`: `dataclasses.replace` without re-running
    `__init__`, which costs most of the fold's time at thousands of events per second."""
    new: Row = object.__new__(type(row))
    state = new.__dict__
    state.update(row.__dict__)
    state.update(changes)
    return new


def field_of(payload: object, name: str, default: Any = None) -> Any:
    """A payload field that this payload type may not have (yet), without pydantic's slow miss."""
    return vars(payload).get(name, default)


def _applies(positions: dict[str, int], at: At) -> bool:
    return at.offset > positions.get(at.partition_key, -1)


Folded = TypeVar("Folded", "SeriesRow", "JobRow", "PendingStudyRow")


def _applied(row: Folded, at: At, updated_at: datetime | None, **derived: str) -> Folded:
    """`row` once the event at `at` is applied: its derived state (`derived`), position,
    version and update time; the bookkeeping every fold ends with."""
    return _with(
        row,
        positions={**row.positions, at.partition_key: at.offset},
        version=row.version + 1,
        updated_at=updated_at,
        **derived,
    )


def _earliest(current: datetime | None, moment: datetime) -> datetime:
    return moment if current is None or moment < current else current


def _latest(current: datetime | None, moment: datetime | None) -> datetime | None:
    if moment is None:
        return current
    return moment if current is None or moment > current else current


def _union(current: Iterable[str], more: Iterable[str]) -> list[str]:
    return sorted({*current, *more})


def _folded(
    row: Folded,
    event: Envelope,
    at: At,
    fact: Callable[[Folded, Envelope], Folded],
    **derived: Callable[[Folded], str],
) -> Folded:
    """`row` after `event` by `fact`, with its `derived` state columns recomputed."""
    if not _applies(row.positions, at):
        return row
    row = fact(row, event)
    updated_at = _latest(row.updated_at, event.occurred_at)
    return _applied(row, at, updated_at, **{name: of(row) for name, of in derived.items()})


def _is_newer(event: Envelope, *, than_at: datetime | None, than_id: str) -> bool:
    return than_at is None or (event.occurred_at, event.event_id) > (than_at, than_id)


# --- series --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SeriesRow:
    series_uid: str
    study_uid: str = ""
    patient_name: str = ""
    patient_key: str = ""
    patient_id: str = ""
    patient_id_key: str = ""
    accession_number: str = ""
    modality: str = ""
    study_description: str = ""
    series_description: str = ""
    series_date: str = ""
    sender_aet: str = ""
    receiver_aet: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    tags_event: str = ""
    tags_at: datetime | None = None
    tags_from_completion: bool = False
    instance_count: int = 0
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None
    completed_at: datetime | None = None
    completions: int = 0
    matched_rules: list[str] = field(default_factory=list)
    rules_event: str = ""
    rules_at: datetime | None = None
    study_rules: list[str] = field(default_factory=list)
    deferred_rules: list[str] = field(default_factory=list)
    discarded_at: datetime | None = None
    discard_reason: str = ""
    discarded_by: str = ""
    purged_at: datetime | None = None
    jobs: dict[str, str] = field(default_factory=dict)
    status: str = "receiving"
    positions: dict[str, int] = field(default_factory=dict)
    version: int = 0
    updated_at: datetime | None = None


def name_key(text: str) -> str:
    """A patient name as searched: case-folded, DICOM '^' component separators as spaces."""
    return " ".join(text.replace("^", " ").casefold().split())


def series_status(row: SeriesRow) -> str:
    """Where a series stands, from its own facts and the states of its jobs."""
    states = set(row.jobs.values())
    if row.discarded_at is not None:
        return "discarded"
    if "failed" in states:
        return "error"
    if states & set(ACTIVE_STATES):
        return "routing"
    if states:
        return "done"
    if row.deferred_rules and not row.study_rules:
        return "pending_study"
    if row.completed_at is not None:
        return "complete"
    return "receiving"


def _with_tags(
    row: SeriesRow, event: Envelope, tags: dict[str, str], *, completion: bool
) -> SeriesRow:
    """Completion tags beat instance tags: the latest completion's, else the first instance's."""
    if completion:
        take = not row.tags_from_completion or _is_newer(
            event, than_at=row.tags_at, than_id=row.tags_event
        )
    else:
        take = not row.tags_from_completion and (
            row.tags_at is None
            or (event.occurred_at, event.event_id) < (row.tags_at, row.tags_event)
        )
    if not take or not tags:
        return row
    name = tags.get("PatientName", "")
    patient_id = tags.get("PatientID", "")
    return _with(
        row,
        tags=dict(tags),
        tags_event=event.event_id,
        tags_at=event.occurred_at,
        tags_from_completion=completion,
        patient_name=name,
        patient_key=name_key(name),
        patient_id=patient_id,
        patient_id_key=patient_id.casefold(),
        accession_number=tags.get("AccessionNumber", ""),
        modality=tags.get("Modality", ""),
        study_description=tags.get("StudyDescription", ""),
        series_description=tags.get("SeriesDescription", ""),
        series_date=tags.get("SeriesDate", ""),
    )


def _received(row: SeriesRow, event: Envelope, fact: InstanceReceived) -> SeriesRow:
    first = row.first_received_at is None or event.occurred_at < row.first_received_at
    row = _with(
        row,
        study_uid=fact.study_uid,
        instance_count=row.instance_count + 1,
        first_received_at=_earliest(row.first_received_at, event.occurred_at),
        last_received_at=_latest(row.last_received_at, event.occurred_at),
        sender_aet=fact.calling_aet if first else row.sender_aet,
        receiver_aet=fact.called_aet if first else row.receiver_aet,
    )
    return _with_tags(row, event, fact.tags, completion=False)


def _evaluated(row: SeriesRow, event: Envelope, fact: RulesEvaluated) -> SeriesRow:
    if not _is_newer(event, than_at=row.rules_at, than_id=row.rules_event):
        return row
    return _with(
        row,
        matched_rules=list(fact.matched_rules),
        deferred_rules=sorted(deferral.rule for deferral in field_of(fact, "deferred", [])),
        rules_event=event.event_id,
        rules_at=event.occurred_at,
    )


def _series_fact(row: SeriesRow, event: Envelope) -> SeriesRow:
    payload = event.payload
    match payload:
        case InstanceReceived():
            return _received(row, event, payload)
        case SeriesCompleted():
            row = _with(
                row,
                study_uid=payload.study_uid,
                completed_at=_latest(row.completed_at, event.occurred_at),
                completions=row.completions + 1,
            )
            return _with_tags(row, event, payload.tags, completion=True)
        case RulesEvaluated():
            return _evaluated(row, event, payload)
        case StudyCompleted():
            rules = [payload.rule] if payload.rule else []
            return _with(
                row, study_uid=payload.study_uid, study_rules=_union(row.study_rules, rules)
            )
        case SeriesDiscarded():
            if row.discarded_at is not None and row.discarded_at <= event.occurred_at:
                return row
            return _with(
                row,
                discarded_at=event.occurred_at,
                discard_reason=payload.reason,
                discarded_by=payload.rule or "",
            )
        case BlobsPurged():
            return _with(row, purged_at=_latest(row.purged_at, event.occurred_at))
    return row


def fold_series(
    row: SeriesRow, event: Envelope, at: At, *, job: "JobRow | None" = None
) -> SeriesRow:
    """`row` after `event`; `job` is the job row after the event when the event is about a job."""
    if not _applies(row.positions, at):
        return row
    row = _series_fact(row, event)
    updated_at = _latest(row.updated_at, event.occurred_at)
    if job is not None:
        row = _with(row, jobs={**row.jobs, job.key: job.state})
        updated_at = _latest(updated_at, job.updated_at)
    return _applied(row, at, updated_at, status=series_status(row))


# --- jobs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class JobRow:
    job_id: str
    target: str = ""
    kind: str = ""
    study_uid: str = ""
    series_uids: list[str] = field(default_factory=list)
    rule: str = ""
    rules: list[str] = field(default_factory=list)
    lane: str = ""
    outcome: str = ""
    outcome_at: datetime | None = None
    state: str = "queued"
    attempts: int = 0
    next_retry_at: datetime | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str = ""
    result: str = ""
    retry_requested_at: datetime | None = None
    cancelled_at: datetime | None = None
    steps: int = 0
    """Modules in a processing job's chain (from its command)."""
    steps_done: int = 0
    """Steps completed so far; all of them: the job succeeded."""
    positions: dict[str, int] = field(default_factory=dict)
    version: int = 0
    updated_at: datetime | None = None

    @property
    def key(self) -> str:
        """How a series refers to this job: "job_id/target" (target empty unless dispatch)."""
        return f"{self.job_id}/{self.target}"


def job_key(payload: Any) -> tuple[str, str] | None:
    """The (job id, target) row an event or command is about, if any."""
    job_id = field_of(payload, "job_id")
    if not isinstance(job_id, str):
        return None
    target = field_of(payload, "target", "")
    return job_id, target if isinstance(target, str) else ""


def job_state(row: JobRow) -> str:
    """The state shown in queues: the last outcome, unless an operator acted after it."""
    if (
        row.cancelled_at is not None
        and row.outcome != "succeeded"
        and (row.outcome_at is None or row.cancelled_at >= row.outcome_at)
    ):
        return "cancelled"
    if (
        row.outcome == "failed"
        and row.retry_requested_at is not None
        and (row.outcome_at is None or row.retry_requested_at > row.outcome_at)
    ):
        return "queued"
    return row.outcome or "queued"


def _commanded(
    row: JobRow, event: Envelope, command: ProcessSeries | DispatchSeries | Notify
) -> JobRow:
    kinds = {ProcessSeries: "process", DispatchSeries: "dispatch", Notify: "notify"}
    if isinstance(command, ProcessSeries):
        # The command may be folded after its steps' events (another topic): settle it here too.
        row = _with(row, steps=len(command.steps))
        if row.outcome == "running" and row.steps_done >= row.steps:
            row = _outcome(row, event, "succeeded")
    return _with(
        row,
        kind=kinds[type(command)],
        study_uid=command.study_uid,
        series_uids=list(field_of(command, "series_uids", [])),
        rule=command.rule,
        rules=_union(row.rules, [command.rule, *field_of(command, "rules", [])]),
        lane=command.lane.value,
        queued_at=_earliest(row.queued_at, event.occurred_at),
    )


def _outcome(row: JobRow, event: Envelope, outcome: str, **changes: Any) -> JobRow:
    """A job outcome in log order (one job's outcomes share a partition)."""
    finished = outcome in ("succeeded", "failed")
    return _with(
        row,
        outcome=outcome,
        outcome_at=event.occurred_at,
        finished_at=event.occurred_at if finished else row.finished_at,
        **changes,
    )


def _job_fact(row: JobRow, event: Envelope) -> JobRow:
    payload = event.payload
    moment = event.occurred_at
    match payload:
        case ProcessSeries() | DispatchSeries() | Notify():
            return _commanded(row, event, payload)
        case ProcessingStarted() | DispatchStarted():
            kind = "process" if isinstance(payload, ProcessingStarted) else "dispatch"
            return _outcome(
                row,
                event,
                "running",
                kind=row.kind or kind,
                attempts=max(row.attempts, payload.attempt),
                started_at=_earliest(row.started_at, moment),
                next_retry_at=None,
            )
        case ProcessingStepCompleted():
            step = {"step": payload.step, "module": payload.module, "exit_code": payload.exit_code}
            done = max(row.steps_done, payload.step + 1)
            return _outcome(
                row,
                event,
                "succeeded" if row.steps and done >= row.steps else "running",
                kind=row.kind or "process",
                result=_json(step),
                steps_done=done,
            )
        case DispatchSucceeded():
            result = {"confirmed": payload.confirmed, "warnings": payload.warnings}
            return _outcome(
                row,
                event,
                "succeeded",
                attempts=max(row.attempts, payload.attempt),
                error="",
                result=_json(result),
                next_retry_at=None,
            )
        case DispatchFailed():
            return _outcome(
                row,
                event,
                "retrying" if payload.will_retry else "failed",
                attempts=max(row.attempts, payload.attempt),
                error=payload.reason,
                next_retry_at=field_of(payload, "next_attempt_at"),
            )
        case ProcessingFailed() | NotificationFailed():
            return _outcome(
                row,
                event,
                "retrying" if payload.will_retry else "failed",
                kind=row.kind
                or ("notify" if isinstance(payload, NotificationFailed) else "process"),
                error=payload.reason,
            )
        case NotificationSent():
            return _outcome(row, event, "succeeded", kind=row.kind or "notify", error="")
        case JobRetryRequested():
            return _with(row, retry_requested_at=_latest(row.retry_requested_at, moment))
        case JobCancelled():
            return _with(row, cancelled_at=_latest(row.cancelled_at, moment))
    return row


def fold_job(row: JobRow, event: Envelope, at: At) -> JobRow:
    """`row` after `event` (a command, a job outcome, or an operator's retry or cancel)."""
    return _folded(row, event, at, _job_fact, state=job_state)


# --- pending studies -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PendingStudyRow:
    study_uid: str
    rule: str
    condition: str = ""
    required_series: str = ""
    force_action: str = ""
    series_uids: list[str] = field(default_factory=list)
    first_deferred_at: datetime | None = None
    last_deferred_at: datetime | None = None
    completed_at: datetime | None = None
    completion_reason: str = ""
    completion_action: str = ""
    forced_at: datetime | None = None
    status: str = "pending"
    positions: dict[str, int] = field(default_factory=dict)
    version: int = 0
    updated_at: datetime | None = None


def pending_status(row: PendingStudyRow) -> str:
    """Pending until a completion at or after the last deferral; then completed or discarded."""
    if row.completed_at is None or (
        row.last_deferred_at is not None and row.last_deferred_at > row.completed_at
    ):
        return "pending"
    return "discarded" if row.completion_action == "discard" else "completed"


def pending_rules(event: Envelope) -> list[str]:
    """The study-level rules an event is about (all of the study's when it names none)."""
    payload = event.payload
    if isinstance(payload, RulesEvaluated):
        return sorted({deferral.rule for deferral in field_of(payload, "deferred", [])})
    if isinstance(payload, StudyCompleted):
        return [payload.rule] if payload.rule else []
    return []


def _pending_fact(row: PendingStudyRow, event: Envelope) -> PendingStudyRow:
    payload = event.payload
    moment = event.occurred_at
    match payload:
        case RulesEvaluated():
            deferral = next(d for d in payload.deferred if d.rule == row.rule)
            series = [payload.series_uid] if payload.series_uid else []
            return _with(
                row,
                condition=deferral.condition,
                required_series=deferral.required_series,
                force_action=deferral.force_action,
                series_uids=_union(row.series_uids, series),
                first_deferred_at=_earliest(row.first_deferred_at, moment),
                last_deferred_at=_latest(row.last_deferred_at, moment),
            )
        case StudyCompleted():
            if row.completed_at is not None and row.completed_at >= moment:
                return row
            return _with(
                row,
                completed_at=moment,
                completion_reason=payload.reason,
                completion_action=field_of(payload, "action", "proceed"),
                series_uids=_union(row.series_uids, payload.series_uids),
            )
        case StudyCompletionForced():
            return _with(row, forced_at=_latest(row.forced_at, moment))
    return row


def fold_pending(row: PendingStudyRow, event: Envelope, at: At) -> PendingStudyRow:
    """`row` after `event` (a deferral, the study's completion, or an operator forcing it)."""
    return _folded(row, event, at, _pending_fact, status=pending_status)


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
