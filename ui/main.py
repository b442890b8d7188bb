"""The web app: pages, the JSON API under /api, health and metrics, the intake endpoints."""

from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from infra.errors import TransientError
from ingest.web import intake_router
from ui.deps import NotLoggedIn, PasswordChangeRequired, admin_user, check_csrf
from ui.errors import page_error, unavailable
from ui.pages import HERE
from ui.routes import (
    archive,
    audit,
    auth,
    health,
    modules,
    overview,
    query,
    queue,
    rules,
    targets,
    upload,
    users,
)
from ui.security import SESSION_COOKIE, Session
from ui.services import Services

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="Talaria",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(check_csrf)],
    )
    app.state.services = services
    routers = (
        auth,
        overview,
        rules,
        targets,
        modules,
        queue,
        archive,
        audit,
        users,
        upload,
        query,
        health,
    )
    for module in routers:
        app.include_router(module.router)
    app.include_router(intake_router(services.intake), dependencies=[Depends(admin_user)])
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.middleware("http")(_sessions)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(TransientError, unavailable)
    return app


async def _sessions(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Read the signed session cookie; write it back when a route replaced the session."""
    codec = request.app.state.services.sessions
    cookie = request.cookies.get(SESSION_COOKIE)
    session = codec.loads(cookie)
    request.state.session = session or Session.anonymous()
    response = await call_next(request)
    if request.state.session is not session:
        response.set_cookie(
            SESSION_COOKIE,
            codec.dumps(request.state.session),
            max_age=codec.max_age_s,
            httponly=True,
            samesite="strict",
            secure=request.app.state.services.settings.secure_cookies,
        )
    response.headers.update(SECURITY_HEADERS)
    return response


async def _http_error(request: Request, error: Exception) -> Response:
    """The API answers JSON; a page request is sent to log in, or shown an error page."""
    assert isinstance(error, HTTPException)
    if request.url.path.startswith("/api") or request.method != "GET":
        return await http_exception_handler(request, error)
    if isinstance(error, NotLoggedIn):
        return RedirectResponse("/login", status_code=303)
    if isinstance(error, PasswordChangeRequired):
        return RedirectResponse("/password", status_code=303)
    return page_error(request, status_code=error.status_code, detail=str(error.detail))
