"""Apply a batch of events to the projection tables: load the rows, fold, write once.

`BatchWriter.apply` is the projector's flush. It loads the fold rows the batch touches (from
its cache, else one FINAL query per table), folds every event in log order with the pure
functions of `projections.fold`, and writes the changed rows plus the `events` and `audit`
rows as one insert per table. The cache is updated only after every insert succeeded, so a
flush that failed half-way is simply run again from the same rows.
"""

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Generic, TypeVar

from infra.catalogue import JobCancelled, JobRetryRequested, StudyCompletionForced
from infra.events import Envelope
from projections.fold import (
    At,
    JobRow,
    PendingStudyRow,
    SeriesRow,
    fold_job,
    fold_pending,
    fold_series,
    job_key,
    pending_rules,
)
from projections.journal import (
    AUDIT_COLUMNS,
    EVENT_COLUMNS,
    References,
    audit_row,
    event_row,
    references,
)
from projections.store import ClickHouse

Row = TypeVar("Row", SeriesRow, JobRow, PendingStudyRow)
_LOAD_CHUNK = 5000


@dataclass(frozen=True, kw_only=True)
class Record:
    """One event of a batch with where it sits on the log (topic without the prefix), and what
    the fold reads of it again and again, worked out once (`references`, `job_key`)."""

    envelope: Envelope
    topic: str
    partition: int
    offset: int
    refs: References = field(init=False)
    job: tuple[str, str] | None = field(init=False)  # the (job id, target) row it is about
    at: At = field(init=False)

    def __post_init__(self) -> None:
        # Plain attributes: a cached_property takes a lock on every read on Python 3.11.
        object.__setattr__(self, "refs", references(self.envelope))
        object.__setattr__(self, "job", job_key(self.envelope.payload))
        object.__setattr__(
            self, "at", At(partition_key=f"{self.topic}/{self.partition}", offset=self.offset)
        )


class RowTable(Generic[Row]):
    """How one fold dataclass maps to its table: columns, loading, and row tuples."""

    def __init__(self, row_class: type[Row], *, table: str, group_by: str) -> None:
        self.row_class: type[Row] = row_class
        self.table = table
        self.group_by = group_by
        self.columns = tuple(f.name for f in dataclasses.fields(row_class))
        self._values = attrgetter(*self.columns)
        # Names are code constants; the keys are a bound parameter.
        self._stored = (
            f"SELECT DISTINCT {group_by} FROM {{db}}.{table} "  # noqa: S608
            f"WHERE {group_by} IN {{keys:Array(String)}}"
        )
        self._select = (
            f"SELECT {', '.join(self.columns)} FROM {{db}}.{table} FINAL "  # noqa: S608
            f"WHERE {group_by} IN {{keys:Array(String)}}"
        )

    def as_tuple(self, row: Row) -> tuple[Any, ...]:
        values: tuple[Any, ...] = self._values(row)
        return values

    def load(self, store: ClickHouse, keys: Iterable[str]) -> list[Row]:
        """The current rows whose `group_by` column is one of `keys`.

        Most keys of a batch are new: a first look at the key column alone finds the stored
        ones, and only those are read whole (FINAL, which costs far more per key)."""
        wanted = sorted(set(keys))
        rows: list[Row] = []
        for start in range(0, len(wanted), _LOAD_CHUNK):
            chunk = wanted[start : start + _LOAD_CHUNK]
            stored = [key for (key,) in store.select_for_write(self._stored, {"keys": chunk}).rows]
            if stored:
                result = store.select_for_write(self._select, {"keys": stored})
                rows += [self._row(values) for values in result.rows]
        return rows

    def _row(self, values: Sequence[Any]) -> Row:
        fields = {name: _utc(value) for name, value in zip(self.columns, values, strict=True)}
        row: Row = self.row_class(**fields)
        return row


