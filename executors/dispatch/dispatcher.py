"""The dispatcher service: takes `DispatchSeries` commands and reports what the target confirmed.

Per command: if the job was already confirmed (a redelivery after a crash), report that
confirmation again instead of sending (the crash may have come before `DispatchSucceeded` was
on the log); skip it if cancelled; wait while its queue or target is suspended; emit
`DispatchStarted`; stage the inputs from the blob store; send; record the confirmation in the
blob store, then emit `DispatchSucceeded`, with a completion `Notify` for each of its rules that
notifies on completion (the processor's notices, `executors/notices.py`). A transient failure emits
`DispatchFailed(will_retry=True)` with the next attempt time and schedules the retry on the
retry topic (exponential backoff with a cap); after the last attempt, or on a permanent failure,
`DispatchFailed(will_retry=False)` puts the job in the failure queue (with an error `Notify` for
the rules that want one), from which `JobRetryRequested` sends it again. A `JobCancelled` job
that has not been sent yet fails with the reason "cancelled" instead of being sent.

Queue names for `QueueSuspended`: `dispatch` (all), `dispatch.<lane>`, `target:<name>`.
"""

import json
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from prometheus_client import Counter, Histogram
from pydantic import Field

from executors.dispatch import DispatchError, TargetMisconfigured
from executors.dispatch.staging import stage
from executors.dispatch.target import Batch, Delivery
from executors.dispatch.targets import open_target
from executors.notices import Trigger, outcome_notices
from executors.retry import RetryPolicy
from executors.service import ExecutorSettings
from infra.blobstore import BlobKey, BlobStore, blob_key
from infra.catalogue import (
    DispatchFailed,
    DispatchSeries,
    DispatchStarted,
    DispatchSucceeded,
    JobCancelled,
    JobRetryRequested,
    Notify,
)
from infra.errors import PermanentError, TransientError
from infra.events import Envelope, Payload
from infra.log import EventProducer
from streams.config import Rule

log = structlog.get_logger(__name__)
SOURCE = "dispatcher"

JOBS = Counter("talaria_dispatch_jobs", "Dispatch attempts by outcome.", ["target", "outcome"])
INSTANCES = Counter("talaria_dispatch_instances", "Instances confirmed by targets.", ["target"])
BYTES = Counter("talaria_dispatch_bytes", "Bytes of confirmed instances.", ["target"])
SECONDS = Histogram("talaria_dispatch_seconds", "Duration of successful sends.", ["target"])


class JobWasCancelled(PermanentError):
    """An operator cancelled the job before it was sent."""


class DispatchSettings(ExecutorSettings):
    """Settings of `talaria dispatch run`."""

    dispatch_slots: int = Field(default=2, ge=1, le=64, description="Jobs sent at once.")
    retry_max_attempts: int = Field(default=5, ge=1)
    retry_first_delay_s: float = Field(default=60.0, ge=0)
    retry_max_delay_s: float = Field(default=900.0, ge=0)
    dispatch_metrics_port: int = Field(default=0, ge=0, le=65535, description="0: no /metrics.")


class Controls(Protocol):
    """What operators and staff configured, as the dispatcher needs it."""

    def target_config(self, name: str) -> dict[str, object] | None: ...

    def rule(self, name: str) -> Rule | None: ...

    def suspended(self, queue: str) -> bool: ...

    def catch_up(self) -> None:
        """Return once every configuration change published so far is seen."""


def command_key(job_id: str) -> BlobKey:
    return blob_key("jobs", job_id, "dispatch", "command.json")


def confirmation_key(job_id: str) -> BlobKey:
    return blob_key("jobs", job_id, "dispatch", "confirmed.json")


def cancellation_key(job_id: str) -> BlobKey:
    return blob_key("jobs", job_id, "dispatch", "cancelled.json")


