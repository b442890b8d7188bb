"""Query jobs as their facts on the jobs topic say they are: read back, folded, never stored
anywhere else. The worker folds a job's facts before it runs it (so a restarted worker skips
what is done), and the command line and the UI show the same fold."""

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaException, TopicPartition

from infra.catalogue import (
    CATALOGUE,
    AccessionFailed,
    AccessionFound,
    AccessionNotFound,
    AccessionRetrieved,
    QueryFact,
    QueryJobCompleted,
    QueryJobPaused,
    QueryJobResumed,
    QueryJobSubmitted,
)
from infra.events import Envelope, Headers, UndecodableEvent, decode, header_value
from infra.log import LogUnavailable, client_config, end_offset
from infra.settings import LogSettings
from infra.topics import Topic, topic_name

CLOCK_SKEW = timedelta(minutes=5)
"""Facts of a job are read from this long before its submission (producers' clocks differ)."""

QUERY_FACTS = frozenset(
    kind.TYPE
    for kind in (
        QueryJobSubmitted,
        AccessionFound,
        AccessionNotFound,
        AccessionRetrieved,
        AccessionFailed,
        QueryJobPaused,
        QueryJobResumed,
        QueryJobCompleted,
    )
)

AccessionStatus = Literal["pending", "found", "retrieved", "not_found", "retrying", "failed"]
JobStatus = Literal["running", "paused", "completed"]


@dataclass
class AccessionState:
    accession: str
    status: AccessionStatus = "pending"
    run: int = 0
    attempts: int = 0
    study_uids: list[str] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0
    reason: str = ""
    next_attempt_at: datetime | None = None

    def settled(self, run: int) -> bool:
        """Nothing more to do in `run`: retrieved (in any run), or not found or failed for good
        in this run."""
        if self.status == "retrieved":
            return True
        return self.status in ("not_found", "failed") and self.run >= run

    def apply(self, fact: QueryFact) -> None:
        if fact.run > self.run:
            self.attempts = 0
        self.run = max(self.run, fact.run)
        match fact:
            case AccessionFound():
                self.status = "found"
                self.study_uids = fact.study_uids
                self.reason = ""
            case AccessionNotFound():
                self.status = "not_found"
                self.reason = "not found at the source"
            case AccessionRetrieved():
                self.status = "retrieved"
                self.study_uids = fact.study_uids
                self.instances = fact.instances
                self.bytes = fact.bytes
                self.reason = ""
                self.next_attempt_at = None
            case AccessionFailed():
                self.status = "retrying" if fact.will_retry else "failed"
                self.attempts = max(self.attempts, fact.attempt)
                self.reason = fact.reason
                self.next_attempt_at = fact.next_attempt_at


@dataclass
class JobState:
    """One query job, folded from its facts."""

    job_id: str
    submitted: QueryJobSubmitted
    submitted_at: datetime
    actor: str | None
    run: int = 1
    paused: bool = False
    completed_run: int = 0
    accessions: dict[str, AccessionState] = field(default_factory=dict)

    @classmethod
    def start(cls, envelope: Envelope, submitted: QueryJobSubmitted) -> "JobState":
        return cls(
            job_id=submitted.job_id,
            submitted=submitted,
            submitted_at=envelope.occurred_at,
            actor=envelope.actor,
            accessions={a: AccessionState(accession=a) for a in submitted.accessions},
        )

    @property
    def status(self) -> JobStatus:
        if self.paused:
            return "paused"
        return "completed" if self.completed_run >= self.run else "running"

    def apply(self, fact: QueryFact) -> None:
        self.run = max(self.run, fact.run)
        match fact:
            case QueryJobPaused():
                self.paused = True
            case QueryJobResumed():
                self.paused = False
            case QueryJobCompleted():
                self.completed_run = max(self.completed_run, fact.run)
            case AccessionFound() | AccessionNotFound() | AccessionRetrieved() | AccessionFailed():
                state = self.accessions.get(fact.accession)
                if state is not None:
                    state.apply(fact)

    def count(self, *statuses: AccessionStatus) -> int:
        return sum(1 for state in self.accessions.values() if state.status in statuses)

    def summary(self) -> dict[str, Any]:
        """The job as the command line and the JSON API show it."""
        return {
            "job_id": self.job_id,
            "source": self.submitted.source,
            "status": self.status,
            "run": self.run,
            "submitted_at": self.submitted_at.isoformat(),
            "submitted_by": self.actor,
            "study_description": self.submitted.study_description,
            "series_description": self.submitted.series_description,
            "forced_rule": self.submitted.forced_rule,
            "total": len(self.accessions),
            "retrieved": self.count("retrieved"),
            "not_found": self.count("not_found"),
            "failed": self.count("failed"),
            "accessions": [
                {
                    "accession": state.accession,
                    "status": state.status,
                    "attempts": state.attempts,
                    "study_uids": state.study_uids,
                    "instances": state.instances,
                    "bytes": state.bytes,
                    "reason": state.reason,
                    "next_attempt_at": (
                        state.next_attempt_at.isoformat() if state.next_attempt_at else None
                    ),
                }
                for state in self.accessions.values()
            ],
        }


