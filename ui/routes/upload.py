"""The upload page; files go to the intake's `/ingest/upload`, mounted for admins only."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ui.deps import Viewer
from ui.pages import render

router = APIRouter()


@router.get("/upload", response_class=HTMLResponse, include_in_schema=False)
def upload_page(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "upload.html", user=user)
