"""The queues: processing, routing, pending studies, failures; suspend, resume, force, retry,
cancel. Lists come from the projections; actions are operator events on the log."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from infra.catalogue import (
    JobCancelled,
    JobRetryRequested,
    QueueResumed,
    QueueSuspended,
    StudyCompletionForced,
)
from projections import queries
from projections.queries import Row
from ui.deps import Admin, ServicesDep, Viewer
from ui.operations import act
from ui.pages import render
from ui.services import Services

router = APIRouter()

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
QUEUE_PATTERN = (
    r"^(processing|dispatch)(\.(urgent|normal|offpeak))?$|^target:[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$"
)
StudyUid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64)]
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]


class QueueName(BaseModel):
    queue: str = Field(
        pattern=QUEUE_PATTERN,
        description="processing[.<lane>], dispatch[.<lane>] or target:<name>",
        examples=["dispatch", "processing.offpeak", "target:pacs"],
    )


class Queues(BaseModel):
    processing: list[Row]
    routing: list[Row]
    pending_studies: list[Row]
    failures: list[Row]
    suspended: list[str]


def read_queues(services: Services) -> Queues:
    store = services.store
    return Queues(
        processing=queries.processing_queue(store).rows,
        routing=queries.routing_queue(store).rows,
        pending_studies=queries.pending_studies(store).rows,
        failures=queries.failures(store).rows,
        suspended=sorted(services.view.suspended_queues),
    )


def _known_job(services: Services, job_id: str) -> None:
    if not queries.job_timeline(services.store, job_id):
        raise HTTPException(status_code=404, detail=f"no job {job_id!r}")


@router.get("/api/queue", tags=["queue"])
def queue(services: ServicesDep, _user: Viewer) -> Queues:
    """Jobs processing or routing now, studies waiting for series, failures, suspended queues."""
    return read_queues(services)


@router.post("/api/queue/suspend", status_code=204, tags=["queue"])
def suspend(body: QueueName, services: ServicesDep, user: Admin) -> None:
    act(services, QueueSuspended(queue=body.queue), user=user, subject=body.queue)
    services.view.settle(lambda: body.queue in services.view.suspended_queues)


@router.post("/api/queue/resume", status_code=204, tags=["queue"])
def resume(body: QueueName, services: ServicesDep, user: Admin) -> None:
    act(services, QueueResumed(queue=body.queue), user=user, subject=body.queue)
    services.view.settle(lambda: body.queue not in services.view.suspended_queues)


@router.post("/api/studies/{study_uid}/force-completion", status_code=204, tags=["queue"])
def force_completion(study_uid: StudyUid, services: ServicesDep, user: Admin) -> None:
    """Complete a study now instead of waiting for its remaining series."""
    if not queries.study_timeline(services.store, study_uid):
        raise HTTPException(status_code=404, detail=f"no study {study_uid!r}")
    act(services, StudyCompletionForced(study_uid=study_uid), user=user, subject=study_uid)


@router.post("/api/jobs/{job_id}/retry", status_code=204, tags=["queue"])
def retry(job_id: JobId, services: ServicesDep, user: Admin) -> None:
    _known_job(services, job_id)
    act(services, JobRetryRequested(job_id=job_id), user=user, subject=job_id)


@router.post("/api/jobs/{job_id}/cancel", status_code=204, tags=["queue"])
def cancel(job_id: JobId, services: ServicesDep, user: Admin) -> None:
    _known_job(services, job_id)
    act(services, JobCancelled(job_id=job_id), user=user, subject=job_id)


@router.get("/queue", response_class=HTMLResponse, include_in_schema=False)
def queue_page(request: Request, services: ServicesDep, user: Viewer) -> HTMLResponse:
    return render(request, "queue.html", user=user, queues=read_queues(services))