class QueryLog:
    """The query-job facts of the jobs topic from `since` on (everything when None), folded;
    `refresh` reads what was published since the last call."""

    def __init__(
        self, settings: LogSettings, *, since: datetime | None = None, timeout_s: float = 30
    ) -> None:
        self._timeout_s = timeout_s
        self._consumer = Consumer(
            {
                **client_config(settings),
                "group.id": f"{settings.topic_prefix}query-log",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        name = topic_name(Topic.JOBS, prefix=settings.topic_prefix)
        try:
            meta = self._consumer.list_topics(name, timeout=timeout_s).topics[name]
            self._partitions = [TopicPartition(name, p) for p in sorted(meta.partitions)]
            self._next = {tp.partition: self._start(tp, since) for tp in self._partitions}
        except (KafkaException, LogUnavailable) as error:  # a leader election, a broker restart
            self._consumer.close()
            raise LogUnavailable(f"cannot read {name}: {error}") from error
        self._consumer.assign([TopicPartition(name, p, offset) for p, offset in self._next.items()])
        self.jobs: dict[str, JobState] = {}

    def _start(self, partition: TopicPartition, since: datetime | None) -> int:
        if since is None:
            low, _high = self._consumer.get_watermark_offsets(partition, timeout=self._timeout_s)
            return int(low)
        moment = int((since - CLOCK_SKEW).timestamp() * 1000)
        found = self._consumer.offsets_for_times(
            [TopicPartition(partition.topic, partition.partition, moment)], timeout=self._timeout_s
        )[0]
        if found.offset >= 0:
            return int(found.offset)
        return end_offset(self._consumer, partition, timeout_s=self._timeout_s)

    def refresh(self) -> dict[str, JobState]:
        """Read up to where the topic ends now; the folded jobs."""
        targets = {
            tp.partition: end_offset(self._consumer, tp, timeout_s=self._timeout_s)
            for tp in self._partitions
        }
        deadline = time.monotonic() + self._timeout_s
        while any(self._behind(p, end) for p, end in targets.items()):
            if time.monotonic() > deadline:
                raise LogUnavailable("the jobs topic could not be read to its end")
            for message in self._consumer.consume(500, timeout=0.2):
                if message.error() is not None:
                    continue
                self._next[message.partition() or 0] = (message.offset() or 0) + 1
                self._fold(message.value(), message.headers())  # type: ignore[arg-type]
        return self.jobs

    def _behind(self, partition: int, end: int) -> bool:
        return self._next[partition] < end

    def _fold(self, value: bytes | None, headers: Headers | None) -> None:
        if header_value(headers, "type") not in QUERY_FACTS:
            return  # another kind of job: not decoded
        try:
            envelope = decode(value, headers, CATALOGUE)
        except UndecodableEvent:
            return
        fact = envelope.payload
        if isinstance(fact, QueryJobSubmitted):
            self.jobs.setdefault(fact.job_id, JobState.start(envelope, fact))
        elif isinstance(fact, QueryFact) and fact.job_id in self.jobs:
            self.jobs[fact.job_id].apply(fact)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "QueryLog":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
