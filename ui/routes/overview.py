"""The overview: health (checks and service heartbeats), disk space of the blob store, activity
of the last day, recent errors."""

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from projections import queries
from projections.queries import Page, Row
from ui.deps import ServicesDep, Viewer
from ui.pages import render
from ui.services import Services
from ui.status import activity, checks, disk_space, service_health

router = APIRouter()


class Overview(BaseModel):
    checks: list[dict[str, Any]]
    disk: dict[str, Any]
    activity: list[Row]
    recent_errors: list[Row]
    services: list[dict[str, Any]]


def read_overview(services: Services) -> Overview:
    return Overview(
        checks=[asdict(check) for check in checks(services)],
        disk=asdict(disk_space(services)),
        activity=activity(services),
        recent_errors=queries.failures(services.store, Page(limit=10)).rows,
        services=[asdict(health) for health in service_health(services)],
    )


@router.get("/api/overview", tags=["overview"])
def overview(services: ServicesDep, _user: Viewer) -> Overview:
    """At a glance: what is reachable, each service instance's heartbeat (healthy or stale),
    free disk space, received/dispatched/failed per hour."""
    return read_overview(services)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def overview_page(request: Request, services: ServicesDep, user: Viewer) -> HTMLResponse:
    summary = read_overview(services)
    peak = max(
        (max(h["received"], h["dispatched"], h["failed"]) for h in summary.activity), default=0
    )
    return render(request, "overview.html", user=user, overview=summary, peak=max(peak, 1))
