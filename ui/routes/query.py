"""Query jobs: retrieve studies by accession number from a source. Jobs are read back from the
jobs topic (their facts are the only record); submit, pause, resume and retry publish facts and
commands with the admin as actor."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from executors.query import jobs
from executors.query.history import JobState, QueryLog
from executors.query.sources import source_settings
from infra.errors import PermanentError
from infra.topics import Lane
from ui.deps import Admin, ServicesDep, Viewer
from ui.pages import render
from ui.services import Services

router = APIRouter()

QueryJobId = Annotated[str, Path(pattern=r"^[0-9a-f-]{36}$")]


class QueryJobRequest(BaseModel):
    source: str = Field(min_length=1, max_length=64, description="A target with direction query.")
    accessions: str = Field(
        min_length=1,
        max_length=400_000,
        description="Accession numbers, one per line (or separated by commas or blanks).",
    )
    study_description: str = Field(default="", max_length=64, description="Wildcards * and ?.")
    series_description: str = Field(default="", max_length=64, description="Wildcards * and ?.")
    forced_rule: str = Field(default="", max_length=64, description="Route by this rule.")
    offpeak: bool = Field(default=False, description="Run in the off-peak window only.")
    destination: str = Field(
        default="", max_length=64, description="A folder target to write to instead."
    )


class QueryJobCreated(BaseModel):
    job_id: str


def _jobs(services: Services) -> dict[str, JobState]:
    with QueryLog(services.settings) as history:
        return history.refresh()


def _job(services: Services, job_id: str) -> JobState:
    job = _jobs(services).get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no query job {job_id!r}")
    return job


def _sources(services: Services) -> list[str]:
    names = []
    for name, target in services.view.config.targets.items():
        try:
            source_settings(target.model_dump(), name=name)
        except PermanentError:
            continue
        names.append(name)
    return sorted(names)


@router.get("/api/query/jobs", tags=["query"])
def list_jobs(services: ServicesDep, _user: Viewer) -> list[dict[str, Any]]:
    """Every query job with its per-accession progress, newest first."""
    found = sorted(_jobs(services).values(), key=lambda job: job.submitted_at, reverse=True)
    return [job.summary() for job in found]


@router.get("/api/query/jobs/{job_id}", tags=["query"])
def get_job(job_id: QueryJobId, services: ServicesDep, _user: Viewer) -> dict[str, Any]:
    return _job(services, job_id).summary()


@router.post("/api/query/jobs", status_code=201, tags=["query"])
def submit_job(body: QueryJobRequest, services: ServicesDep, user: Admin) -> QueryJobCreated:
    """Submit a job: the accessions' studies are found and retrieved into Talaria."""
    config = services.view.config
    if body.forced_rule and body.forced_rule not in config.rules:
        raise HTTPException(status_code=422, detail=f"no rule named {body.forced_rule!r}")
    target = config.targets.get(body.source)
    folder = config.targets.get(body.destination) if body.destination else None
    try:
        job_id = jobs.submit(
            services.producer,
            source=body.source,
            source_config=None if target is None else target.model_dump(),
            accessions=jobs.parse_accessions(body.accessions),
            actor=user.name,
            study_description=body.study_description,
            series_description=body.series_description,
            forced_rule=body.forced_rule,
            lane=Lane.OFFPEAK if body.offpeak else Lane.NORMAL,
            destination=body.destination,
            destination_config=None if folder is None else folder.model_dump(),
        )
    except jobs.QueryRequestInvalid as error:
        raise HTTPException(status_code=422, detail=str(error)) from error
    return QueryJobCreated(job_id=job_id)


def _change(services: Services, job_id: str, action: jobs.Change, *, actor: str) -> None:
    job = _job(services, job_id)
    try:
        action(services.producer, job, actor=actor)
    except jobs.QueryRequestInvalid as error:
        raise HTTPException(status_code=409, detail=str(error)) from error


@router.post("/api/query/jobs/{job_id}/pause", status_code=204, tags=["query"])
def pause_job(job_id: QueryJobId, services: ServicesDep, user: Admin) -> None:
    """Start no further accession until the job is resumed."""
    _change(services, job_id, jobs.pause, actor=user.name)


@router.post("/api/query/jobs/{job_id}/resume", status_code=204, tags=["query"])
def resume_job(job_id: QueryJobId, services: ServicesDep, user: Admin) -> None:
    _change(services, job_id, jobs.resume, actor=user.name)


@router.post("/api/query/jobs/{job_id}/retry", status_code=204, tags=["query"])
def retry_job(job_id: QueryJobId, services: ServicesDep, user: Admin) -> None:
    """Try the accessions that failed or were not found again, in a new run."""
    _change(services, job_id, jobs.retry, actor=user.name)


@router.get("/query", response_class=HTMLResponse, include_in_schema=False)
def query_page(request: Request, services: ServicesDep, user: Viewer) -> HTMLResponse:
    return render(
        request,
        "query.html",
        user=user,
        jobs=list_jobs(services, user),
        sources=_sources(services),
        folders=sorted(
            name
            for name, target in services.view.config.targets.items()
            if target.target_type == "folder"
        ),
        rules=sorted(services.view.config.rules),
    )