class Dispatcher:
    """Carries out dispatch commands; every method is safe to call again for the same command."""

    def __init__(
        self,
        *,
        producer: EventProducer,
        store: BlobStore,
        controls: Controls,
        policy: RetryPolicy,
        work_dir: Path,
        stop: threading.Event,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._producer = producer
        self._store = store
        self._controls = controls
        self._policy = policy
        self._work_dir = work_dir
        self._stop = stop
        self._clock = clock

    def handle_command(self, envelope: Envelope) -> None:
        """A first attempt, or an operator's retry, from a lane topic."""
        command = envelope.payload
        if not isinstance(command, DispatchSeries):
            return
        if command.attempt == 1 and not self._store.exists(command_key(command.job_id)):
            self._store.put(command_key(command.job_id), command.model_dump_json().encode())
        self._dispatch(envelope, command)

    def handle_retry(self, envelope: Envelope) -> None:
        """A scheduled retry: wait for its time, then dispatch."""
        command = envelope.payload
        if not isinstance(command, DispatchSeries):
            return
        if command.not_before is not None:
            wait_s = (command.not_before - self._clock()).total_seconds()
            if wait_s > 0 and self._stop.wait(wait_s):
                raise TransientError("stopping before a scheduled retry")
        self._dispatch(envelope, command)

    def handle_operation(self, envelope: Envelope) -> None:
        """Operator requests about dispatch jobs: retry from the failure queue, cancel."""
        request = envelope.payload
        if isinstance(request, JobCancelled):
            # Marked even before the command was seen: it may still wait behind others.
            self._store.put(cancellation_key(request.job_id), b"{}")
            log.info("job cancelled", job_id=request.job_id, actor=envelope.actor)
            return
        if not isinstance(request, JobRetryRequested):
            return
        if not self._store.exists(command_key(request.job_id)):
            return  # not a dispatch job
        if self._store.exists(confirmation_key(request.job_id)):
            log.info("retry of a confirmed job skipped", job_id=request.job_id)
            return
        self._controls.catch_up()  # the target fixed just before the retry must count
        original = DispatchSeries.model_validate_json(self._store.get(command_key(request.job_id)))
        again = original.model_copy(update={"attempt": 1, "not_before": None})
        self._producer.publish(envelope.caused(again, source=SOURCE, subject=request.job_id))

    def _dispatch(self, cause: Envelope, command: DispatchSeries) -> None:
        job = command.job_id
        if self._store.exists(confirmation_key(job)):
            confirmed = json.loads(self._store.get(confirmation_key(job)))
            self._succeeded(cause, command, Delivery(**confirmed))
            log.info("already confirmed, not sent again; success reported", job_id=job)
            return
        self._wait_while_suspended(command)
        if self._store.exists(cancellation_key(job)):
            self._failed(cause, command, JobWasCancelled("cancelled by an operator"))
            return
        self._emit(
            cause,
            DispatchStarted(
                job_id=job,
                target=command.target,
                attempt=command.attempt,
                instance_count=len(command.inputs),
            ),
        )
        began = time.monotonic()
        try:
            delivery = self._send(command)
        except (DispatchError, TransientError) as error:  # transient: the blob store, say
            self._failed(cause, command, error)
            return
        self._store.put(
            confirmation_key(job),
            json.dumps({"confirmed": delivery.confirmed, "warnings": delivery.warnings}).encode(),
        )
        self._succeeded(cause, command, delivery)
        seconds = time.monotonic() - began
        JOBS.labels(command.target, "succeeded").inc()
        INSTANCES.labels(command.target).inc(delivery.confirmed)
        BYTES.labels(command.target).inc(sum(reference.size for reference in command.inputs))
        SECONDS.labels(command.target).observe(seconds)
        log.info(
            "dispatched",
            job_id=job,
            study_uid=command.study_uid,
            series_uids=command.series_uids,
            target=command.target,
            instances=delivery.confirmed,
            seconds=round(seconds, 3),
        )

    def _succeeded(self, cause: Envelope, command: DispatchSeries, delivery: Delivery) -> None:
        """`DispatchSucceeded` and the completion notices, on the log."""
        job = command.job_id
        succeeded = DispatchSucceeded(
            job_id=job,
            target=command.target,
            attempt=command.attempt,
            confirmed=delivery.confirmed,
            warnings=delivery.warnings,
        )
        details = {"target": command.target, "confirmed": delivery.confirmed}
        self._producer.publish_all(
            cause.caused(payload, source=SOURCE, subject=job)
            for payload in [succeeded, *self._notices(command, "completion", details)]
        )

    def _send(self, command: DispatchSeries) -> Delivery:
        config = self._controls.target_config(command.target)
        if config is None:
            self._controls.catch_up()  # saved a moment ago, perhaps
            config = self._controls.target_config(command.target)
        if config is None:
            raise TargetMisconfigured(f"no target named {command.target!r}")
        target = open_target(config)
        folder = self._work_dir / f"{command.job_id}-{command.attempt}"
        shutil.rmtree(folder, ignore_errors=True)
        try:
            staged = stage(self._store, command.inputs, folder=folder)
            return target.send(
                Batch(
                    job_id=command.job_id,
                    study_uid=command.study_uid,
                    instances=staged,
                    tags=command.tags,
                )
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _failed(self, cause: Envelope, command: DispatchSeries, error: Exception) -> None:
        retry_at = (
            self._policy.next_attempt(command.attempt, now=self._clock())
            if isinstance(error, TransientError)
            else None
        )
        failure = DispatchFailed(
            job_id=command.job_id,
            target=command.target,
            attempt=command.attempt,
            reason=str(error),
            will_retry=retry_at is not None,
            next_attempt_at=retry_at,
        )
        JOBS.labels(command.target, "retrying" if failure.will_retry else "failed").inc()
        events: list[Payload] = [failure]
        if retry_at is not None:
            events.append(
                command.model_copy(update={"attempt": command.attempt + 1, "not_before": retry_at})
            )
        else:
            details = {"target": command.target, "reason": failure.reason}
            events.extend(self._notices(command, "error", details))
        log.warning(
            "dispatch failed",
            job_id=command.job_id,
            target=command.target,
            attempt=command.attempt,
            will_retry=failure.will_retry,
            reason=failure.reason,
        )
        self._producer.publish_all(
            cause.caused(payload, source=SOURCE, subject=command.job_id) for payload in events
        )

    def _wait_while_suspended(self, command: DispatchSeries) -> None:
        queues = ("dispatch", f"dispatch.{command.lane.value}", f"target:{command.target}")
        while any(self._controls.suspended(queue) for queue in queues):
            if self._stop.wait(1.0):
                raise TransientError("stopping while the queue is suspended")

    def _notices(
        self, command: DispatchSeries, trigger: Trigger, details: dict[str, Any]
    ) -> list[Notify]:
        """The notices of every rule that chose this target."""
        names = dict.fromkeys([command.rule, *command.rules])
        rules = [(name, self._controls.rule(name)) for name in names]
        return outcome_notices(command, rules, trigger=trigger, details=details)

    def _emit(self, cause: Envelope, payload: DispatchStarted) -> None:
        self._producer.publish(cause.caused(payload, source=SOURCE, subject=payload.job_id))
