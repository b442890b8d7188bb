"""Logging in and out, the session, and changing one's own password.

Every login and failed login is an operator event (`UserLoggedIn`, `LoginFailed`) on the log.
"""

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from infra.catalogue import LoginFailed, UserLoggedIn
from infra.events import Envelope, Payload
from ui.deps import LoggedIn, ServicesDep, SessionDep
from ui.pages import render
from ui.security import Session
from ui.services import Services
from ui.users import User, UserInvalid, session_fingerprint, set_password

router = APIRouter()


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(max_length=1024)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class SessionPublic(BaseModel):
    csrf_token: str
    user: str | None
    role: str | None
    must_change_password: bool


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def _operator_event(services: Services, payload: Payload, *, actor: str) -> None:
    services.publish(
        [Envelope(payload=payload, source=services.source, subject=actor, actor=actor)]
    )


def log_in(services: Services, request: Request, *, username: str, password: str) -> User:
    """Check the password (throttled), record the outcome on the log, start a new session."""
    address = _address(request)
    if services.throttle.blocked(username=username, address=address):
        raise HTTPException(status_code=429, detail="too many failed logins; try again later")
    user = services.view.users.get(username)
    if user is None or not services.sealer.verify(user, password):
        services.throttle.failed(username=username, address=address)
        _operator_event(
            services, LoginFailed(username=username[:64], address=address), actor=username[:64]
        )
        raise HTTPException(status_code=401, detail="wrong user name or password")
    services.throttle.succeeded(username=username)
    _operator_event(services, UserLoggedIn(username=username, address=address), actor=username)
    request.state.session = Session(  # a new token too: no fixation of a pre-login session
        csrf=Session.anonymous().csrf, user=user.name, fingerprint=session_fingerprint(user)
    )
    return user


def _public(session: Session, user: User | None) -> SessionPublic:
    return SessionPublic(
        csrf_token=session.csrf,
        user=user.name if user else None,
        role=user.role.value if user else None,
        must_change_password=bool(user and user.must_change_password),
    )


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", user=None)


@router.post("/login", include_in_schema=False)
def login_form(
    request: Request,
    services: ServicesDep,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    try:
        user = log_in(services, request, username=username, password=password)
    except HTTPException as refused:
        return render(
            request, "login.html", user=None, error=refused.detail, status_code=refused.status_code
        )
    return RedirectResponse("/password" if user.must_change_password else "/", status_code=303)


@router.post("/logout", include_in_schema=False)
def logout_form(request: Request) -> RedirectResponse:
    request.state.session = Session.anonymous()
    return RedirectResponse("/login", status_code=303)


@router.get("/password", response_class=HTMLResponse, include_in_schema=False)
def password_page(request: Request, user: LoggedIn) -> HTMLResponse:
    return render(request, "password.html", user=user)


@router.get("/api/session", tags=["auth"])
def read_session(services: ServicesDep, session: SessionDep) -> SessionPublic:
    """The CSRF token to send with writes, and who is logged in (if anyone)."""
    user = services.view.users.get(session.user) if session.user else None
    if user is not None and session.fingerprint != session_fingerprint(user):
        user = None
    return _public(session, user)


@router.post("/api/login", tags=["auth"])
def login(request: Request, services: ServicesDep, body: Credentials) -> SessionPublic:
    """Log in; the response carries the new session's CSRF token."""
    user = log_in(services, request, username=body.username, password=body.password)
    return _public(request.state.session, user)


@router.post("/api/logout", status_code=204, tags=["auth"])
def logout(request: Request) -> None:
    request.state.session = Session.anonymous()


@router.post("/api/password", tags=["auth"])
def change_password(
    request: Request, services: ServicesDep, user: LoggedIn, body: PasswordChange
) -> SessionPublic:
    """Choose a new password (required at first login); this session stays valid."""
    if not services.sealer.verify(user, body.current_password):
        raise HTTPException(status_code=403, detail="the current password is wrong")
    if body.new_password == body.current_password:
        raise HTTPException(status_code=422, detail="choose a password you did not use now")
    try:
        envelope = set_password(
            user,
            sealer=services.sealer,
            password=body.new_password,
            must_change=False,
            actor=user.name,
            source=services.source,
        )
    except UserInvalid as error:
        raise HTTPException(status_code=422, detail=str(error)) from error
    services.publish([envelope])
    services.view.settle(lambda: services.view.users.get(user.name) != user)
    changed = services.view.users[user.name]
    request.state.session = Session(
        csrf=request.state.session.csrf, user=user.name, fingerprint=session_fingerprint(changed)
    )
    return _public(request.state.session, changed)
