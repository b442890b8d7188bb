"""What staff do with query jobs (the command line and the UI share it): submit, pause,
resume, retry. Each is facts on the jobs topic (with the actor) and, to start work, a
`RunQueryJob` command in the job's lane."""

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from executors.dispatch import TargetMisconfigured
from executors.query.history import JobState
from executors.query.sources import source_settings
from infra.catalogue import (
    QueryFact,
    QueryJobPaused,
    QueryJobResumed,
    QueryJobSubmitted,
    RunQueryJob,
)
from infra.errors import PermanentError
from infra.events import Envelope, Payload
from infra.log import EventProducer
from infra.topics import Lane

MAX_ACCESSIONS = 10_000
SOURCE = "query-jobs"


class QueryRequestInvalid(PermanentError):
    """A query job that cannot be submitted or changed as asked; the message says why."""


def parse_accessions(text: str) -> list[str]:
    """Accession numbers from typed text or an uploaded file: one per line (or separated by
    commas or blanks), in order, each once."""
    seen: dict[str, None] = {}
    for token in text.replace(",", " ").split():
        seen.setdefault(token.strip(), None)
    return list(seen)


def submit(
    producer: EventProducer,
    *,
    source: str,
    source_config: Mapping[str, Any] | None,
    accessions: list[str],
    actor: str | None,
    study_description: str = "",
    series_description: str = "",
    forced_rule: str = "",
    lane: Lane = Lane.NORMAL,
    destination: str = "",
    destination_config: Mapping[str, Any] | None = None,
) -> str:
    """Publish a new job; its id. `QueryRequestInvalid` when it names no usable source (or
    a destination that is no folder target), or holds no (or too many, or too long)
    accession numbers."""
    try:
        source_settings(source_config, name=source)
    except TargetMisconfigured as error:
        raise QueryRequestInvalid(str(error)) from error
    if destination and (destination_config or {}).get("target_type") != "folder":
        raise QueryRequestInvalid(f"no folder target named {destination!r}")
    if not accessions:
        raise QueryRequestInvalid("give at least one accession number")
    if len(accessions) > MAX_ACCESSIONS:
        raise QueryRequestInvalid(f"at most {MAX_ACCESSIONS} accession numbers per job")
    too_long = [a for a in accessions if len(a) > 16]
    if too_long:
        raise QueryRequestInvalid(f"accession numbers have at most 16 characters: {too_long[0]}")
    job_id = str(uuid.uuid4())
    submitted = QueryJobSubmitted(
        job_id=job_id,
        source=source,
        accessions=accessions,
        study_description=study_description,
        series_description=series_description,
        forced_rule=forced_rule,
        lane=lane,
        destination=destination,
    )
    _publish(producer, submitted, actor=actor)
    _start(producer, job_id, run=1, lane=lane, submitted_at=datetime.now(UTC), actor=actor)
    return job_id


class Change(Protocol):
    """pause, resume or retry."""

    def __call__(self, producer: EventProducer, job: JobState, *, actor: str | None) -> None: ...


def pause(producer: EventProducer, job: JobState, *, actor: str | None) -> None:
    if job.status != "running":
        raise QueryRequestInvalid(f"job {job.job_id} is {job.status}: only a running job pauses")
    _publish(producer, QueryJobPaused(job_id=job.job_id, run=job.run), actor=actor)


def resume(producer: EventProducer, job: JobState, *, actor: str | None) -> None:
    if job.status != "paused":
        raise QueryRequestInvalid(f"job {job.job_id} is {job.status}: only a paused job resumes")
    _restart(producer, job, run=job.run, actor=actor)


def retry(producer: EventProducer, job: JobState, *, actor: str | None) -> None:
    """A new run: the accessions that failed or were not found are tried again."""
    if job.status != "completed":
        raise QueryRequestInvalid(f"job {job.job_id} is {job.status}: retry a completed job")
    if not job.count("failed", "not_found"):
        raise QueryRequestInvalid(f"job {job.job_id} has nothing to retry")
    _restart(producer, job, run=job.run + 1, actor=actor)


def _restart(producer: EventProducer, job: JobState, *, run: int, actor: str | None) -> None:
    _publish(producer, QueryJobResumed(job_id=job.job_id, run=run), actor=actor)
    _start(
        producer,
        job.job_id,
        run=run,
        lane=job.submitted.lane,
        submitted_at=job.submitted_at,
        actor=actor,
    )


def _start(
    producer: EventProducer,
    job_id: str,
    *,
    run: int,
    lane: Lane,
    submitted_at: datetime,
    actor: str | None,
) -> None:
    command = RunQueryJob(job_id=job_id, run=run, lane=lane, submitted_at=submitted_at)
    _publish(producer, command, actor=actor)


def _publish(producer: EventProducer, payload: Payload, *, actor: str | None) -> None:
    subject = payload.job_id if isinstance(payload, QueryFact | RunQueryJob) else SOURCE
    producer.publish(Envelope(payload=payload, source=SOURCE, subject=subject, actor=actor))
