"""Which series are done, and which blobs nothing needs any more: a fold of the log (pure).

A series is *done* when every completion of it was decided (`RulesEvaluated`), it waits for no
study (a study-level rule deferred it and its `StudyCompleted` came), and every job linked to it
finished: succeeded or cancelled, or failed when the operator said to purge failed jobs too. A
job is linked to a series through its completion id (so follow-up dispatches of a processing
job's outputs count) or its series UIDs. Its blobs are the instances of its completions and
the outputs of its processing jobs; none may be an input of a job still pending (or failed).
A series is *settled* at the last moment anything happened to it or its jobs; retention counts
from then. Events from different topics arrive in any order, so job states change only by
newer facts (by `occurred_at`).
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from infra.catalogue import (
    BlobReference,
    BlobsPurged,
    DispatchFailed,
    DispatchSeries,
    DispatchStarted,
    DispatchSucceeded,
    JobCancelled,
    JobRetryRequested,
    ProcessingFailed,
    ProcessingStarted,
    ProcessingStepCompleted,
    ProcessSeries,
    RulesEvaluated,
    SeriesCompleted,
    SeriesDiscarded,
    StudyCompleted,
)
from infra.events import Envelope

SeriesId = tuple[str, str]
"""(StudyInstanceUID, SeriesInstanceUID)."""
JobStatus = Literal["pending", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[JobStatus] = frozenset({"succeeded", "cancelled"})


@dataclass
class SeriesRecord:
    """What the log says about one series."""

    blobs: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per completion id still holding blobs: blob key -> size."""
    decided: set[str] = field(default_factory=set)
    awaiting_study: bool = False
    settled_at: datetime | None = None

    def touch(self, moment: datetime) -> None:
        self.settled_at = moment if self.settled_at is None else max(self.settled_at, moment)


@dataclass
class JobRecord:
    """A processing or dispatch job: what it reads, what it wrote, how it ended."""

    completion_id: str = ""
    series: set[SeriesId] = field(default_factory=set)
    inputs: set[str] = field(default_factory=set)
    outputs: dict[str, int] = field(default_factory=dict)
    steps: int | None = None
    steps_done: dict[int, datetime] = field(default_factory=dict)
    status: JobStatus = "pending"
    status_at: datetime | None = None
    touched_at: datetime | None = None

    def became(self, status: JobStatus, moment: datetime) -> None:
        """Take `status` unless a newer fact already set one."""
        if self.status_at is None or moment >= self.status_at:
            self.status, self.status_at = status, moment
        self.touch(moment)

    def touch(self, moment: datetime) -> None:
        self.touched_at = moment if self.touched_at is None else max(self.touched_at, moment)

    def settle_processing(self) -> None:
        """A processing job succeeded once its last step completed (commands and outcomes
        travel on different topics, so either may be read first)."""
        if self.steps is not None and (last := self.steps - 1) in self.steps_done:
            self.became("succeeded", self.steps_done[last])


@dataclass(frozen=True, kw_only=True)
class Purge:
    """The blobs of one done series that may go now."""

    study_uid: str
    series_uid: str
    completion_ids: list[str]
    blobs: dict[str, int]
    settled_at: datetime


