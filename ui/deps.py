"""Dependencies of the routers, as `Annotated` aliases: services, session, user, roles, CSRF."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from ui.security import CSRF_FIELD, CSRF_HEADER, Session
from ui.services import Services
from ui.users import Role, User, session_fingerprint

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PLAIN_FORM = "application/x-www-form-urlencoded"


class NotLoggedIn(HTTPException):
    """No valid session: the API answers 401, pages send the browser to the login page."""

    def __init__(self) -> None:
        super().__init__(status_code=401, detail="log in first")


class PasswordChangeRequired(HTTPException):
    """The user must choose a new password before doing anything else."""

    def __init__(self) -> None:
        super().__init__(status_code=403, detail="change your password first")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_session(request: Request) -> Session:
    session: Session = request.state.session
    return session


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]


def logged_in_user(services: ServicesDep, session: SessionDep) -> User:
    """The session's user, even one who must still change the password."""
    user = services.view.users.get(session.user) if session.user else None
    if user is None or session.fingerprint != session_fingerprint(user):
        raise NotLoggedIn
    return user


LoggedIn = Annotated[User, Depends(logged_in_user)]


def active_user(user: LoggedIn) -> User:
    """Any user with a chosen password: may look at everything."""
    if user.must_change_password:
        raise PasswordChangeRequired
    return user


Viewer = Annotated[User, Depends(active_user)]


def admin_user(user: Viewer) -> User:
    """A user who may act: change configuration, operate queues, manage users."""
    if user.role is not Role.ADMIN:
        raise HTTPException(status_code=403, detail="read-only users cannot do this")
    return user


Admin = Annotated[User, Depends(admin_user)]


async def check_csrf(request: Request) -> None:
    """Every state-changing request carries the session's CSRF token back (app-wide)."""
    if request.method in _SAFE_METHODS:
        return
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.headers.get("content-type", "").startswith(_PLAIN_FORM):
        field = (await request.form()).get(CSRF_FIELD)
        token = field if isinstance(field, str) else None
    if not get_session(request).csrf_matches(token):
        raise HTTPException(status_code=403, detail="CSRF token missing or wrong")
