"""The query worker: carries out `RunQueryJob` commands.

Per command: fold the job's facts (a redelivered or resumed command skips every accession
already retrieved, and a completed run is not run again); then, accession by accession: find
its series at the source, retrieve them through the intake (`InstanceReceived` with intake
`retrieve` and the job id), and report `AccessionFound`, `AccessionRetrieved` or
`AccessionNotFound`. A transient failure (source unreachable, out of resources, a partial
retrieve) reports `AccessionFailed(will_retry=True)` and puts the accession back with
exponential backoff while the others go on; after the last attempt, or on a permanent failure,
`will_retry` is False. Between accessions the worker re-reads the job's facts: a paused job
stops there until it is resumed. `QueryJobCompleted` closes the run.
"""

import re
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import Field

from executors.dispatch import TargetMisconfigured
from executors.dispatch.staging import describe
from executors.dispatch.target import Batch, Target
from executors.dispatch.targets import open_target
from executors.query.history import JobState, QueryLog
from executors.query.sources import Filters, SeriesMatch, Source, open_source
from executors.retry import RetryPolicy
from executors.service import ExecutorSettings
from infra.catalogue import (
    AccessionFailed,
    AccessionFound,
    AccessionNotFound,
    AccessionRetrieved,
    QueryFact,
    QueryJobCompleted,
    QueryJobSubmitted,
    RunQueryJob,
)
from infra.errors import PermanentError, TransientError
from infra.events import Envelope
from infra.log import EventProducer
from ingest.errors import OutOfResources
from ingest.intake import Arrival, Intake, Origin
from ingest.settings import IngestSettings

log = structlog.get_logger(__name__)
SOURCE = "query"


class QuerySettings(ExecutorSettings, IngestSettings):
    """Settings of `talaria query run` (the intake's settings apply to what it retrieves)."""

    query_slots: int = Field(default=1, ge=1, le=16, description="Jobs run at once.")
    query_retry_max_attempts: int = Field(default=5, ge=1)
    query_retry_first_delay_s: float = Field(default=60.0, ge=0)
    query_retry_max_delay_s: float = Field(default=900.0, ge=0)

    @property
    def query_index_dir(self) -> Path:
        """Where the indexes of folder sources are kept."""
        return self.data_dir / "query"


class Stopped(TransientError):
    """The service is stopping: the command is redone after the restart."""


