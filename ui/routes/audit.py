"""The audit log: who changed what, with before/after; sealed credentials are not shown."""

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from projections import queries
from projections.queries import Page
from ui.deps import ServicesDep, Viewer
from ui.pages import render
from ui.services import Services

router = APIRouter()
CREDENTIAL_SHOWN_AS = "(sealed password hash)"


class AuditEntry(BaseModel):
    occurred_at: datetime
    category: str
    type: str
    actor: str
    name: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    details: dict[str, Any] | None


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    has_more: bool


def _shown(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    value: dict[str, Any] = json.loads(text)
    if "credential" in value:
        value["credential"] = CREDENTIAL_SHOWN_AS
    return value


def read_audit(services: Services, *, offset: int) -> AuditPage:
    found = queries.audit_trail(services.store, Page(limit=100, offset=offset))
    entries = [
        AuditEntry(
            occurred_at=row["occurred_at"],
            category=row["category"],
            type=row["type"],
            actor=row["actor"],
            name=row["name"],
            before=_shown(row["before"]),
            after=_shown(row["after"]),
            details=_shown(row["details"]),
        )
        for row in found.rows
    ]
    return AuditPage(entries=entries, has_more=found.has_more)


Offset = Annotated[int, Query(ge=0, le=1_000_000)]


@router.get("/api/audit", tags=["audit"])
def audit(services: ServicesDep, _user: Viewer, offset: Offset = 0) -> AuditPage:
    """Configuration changes and operator actions, newest first."""
    return read_audit(services, offset=offset)


@router.get("/audit", response_class=HTMLResponse, include_in_schema=False)
def audit_page(
    request: Request, services: ServicesDep, user: Viewer, offset: Offset = 0
) -> HTMLResponse:
    page = read_audit(services, offset=offset)
    return render(request, "audit.html", user=user, page=page, offset=offset)
