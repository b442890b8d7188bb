"""The queries the UI, the API and the command line ask of the projections.

Every value from a caller is a bound parameter; column names in ORDER BY come from a fixed map.
Fold tables are read with FINAL, so a row shows its furthest-folded version even before the
engine merged the older ones away. Results are lists of dicts keyed by column name.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from projections.errors import QueryFailed
from projections.fold import ACTIVE_STATES, name_key
from projections.store import ClickHouse

Row = dict[str, Any]
MAX_PAGE = 500
_FEW_SERIES = 100  # up to this many matches, a search reads only the matching keys FINAL

_EVENT_COLUMNS = (
    "occurred_at, event_id, type, source, subject, study_uid, series_uids, job_id, target, "
    "actor, causation_id, correlation_id, payload"
)
_JOB_COLUMNS = (
    "job_id, target, kind, study_uid, series_uids, rule, lane, state, attempts, next_retry_at, "
    "queued_at, started_at, finished_at, error, result"
)
_SERIES_COLUMNS = (
    "series_uid, study_uid, patient_name, patient_id, accession_number, modality, "
    "study_description, series_description, series_date, sender_aet, receiver_aet, "
    "instance_count, first_received_at, last_received_at, completed_at, matched_rules, "
    "study_rules, status, discarded_at, discard_reason, purged_at, jobs"
)
_SORTS = {
    "received": "first_received_at",
    "completed": "completed_at",
    "patient": "patient_key",
    "modality": "modality",
    "status": "status",
    "instances": "instance_count",
}


@dataclass(frozen=True, kw_only=True)
class Page:
    """Which slice of a sorted result to return."""

    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE or self.offset < 0:
            raise QueryFailed(f"a page holds 1 to {MAX_PAGE} rows from offset 0 or more")


@dataclass(frozen=True, kw_only=True)
class Paged:
    rows: list[Row]
    has_more: bool


@dataclass(frozen=True, kw_only=True)
class ArchiveQuery:
    """Archive search filters; empty ones do not filter. Text matches ignore case."""

    patient_name: str = ""  # prefix of the name or of any of its components
    patient_id: str = ""  # prefix
    accession_number: str = ""
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    description: str = ""  # substring of the study or series description
    sender_aet: str = ""
    rule: str = ""
    status: str = ""
    received_from: datetime | None = None
    received_until: datetime | None = None
    sort: Literal["received", "completed", "patient", "modality", "status", "instances"] = (
        "received"
    )
    descending: bool = True


def _where(query: ArchiveQuery) -> tuple[list[str], dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if query.patient_name:
        params["name"] = name_key(query.patient_name)
        clauses.append(
            "(startsWith(patient_key, {name:String}) "
            "OR position(patient_key, concat(' ', {name:String})) > 0)"
        )
    if query.patient_id:
        params["pid"] = query.patient_id.casefold()
        clauses.append("startsWith(patient_id_key, {pid:String})")
    exact = {
        "accession_number": query.accession_number,
        "study_uid": query.study_uid,
        "series_uid": query.series_uid,
        "modality": query.modality,
        "sender_aet": query.sender_aet,
        "status": query.status,
    }
    for column, value in exact.items():
        if value:
            params[column] = value
            clauses.append(f"{column} = {{{column}:String}}")
    if query.description:
        params["description"] = query.description
        clauses.append(
            "(positionCaseInsensitiveUTF8(study_description, {description:String}) > 0 "
            "OR positionCaseInsensitiveUTF8(series_description, {description:String}) > 0)"
        )
    if query.rule:
        params["rule"] = query.rule
        clauses.append("(has(matched_rules, {rule:String}) OR has(study_rules, {rule:String}))")
    if query.received_from is not None:
        params["since"] = query.received_from
        clauses.append("first_received_at >= {since:DateTime64(6, 'UTC')}")
    if query.received_until is not None:
        params["until"] = query.received_until
        clauses.append("first_received_at < {until:DateTime64(6, 'UTC')}")
    return clauses, params


def search_archive(store: ClickHouse, query: ArchiveQuery, page: Page | None = None) -> Paged:
    """Series matching `query`, sorted, one page of them."""
    page = page or Page()
    clauses, params = _where(query)
    direction = "DESC" if query.descending else "ASC"
    where = " AND ".join(clauses) or "1"
    if query.accession_number or query.study_uid:
        # These name few series: find them first without FINAL (on the filter's columns, in
        # any stored version), then read FINAL only the rows of those keys, where the filter is
        # applied again to each one's last version. Should they name many, the first step stops
        # early and the search reads the table FINAL as other filters do (scattered over the
        # table, many keys cost as much as all of it).
        found = store.select(
            f"SELECT DISTINCT series_uid FROM {{db}}.series WHERE {where} "  # noqa: S608
            f"LIMIT {_FEW_SERIES + 1}",
            params,
        ).rows
        if len(found) <= _FEW_SERIES:
            where = f"series_uid IN {{candidates:Array(String)}} AND {where}"
            params["candidates"] = [uid for (uid,) in found]
    sql = (
        f"SELECT {_SERIES_COLUMNS} FROM {{db}}.series FINAL "  # noqa: S608 - fixed fragments
        f"WHERE {where} "
        f"ORDER BY {_SORTS[query.sort]} {direction}, series_uid {direction} "
        "LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
    )
    return _paged(store, sql, params, page)


def _paged(store: ClickHouse, sql: str, params: dict[str, Any], page: Page) -> Paged:
    rows = store.select(sql, {**params, "limit": page.limit + 1, "offset": page.offset}).dicts()
    return Paged(rows=rows[: page.limit], has_more=len(rows) > page.limit)


# --- queues --------------------------------------------------------------------------------------


def _jobs(
    store: ClickHouse, *, kinds: tuple[str, ...], states: tuple[str, ...], page: Page
) -> Paged:
    sql = (
        f"SELECT {_JOB_COLUMNS} FROM {{db}}.jobs FINAL "  # noqa: S608 - fixed fragments
        "WHERE kind IN {kinds:Array(String)} AND state IN {states:Array(String)} "
        "ORDER BY queued_at, job_id, target LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
    )
    return _paged(store, sql, {"kinds": list(kinds), "states": list(states)}, page)


def processing_queue(store: ClickHouse, page: Page | None = None) -> Paged:
    """Processing jobs queued, running or waiting for a retry, oldest first."""
    return _jobs(store, kinds=("process",), states=ACTIVE_STATES, page=page or Page())


def routing_queue(store: ClickHouse, page: Page | None = None) -> Paged:
    """Dispatch jobs queued, running or waiting for a retry, oldest first."""
    return _jobs(store, kinds=("dispatch",), states=ACTIVE_STATES, page=page or Page())


def failures(store: ClickHouse, page: Page | None = None) -> Paged:
    """Jobs of any kind that failed for good (until an operator retries them)."""
    kinds = ("process", "dispatch", "notify", "")
    return _jobs(store, kinds=kinds, states=("failed",), page=page or Page())


def stuck_jobs(store: ClickHouse, *, now: datetime, idle: timedelta) -> list[Row]:
    """Active jobs with no event for `idle` and no retry scheduled within it, oldest first
    (a job known only from an operator's request, without a command, is not one)."""
    sql = (
        f"SELECT {_JOB_COLUMNS}, updated_at FROM {{db}}.jobs FINAL "  # noqa: S608 - fixed
        "WHERE kind != '' AND state IN {states:Array(String)} "
        "AND updated_at < {since:DateTime64(6, 'UTC')} "
        "AND (next_retry_at IS NULL OR next_retry_at < {since:DateTime64(6, 'UTC')}) "
        "ORDER BY updated_at, job_id, target LIMIT {limit:UInt32}"
    )
    params = {"states": list(ACTIVE_STATES), "since": now - idle, "limit": MAX_PAGE}
    return store.select(sql, params).dicts()


def pending_studies(store: ClickHouse, page: Page | None = None) -> Paged:
    """Studies whose study-level rule waits for more series, oldest first."""
    sql = (
        "SELECT study_uid, rule, condition, required_series, force_action, series_uids, "
        "first_deferred_at, last_deferred_at, forced_at, status "
        "FROM {db}.pending_studies FINAL WHERE status = 'pending' "
        "ORDER BY first_deferred_at, study_uid, rule LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
    )
    return _paged(store, sql, {}, page or Page())


# --- timelines -----------------------------------------------------------------------------------


def _events(store: ClickHouse, condition: str, params: dict[str, Any]) -> list[Row]:
    sql = (
        f"SELECT {_EVENT_COLUMNS} FROM {{db}}.events FINAL WHERE {condition} "  # noqa: S608
        "ORDER BY occurred_at, event_id"
    )
    return store.select(sql, params).dicts()


def series_timeline(store: ClickHouse, series_uid: str) -> list[Row]:
    """Everything that happened to a series and to the jobs that carried it, in order."""
    found = store.select(
        "SELECT study_uid, mapKeys(jobs) FROM {db}.series FINAL WHERE series_uid = {s:String}",
        {"s": series_uid},
    ).rows
    if not found:
        return []
    study_uid, job_keys = found[0]
    job_ids = sorted({key.split("/", 1)[0] for key in job_keys})
    return _events(
        store,
        "entity IN {entities:Array(String)} "
        "AND (has(series_uids, {s:String}) OR job_id IN {jobs:Array(String)})",
        {"entities": [study_uid, *job_ids], "s": series_uid, "jobs": job_ids},
    )


def study_timeline(store: ClickHouse, study_uid: str) -> list[Row]:
    """Everything that happened to a study's series and jobs, in order."""
    job_ids = [
        row[0]
        for row in store.select(
            "SELECT DISTINCT job_id FROM {db}.jobs FINAL WHERE study_uid = {s:String}",
            {"s": study_uid},
        ).rows
    ]
    return _events(store, "entity IN {entities:Array(String)}", {"entities": [study_uid, *job_ids]})


def job_timeline(store: ClickHouse, job_id: str) -> list[Row]:
    """A job's command and outcomes, in order."""
    return _events(store, "entity = {job:String}", {"job": job_id})


# --- dashboard -----------------------------------------------------------------------------------


def series_per_hour(store: ClickHouse, *, since: datetime, until: datetime) -> list[Row]:
    """Series first received per hour and modality."""
    return store.select(
        "SELECT toStartOfHour(first_received_at) AS hour, modality, count() AS series "
        "FROM {db}.series FINAL WHERE first_received_at >= {since:DateTime64(6, 'UTC')} "
        "AND first_received_at < {until:DateTime64(6, 'UTC')} "
        "GROUP BY hour, modality ORDER BY hour, modality",
        {"since": since, "until": until},
    ).dicts()


def turnaround(store: ClickHouse, *, since: datetime, until: datetime) -> list[Row]:
    """Seconds from a series' first instance to its successful dispatch, per target."""
    return store.select(
        "WITH dispatched AS (SELECT target, finished_at, arrayJoin(series_uids) AS series_uid "
        "  FROM {db}.jobs FINAL WHERE kind = 'dispatch' AND state = 'succeeded' "
        "  AND finished_at >= {since:DateTime64(6, 'UTC')} "
        "  AND finished_at < {until:DateTime64(6, 'UTC')}) "
        "SELECT target, count() AS dispatches, "
        "  quantiles(0.5, 0.95, 0.99)(dateDiff('millisecond', first_received_at, finished_at) "
        "  / 1000) AS seconds_p50_p95_p99 "
        "FROM dispatched INNER JOIN (SELECT series_uid, first_received_at FROM {db}.series FINAL "
        "  WHERE series_uid IN (SELECT series_uid FROM dispatched)) AS s USING series_uid "
        "GROUP BY target ORDER BY target",
        {"since": since, "until": until},
    ).dicts()


def error_rates(store: ClickHouse, *, since: datetime, until: datetime) -> list[Row]:
    """Per target: jobs finished in the window, how many failed for good, and retries spent."""
    return store.select(
        "SELECT target, count() AS finished, countIf(state = 'failed') AS failed, "
        "  failed / finished AS error_rate, sum(attempts) - finished AS retries "
        "FROM {db}.jobs FINAL WHERE kind = 'dispatch' AND state IN ('succeeded', 'failed') "
        "AND finished_at >= {since:DateTime64(6, 'UTC')} "
        "AND finished_at < {until:DateTime64(6, 'UTC')} GROUP BY target ORDER BY target",
        {"since": since, "until": until},
    ).dicts()


def audit_trail(store: ClickHouse, page: Page | None = None) -> Paged:
    """Configuration changes and operator actions, newest first, with actor and before/after."""
    sql = (
        "SELECT occurred_at, event_id, category, type, actor, name, before, after, details "
        "FROM {db}.audit FINAL ORDER BY occurred_at DESC, event_id DESC "
        "LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
    )
    return _paged(store, sql, {}, page or Page())
