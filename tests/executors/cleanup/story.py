"""Building the log of a series' life for cleanup tests: completion, decision, jobs, outcomes."""

import hashlib
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from infra.blobstore import FolderBlobStore, blob_key, instance_key
from infra.catalogue import (
    BlobReference,
    DispatchFailed,
    DispatchSeries,
    DispatchSucceeded,
    ModuleStep,
    ProcessingStarted,
    ProcessingStepCompleted,
    ProcessSeries,
    RulesEvaluated,
    SeriesCompleted,
    SeriesDiscarded,
    StudyDeferral,
)
from infra.events import Envelope, Payload

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def at(moment: datetime, payload: Payload) -> Envelope:
    return Envelope(payload=payload, source="test", subject="s", occurred_at=moment)


def reference(key: str, data: bytes) -> BlobReference:
    return BlobReference(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())


@dataclass
class Series:
    """One received series and what happened to it, as events with their moments."""

    study_uid: str
    series_uid: str
    blobs: list[BlobReference]
    completion_id: str

    @classmethod
    def received(cls, number: int, *, store: FolderBlobStore | None = None) -> "Series":
        study, series = f"1.2.{number}", f"1.2.{number}.1"
        blobs = []
        for sop in range(2):
            key = instance_key(study_uid=study, series_uid=series, sop_uid=f"1.2.{number}.1.{sop}")
            data = f"instance {number}.{sop}".encode() * 100
            if store is not None:
                store.put(key, data)
            blobs.append(reference(key.path, data))
        return cls(study, series, blobs, completion_id=uuid.uuid4().hex)

    def completed(self, moment: datetime) -> Envelope:
        return at(
            moment,
            SeriesCompleted(
                study_uid=self.study_uid,
                series_uid=self.series_uid,
                completion_id=self.completion_id,
                instance_count=len(self.blobs),
                blobs=self.blobs,
                tags={},
            ),
        )

    def decided(self, moment: datetime, *, deferred: bool = False) -> Envelope:
        return at(
            moment,
            RulesEvaluated(
                study_uid=self.study_uid,
                series_uid=self.series_uid,
                completion_id=self.completion_id,
                matched_rules=["r"],
                deferred=[StudyDeferral(rule="study-rule")] if deferred else [],
            ),
        )

    def discarded(self, moment: datetime) -> list[Envelope]:
        fact = SeriesDiscarded(
            study_uid=self.study_uid, series_uid=self.series_uid, reason="no rule matched"
        )
        return [self.completed(moment), self.decided(moment), at(moment, fact)]

    def dispatch(self, moment: datetime, job_id: str, inputs: list[BlobReference]) -> Envelope:
        return at(
            moment,
            DispatchSeries(
                study_uid=self.study_uid,
                job_id=job_id,
                rule="r",
                target="pacs",
                series_uids=[self.series_uid],
                inputs=inputs,
                completion_id=self.completion_id,
            ),
        )

    def dispatched(self, moment: datetime, *, outcome: str = "succeeded") -> list[Envelope]:
        """Completed, decided and sent to a target at `moment`; `outcome` of the dispatch job:
        "succeeded", "failed", "retrying" or "pending" (no outcome yet)."""
        job = f"dispatch-{self.series_uid}"
        events = [
            self.completed(moment),
            self.decided(moment),
            self.dispatch(moment, job, self.blobs),
        ]
        if outcome == "succeeded":
            events.append(
                at(moment, DispatchSucceeded(job_id=job, target="pacs", attempt=1, confirmed=2))
            )
        elif outcome in ("failed", "retrying"):
            failure = DispatchFailed(
                job_id=job,
                target="pacs",
                attempt=1,
                reason="refused",
                will_retry=outcome == "retrying",
            )
            events.append(at(moment, failure))
        return one_second_apart(events)

    def processed(self, moment: datetime, outputs: list[BlobReference]) -> list[Envelope]:
        """Completed, decided, processed by a two-step chain whose outputs were dispatched."""
        job = f"process-{self.series_uid}"
        command = ProcessSeries(
            study_uid=self.study_uid,
            job_id=job,
            rule="r",
            series_uids=[self.series_uid],
            steps=[ModuleStep(module="a"), ModuleStep(module="b")],
            inputs=self.blobs,
            completion_id=self.completion_id,
        )
        steps = [
            ProcessingStepCompleted(
                job_id=job,
                step=step,
                module="ab"[step],
                exit_code=0,
                duration_s=1.0,
                output_count=len(outputs),
                outputs=outputs if step == 1 else [],
            )
            for step in (0, 1)
        ]
        follow_up = f"dispatch-outputs-{self.series_uid}"
        events = [
            self.completed(moment),
            self.decided(moment),
            at(moment, command),
            at(moment, ProcessingStarted(job_id=job, rule="r", modules=["a", "b"], attempt=1)),
            *(at(moment, step) for step in steps),
            self.dispatch(moment, follow_up, outputs),
            at(moment, DispatchSucceeded(job_id=follow_up, target="pacs", attempt=1, confirmed=1)),
        ]
        return one_second_apart(events)


def one_second_apart(events: list[Envelope]) -> list[Envelope]:
    """The events in their order, each a second after the one before (as services write them)."""
    return [
        replace(event, occurred_at=event.occurred_at + timedelta(seconds=i))
        for i, event in enumerate(events)
    ]


def stored_output(store: FolderBlobStore, name: str) -> BlobReference:
    data = f"output {name}".encode()
    key = blob_key("jobs", name, "out", "o.dcm")
    store.put(key, data)
    return reference(key.path, data)


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}