@dataclass
class Ledger:
    """The fold: series and jobs as far as the log has been read."""

    series: dict[SeriesId, SeriesRecord] = field(default_factory=dict)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    completions: dict[str, set[SeriesId]] = field(default_factory=dict)

    def apply(self, event: Envelope) -> None:
        """Fold one event in; events the cleaner does not care about change nothing."""
        payload, moment = event.payload, event.occurred_at
        match payload:
            case SeriesCompleted():
                self._completed(payload, moment)
            case StudyCompleted():
                ids = {(payload.study_uid, uid) for uid in payload.series_uids}
                self.completions.setdefault(payload.completion_id, set()).update(ids)
                for series_id in ids:
                    record = self._series(series_id)
                    record.awaiting_study = False
                    record.touch(moment)
            case RulesEvaluated(series_uid=str(series_uid)):
                record = self._series((payload.study_uid, series_uid))
                record.decided.add(payload.completion_id)
                record.awaiting_study = record.awaiting_study or bool(payload.deferred)
                record.touch(moment)
            case SeriesDiscarded():
                self._series((payload.study_uid, payload.series_uid)).touch(moment)
            case BlobsPurged():
                record = self._series((payload.study_uid, payload.series_uid))
                for completion in payload.completion_ids or list(record.blobs):
                    record.blobs.pop(completion, None)
            case ProcessSeries() | DispatchSeries():
                self._commanded(payload, moment)
            case _:
                self._job_fact(event)

    def _completed(self, completed: SeriesCompleted, moment: datetime) -> None:
        series_id = (completed.study_uid, completed.series_uid)
        self.completions.setdefault(completed.completion_id, set()).add(series_id)
        record = self._series(series_id)
        record.blobs[completed.completion_id] = _sizes(completed.blobs)
        record.touch(moment)

    def _commanded(self, command: ProcessSeries | DispatchSeries, moment: datetime) -> None:
        job = self._job(command.job_id)
        job.completion_id = command.completion_id
        job.series.update((command.study_uid, uid) for uid in command.series_uids)
        job.inputs.update(reference.key for reference in command.inputs)
        job.became("pending", moment)
        if isinstance(command, ProcessSeries):
            job.steps = len(command.steps)
            job.settle_processing()

    def _job_fact(self, event: Envelope) -> None:
        payload, moment = event.payload, event.occurred_at
        match payload:
            case ProcessingStarted() | DispatchStarted() | JobRetryRequested():
                if payload.job_id in self.jobs:
                    self._job(payload.job_id).became("pending", moment)
            case DispatchSucceeded():
                self._job(payload.job_id).became("succeeded", moment)
            case DispatchFailed() | ProcessingFailed():
                self._job(payload.job_id).became(
                    "pending" if payload.will_retry else "failed", moment
                )
            case ProcessingStepCompleted():
                job = self._job(payload.job_id)
                job.outputs.update(_sizes(payload.outputs))
                job.steps_done[payload.step] = moment
                job.touch(moment)
                job.settle_processing()
            case JobCancelled():
                if payload.job_id in self.jobs and self.jobs[payload.job_id].status != "succeeded":
                    self.jobs[payload.job_id].became("cancelled", moment)

    def _series(self, series_id: SeriesId) -> SeriesRecord:
        return self.series.setdefault(series_id, SeriesRecord())

    def _job(self, job_id: str) -> JobRecord:
        return self.jobs.setdefault(job_id, JobRecord())


def _sizes(references: Iterable[BlobReference]) -> dict[str, int]:
    return {reference.key: reference.size for reference in references}


def plan_purges(
    ledger: Ledger,
    *,
    now: datetime,
    retention: timedelta,
    purge_failed: bool = False,
    emergency: bool = False,
) -> list[Purge]:
    """The done series whose blobs may go, the longest settled first.

    In an emergency the retention period is not waited for; jobs still guard their inputs.
    """
    failed: frozenset[JobStatus] = frozenset({"failed"}) if purge_failed else frozenset()
    finished = FINISHED | failed
    linked = _jobs_by_series(ledger)
    guarded = {
        key for job in ledger.jobs.values() if job.status not in finished for key in job.inputs
    }
    purges = []
    for (study_uid, series_uid), record in ledger.series.items():
        jobs = linked.get((study_uid, series_uid), [])
        if not _done(record, jobs, finished=finished):
            continue
        moments = [m for m in (record.settled_at, *(job.touched_at for job in jobs)) if m]
        settled = max(moments)  # a series with blobs was completed at some moment
        if not emergency and now - settled < retention:
            continue
        blobs = {key: size for sizes in record.blobs.values() for key, size in sizes.items()}
        for job in jobs:
            blobs.update(job.outputs)
        if guarded & blobs.keys():
            continue
        purges.append(
            Purge(
                study_uid=study_uid,
                series_uid=series_uid,
                completion_ids=sorted(record.blobs),
                blobs=blobs,
                settled_at=settled,
            )
        )
    return sorted(purges, key=lambda purge: purge.settled_at)


def _done(record: SeriesRecord, jobs: list[JobRecord], *, finished: frozenset[JobStatus]) -> bool:
    return (
        bool(record.blobs)
        and record.blobs.keys() <= record.decided
        and not record.awaiting_study
        and all(job.status in finished for job in jobs)
    )


def _jobs_by_series(ledger: Ledger) -> dict[SeriesId, list[JobRecord]]:
    linked: dict[SeriesId, list[JobRecord]] = {}
    for job in ledger.jobs.values():
        for series_id in job.series | ledger.completions.get(job.completion_id, set()):
            linked.setdefault(series_id, []).append(job)
    return linked