class QueryWorker:
    """Runs query jobs; what it holds is shared by the runs it carries out."""

    def __init__(
        self,
        *,
        producer: EventProducer,
        intake: Intake,
        open_log: Callable[[datetime], QueryLog],
        target_config: Callable[[str], dict[str, Any] | None],
        policy: RetryPolicy,
        index_dir: Path,
        stop: threading.Event,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.producer = producer
        self.intake = intake
        self.open_log = open_log
        self.target_config = target_config
        self.policy = policy
        self.index_dir = index_dir
        self.stop = stop
        self.clock = clock

    def handle(self, envelope: Envelope) -> None:
        command = envelope.payload
        if not isinstance(command, RunQueryJob):
            return
        with self.open_log(command.submitted_at) as history:
            job = history.refresh().get(command.job_id)
            if job is None:
                raise PermanentError(f"query job {command.job_id} was never submitted")
            if job.completed_run >= command.run or job.paused:
                return
            _Run(self, envelope, command, history).carry_out(job)

    def publish(self, cause: Envelope, fact: QueryFact) -> None:
        self.producer.publish(cause.caused(fact, source=SOURCE, subject=fact.job_id))


class _Run:
    """One run of one job."""

    def __init__(
        self, worker: QueryWorker, cause: Envelope, command: RunQueryJob, history: QueryLog
    ) -> None:
        self._worker = worker
        self._cause = cause
        self._job_id = command.job_id
        self._run = command.run
        self._history = history

    def carry_out(self, job: JobState) -> None:
        worker = self._worker
        submitted = job.submitted
        filters = Filters(
            study_description=submitted.study_description,
            series_description=submitted.series_description,
        )
        waiting = {
            name: state.next_attempt_at or worker.clock()
            for name, state in job.accessions.items()
            if not state.settled(self._run)
        }
        try:
            source = open_source(
                worker.target_config(submitted.source),
                name=submitted.source,
                index_dir=worker.index_dir,
            )
            sink = self._sink(submitted)
        except PermanentError as error:
            for accession in waiting:
                self._failed(accession, attempt=1, reason=str(error), retry_at=None)
            waiting.clear()
        while waiting:
            if worker.stop.is_set():
                raise Stopped("stopping")
            job = self._history.refresh()[self._job_id]
            if job.paused:
                log.info("query job paused", job_id=self._job_id)
                return
            accession, due = min(waiting.items(), key=lambda item: item[1])
            delay = (due - worker.clock()).total_seconds()
            if delay > 0:
                worker.stop.wait(min(delay, 1.0))
                continue
            state = job.accessions[accession]
            attempt = (state.attempts if state.run == self._run else 0) + 1
            try:
                self._retrieve(source, accession, filters, sink)
                del waiting[accession]
            except TransientError as error:
                retry_at = worker.policy.next_attempt(attempt, now=worker.clock())
                self._failed(accession, attempt=attempt, reason=str(error), retry_at=retry_at)
                if retry_at is None:
                    del waiting[accession]
                else:
                    waiting[accession] = retry_at
            except PermanentError as error:
                self._failed(accession, attempt=attempt, reason=str(error), retry_at=None)
                del waiting[accession]
        job = self._history.refresh()[self._job_id]
        self._publish(
            QueryJobCompleted(
                job_id=self._job_id,
                run=self._run,
                retrieved=job.count("retrieved"),
                not_found=job.count("not_found"),
                failed=job.count("failed"),
            )
        )

    def _sink(self, submitted: QueryJobSubmitted) -> "_Sink":
        worker = self._worker
        if not submitted.destination:
            origin = Origin(
                intake="retrieve", job_id=self._job_id, forced_rule=submitted.forced_rule
            )
            return _IntakeSink(worker.intake, origin)
        config = worker.target_config(submitted.destination)
        if config is None or config.get("target_type") != "folder":
            raise TargetMisconfigured(f"no folder target named {submitted.destination!r}")
        staging = worker.index_dir / "staging" / self._job_id
        return _FolderSink(open_target(config), staging=staging, job_id=self._job_id)

    def _retrieve(self, source: Source, accession: str, filters: Filters, sink: "_Sink") -> None:
        matches = source.find(accession, filters)
        if not matches:
            self._publish(
                AccessionNotFound(job_id=self._job_id, run=self._run, accession=accession)
            )
            return
        study_uids = sorted({match.study_uid for match in matches})
        counts = [match.instances for match in matches]
        self._publish(
            AccessionFound(
                job_id=self._job_id,
                run=self._run,
                accession=accession,
                study_uids=study_uids,
                series_count=len(matches),
                instance_count=None if None in counts else sum(c or 0 for c in counts),
            )
        )
        instances = size = 0
        for match in matches:
            received = _Counter(sink)
            source.retrieve(match, received.deliver)
            _check_complete(match, received.instances)
            instances += received.instances
            size += received.bytes
        sink.finish(accession, study_uid=study_uids[0])
        self._publish(
            AccessionRetrieved(
                job_id=self._job_id,
                run=self._run,
                accession=accession,
                study_uids=study_uids,
                instances=instances,
                bytes=size,
            )
        )

    def _failed(
        self, accession: str, *, attempt: int, reason: str, retry_at: datetime | None
    ) -> None:
        log.warning("accession failed", job_id=self._job_id, accession=accession, reason=reason)
        self._publish(
            AccessionFailed(
                job_id=self._job_id,
                run=self._run,
                accession=accession,
                attempt=attempt,
                reason=reason[:2000],
                will_retry=retry_at is not None,
                next_attempt_at=retry_at,
            )
        )

    def _publish(self, fact: QueryFact) -> None:
        self._worker.publish(self._cause, fact)


class _Sink(Protocol):
    """Where retrieved instances go."""

    def take(self, arrival: Arrival) -> None:
        """One instance; `Refused` (with its DICOM status) if it cannot be taken."""

    def finish(self, accession: str, *, study_uid: str) -> None:
        """Every instance of `accession` was taken."""


class _IntakeSink:
    """Into Talaria, as if received: blob store, `InstanceReceived`, the rules."""

    def __init__(self, intake: Intake, origin: Origin) -> None:
        self._intake = intake
        self._origin = origin

    def take(self, arrival: Arrival) -> None:
        self._intake.receive(arrival, self._origin)

    def finish(self, accession: str, *, study_uid: str) -> None:
        return None


class _FolderSink:
    """Into a folder target, each accession in `<folder>/<job>/<accession>/` (the folder
    target's `.complete` marker last), not into Talaria."""

    def __init__(self, target: Target, *, staging: Path, job_id: str) -> None:
        self._target = target
        self._staging = staging
        self._job_id = job_id
        self._files: list[Path] = []

    def take(self, arrival: Arrival) -> None:
        self._staging.mkdir(parents=True, exist_ok=True)
        path = self._staging / f"{len(self._files):06d}.dcm"
        try:
            path.write_bytes(arrival.file)
        except OSError as error:
            raise OutOfResources(f"cannot stage a retrieved instance: {error}") from error
        self._files.append(path)

    def finish(self, accession: str, *, study_uid: str) -> None:
        try:
            batch = Batch(
                job_id=f"{self._job_id}/{_safe_name(accession)}",
                study_uid=study_uid,
                instances=[describe(path) for path in self._files],
                tags={},
            )
            self._target.send(batch)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._files = []


def _safe_name(accession: str) -> str:
    """An accession number as a folder name (it may hold '/' or start with '.')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", accession)


class _Counter:
    """A sink, counting what it took."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self.instances = 0
        self.bytes = 0

    def deliver(self, arrival: Arrival) -> None:
        self._sink.take(arrival)
        self.instances += 1
        self.bytes += len(arrival.file)


class PartialRetrieve(TransientError):
    """The source handed over fewer instances than it said the series holds."""


def _check_complete(match: SeriesMatch, received: int) -> None:
    if match.instances is not None and received < match.instances:
        raise PartialRetrieve(
            f"partial retrieve of series {match.series_uid}: "
            f"{received} of {match.instances} instances"
        )
