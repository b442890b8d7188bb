"""The archive: search, a series' detail with its event timeline and results, and reprocessing."""

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from infra.catalogue import ReprocessRequested
from projections import queries
from projections.queries import ArchiveQuery, Page, Row
from ui.deps import Admin, ServicesDep, Viewer
from ui.operations import act
from ui.pages import render
from ui.routes.queue import UID_PATTERN
from ui.services import Services

router = APIRouter()

SeriesUid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64)]
_TEXT = Field(default="", max_length=200)
# The years ClickHouse's DateTime64 holds.
FIRST_YEAR, LAST_YEAR = 1900, 2299


def _in_utc(moment: datetime | None) -> datetime | None:
    """A bound ClickHouse can compare with: in its range, in UTC (a time without zone is UTC)."""
    if moment is None:
        return None
    if not FIRST_YEAR < moment.year < LAST_YEAR:
        raise ValueError(f"dates must lie between the years {FIRST_YEAR} and {LAST_YEAR}")
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


# An empty date field of the search form means "no bound".
Moment = Annotated[
    datetime | None, BeforeValidator(lambda value: value or None), AfterValidator(_in_utc)
]


class ArchiveFilters(BaseModel):
    """Archive search filters (empty ones do not filter); text matches ignore case."""

    patient_name: str = _TEXT
    patient_id: str = _TEXT
    accession_number: str = _TEXT
    study_uid: str = _TEXT
    series_uid: str = _TEXT
    modality: str = _TEXT
    description: str = _TEXT
    sender_aet: str = _TEXT
    rule: str = _TEXT
    status: str = _TEXT
    received_from: Moment = None
    received_until: Moment = None
    sort: Literal["received", "completed", "patient", "modality", "status", "instances"] = (
        "received"
    )
    descending: bool = True
    limit: int = Field(default=50, ge=1, le=queries.MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class ArchivePage(BaseModel):
    rows: list[Row]
    has_more: bool


class TimelineEvent(BaseModel):
    occurred_at: datetime
    type: str
    source: str
    actor: str
    job_id: str
    target: str
    payload: dict[str, Any]


class SeriesDetail(BaseModel):
    series: Row
    timeline: list[TimelineEvent]
    results: list[dict[str, Any]] = Field(
        description="Each processing step's module, exit code, result.json and log key."
    )


class Reprocess(BaseModel):
    rule: str | None = Field(
        default=None, max_length=64, description="Run only this rule; all current rules if unset."
    )


def search(services: Services, filters: ArchiveFilters) -> ArchivePage:
    query = ArchiveQuery(**filters.model_dump(exclude={"limit", "offset"}))
    found = queries.search_archive(
        services.store, query, Page(limit=filters.limit, offset=filters.offset)
    )
    return ArchivePage(rows=found.rows, has_more=found.has_more)


def series_detail(services: Services, series_uid: str) -> SeriesDetail:
    rows = queries.search_archive(services.store, ArchiveQuery(series_uid=series_uid)).rows
    if not rows:
        raise HTTPException(status_code=404, detail=f"no series {series_uid!r}")
    timeline = [
        TimelineEvent(
            occurred_at=row["occurred_at"],
            type=row["type"],
            source=row["source"],
            actor=row["actor"],
            job_id=row["job_id"],
            target=row["target"],
            payload=json.loads(row["payload"]),
        )
        for row in queries.series_timeline(services.store, series_uid)
    ]
    results = [
        {"job_id": event.job_id, **event.payload}
        for event in timeline
        if event.type == "ProcessingStepCompleted"
    ]
    return SeriesDetail(series=rows[0], timeline=timeline, results=results)


@router.get("/api/archive", tags=["archive"])
def search_archive(
    filters: Annotated[ArchiveFilters, Depends()], services: ServicesDep, _user: Viewer
) -> ArchivePage:
    """Series matching the filters, sorted, one page of them."""
    return search(services, filters)


@router.get("/api/archive/{series_uid}", tags=["archive"])
def read_series(series_uid: SeriesUid, services: ServicesDep, _user: Viewer) -> SeriesDetail:
    """A series with everything that happened to it, in order."""
    return series_detail(services, series_uid)


@router.post("/api/archive/{series_uid}/reprocess", status_code=202, tags=["archive"])
def reprocess(series_uid: SeriesUid, body: Reprocess, services: ServicesDep, user: Admin) -> None:
    """Run the decisions again for this series: with today's rules, or with one chosen rule."""
    if body.rule is not None and body.rule not in services.view.config.rules:
        raise HTTPException(status_code=422, detail=f"no rule named {body.rule!r}")
    series = series_detail(services, series_uid).series
    request = ReprocessRequested(
        study_uid=series["study_uid"], series_uid=series_uid, rule=body.rule
    )
    act(services, request, user=user, subject=series_uid)


@router.get("/archive", response_class=HTMLResponse, include_in_schema=False)
def archive_page(
    request: Request,
    filters: Annotated[ArchiveFilters, Depends()],
    services: ServicesDep,
    user: Viewer,
) -> HTMLResponse:
    return render(
        request, "archive.html", user=user, filters=filters, found=search(services, filters)
    )


@router.get("/archive/{series_uid}", response_class=HTMLResponse, include_in_schema=False)
def series_page(
    request: Request, series_uid: SeriesUid, services: ServicesDep, user: Viewer
) -> HTMLResponse:
    return render(
        request,
        "series.html",
        user=user,
        detail=series_detail(services, series_uid),
        rules=list(services.view.config.rules),
    )
