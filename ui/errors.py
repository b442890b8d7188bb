"""How failures reach the user: an error page for browsers, JSON for the API.

A `TransientError` from the log or the projections (broker down, ClickHouse busy) is a 503: the
request may succeed when repeated.
"""

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ui.pages import render


def page_error(request: Request, *, status_code: int, detail: str) -> HTMLResponse:
    return render(request, "error.html", user=None, status_code=status_code, detail=detail)


async def unavailable(request: Request, error: Exception) -> Response:
    detail = f"temporarily unavailable: {error}"
    if request.url.path.startswith("/api") or request.method != "GET":
        return JSONResponse({"detail": detail}, status_code=503)
    return page_error(request, status_code=503, detail=detail)