def _utc(value: Any) -> Any:
    """clickhouse-connect returns UTC columns as naive datetimes; the fold compares aware ones."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


SERIES = RowTable(SeriesRow, table="series", group_by="series_uid")
JOBS = RowTable(JobRow, table="jobs", group_by="job_id")
PENDING = RowTable(PendingStudyRow, table="pending_studies", group_by="study_uid")

Group = dict[str, Row]  # a job's rows by target, a study's pending rows by rule


class _Cache(Generic[Row]):
    """Rows by key (grouped: a job id or study uid maps to its rows), least recently used out."""

    def __init__(self, capacity: int) -> None:
        self._rows: OrderedDict[str, dict[str, Row]] = OrderedDict()
        self._capacity = capacity

    def missing(self, keys: Iterable[str]) -> set[str]:
        return {key for key in keys if key not in self._rows}

    def get(self, key: str) -> dict[str, Row]:
        self._rows.move_to_end(key)
        return self._rows[key]

    def put(self, key: str, group: dict[str, Row]) -> None:
        self._rows[key] = group
        self._rows.move_to_end(key)
        while len(self._rows) > self._capacity:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()


@dataclass
class _Working:
    """The rows one batch reads and changes, before they are written."""

    series: dict[str, dict[str, SeriesRow]]
    jobs: dict[str, dict[str, JobRow]]
    pending: dict[str, dict[str, PendingStudyRow]]
    changed_series: dict[str, SeriesRow]
    changed_jobs: dict[tuple[str, str], JobRow]
    changed_pending: dict[tuple[str, str], PendingStudyRow]


class BatchWriter:
    """Folds batches of events into the projection tables of one database."""

    def __init__(self, store: ClickHouse, *, cache_rows: int = 200_000) -> None:
        self.store = store
        self._series: _Cache[SeriesRow] = _Cache(cache_rows)
        self._jobs: _Cache[JobRow] = _Cache(cache_rows)
        self._pending: _Cache[PendingStudyRow] = _Cache(cache_rows // 4)

    def forget(self) -> None:
        """Drop every cached row (the tables were swapped under us)."""
        for cache in (self._series, self._jobs, self._pending):
            cache.clear()

    def apply(self, records: Sequence[Record]) -> None:
        """Fold `records` (in log order) into the tables; safe to repeat after a failure."""
        if not records:
            return
        work = self._load(records)
        events = []
        audits = []
        for record in records:
            self._fold(work, record)
            envelope = record.envelope
            events.append(
                event_row(
                    envelope,
                    record.refs,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
            )
            audit = audit_row(envelope)
            if audit is not None:
                audits.append(audit)
        self.store.insert("events", events, columns=EVENT_COLUMNS)
        self.store.insert("audit", audits, columns=AUDIT_COLUMNS)
        _write(self.store, JOBS, work.changed_jobs.values())
        _write(self.store, PENDING, work.changed_pending.values())
        _write(self.store, SERIES, work.changed_series.values())
        self._remember(work)

    # --- loading ----------------------------------------------------------------------------

    def _load(self, records: Sequence[Record]) -> _Working:
        job_ids = {r.job[0] for r in records if r.job}
        jobs = self._groups(self._jobs, JOBS, job_ids)
        series_uids = {uid for r in records for uid in r.refs.series_uids}
        series_uids |= {
            uid for job_id in job_ids for row in jobs[job_id].values() for uid in row.series_uids
        }
        studies = {
            r.refs.study_uid
            for r in records
            if pending_rules(r.envelope) or isinstance(r.envelope.payload, StudyCompletionForced)
        }
        return _Working(
            series=self._groups(self._series, SERIES, series_uids),
            jobs=jobs,
            pending=self._groups(self._pending, PENDING, studies),
            changed_series={},
            changed_jobs={},
            changed_pending={},
        )

    def _groups(
        self, cache: "_Cache[Row]", table: RowTable[Row], keys: set[str]
    ) -> dict[str, dict[str, Row]]:
        missing = cache.missing(keys)
        loaded: dict[str, dict[str, Row]] = {key: {} for key in missing}
        for row in table.load(self.store, missing) if missing else []:
            loaded[getattr(row, table.group_by)][_member(row)] = row
        for key, group in loaded.items():
            cache.put(key, group)
        return {key: dict(cache.get(key)) for key in keys}

    # --- folding ----------------------------------------------------------------------------

    def _fold(self, work: _Working, record: Record) -> None:
        envelope, at = record.envelope, record.at
        for job in self._fold_jobs(work, record):
            for uid in job.series_uids:
                self._fold_series(work, uid, envelope, at, job)
        if record.job is None:
            for uid in record.refs.series_uids:
                self._fold_series(work, uid, envelope, at, None)
        self._fold_pending(work, record)

    def _fold_jobs(self, work: _Working, record: Record) -> list[JobRow]:
        envelope = record.envelope
        key = record.job
        if key is None:
            return []
        job_id, target = key
        rows = work.jobs.setdefault(job_id, {})
        operator = isinstance(envelope.payload, JobRetryRequested | JobCancelled)
        targets = list(rows) if operator and rows else [target]
        folded = []
        for each in targets:
            before = rows.get(each) or JobRow(job_id=job_id, target=each)
            after = fold_job(before, envelope, record.at)
            if after is not before:
                rows[each] = after
                work.changed_jobs[(job_id, each)] = after
            folded.append(after)
        return folded

    def _fold_series(
        self, work: _Working, uid: str, envelope: Envelope, at: At, job: JobRow | None
    ) -> None:
        group = work.series.setdefault(uid, {})
        before = group.get(uid) or SeriesRow(series_uid=uid)
        after = fold_series(before, envelope, at, job=job)
        if after is not before:
            group[uid] = after
            work.changed_series[uid] = after

    def _fold_pending(self, work: _Working, record: Record) -> None:
        envelope = record.envelope
        rules = pending_rules(envelope)
        forced = isinstance(envelope.payload, StudyCompletionForced)
        if not rules and not forced:
            return
        study_uid = record.refs.study_uid
        rows = work.pending.setdefault(study_uid, {})
        for rule in list(rows) if forced else rules:
            before = rows.get(rule) or PendingStudyRow(study_uid=study_uid, rule=rule)
            after = fold_pending(before, envelope, record.at)
            if after is not before:
                rows[rule] = after
                work.changed_pending[(study_uid, rule)] = after

    def _remember(self, work: _Working) -> None:
        for uid, group in work.series.items():
            self._series.put(uid, group)
        for job_id, jobs in work.jobs.items():
            self._jobs.put(job_id, jobs)
        for study_uid, pending in work.pending.items():
            self._pending.put(study_uid, pending)


def _member(row: SeriesRow | JobRow | PendingStudyRow) -> str:
    """A row's key inside its group."""
    if isinstance(row, JobRow):
        return row.target
    if isinstance(row, PendingStudyRow):
        return row.rule
    return row.series_uid


def _write(store: ClickHouse, table: RowTable[Row], rows: Iterable[Row]) -> None:
    store.insert(table.table, [table.as_tuple(row) for row in rows], columns=table.columns)
