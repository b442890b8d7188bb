"""Users: admins act, read-only users look. Every change is a `UserSaved`/`UserDeleted` event."""

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from infra.events import Envelope
from ui.deps import Admin, ServicesDep, Viewer
from ui.pages import render
from ui.services import Services
from ui.users import (
    USERNAME,
    Role,
    User,
    UserInvalid,
    create_user,
    delete_user,
    set_password,
    set_role,
)

router = APIRouter()
UserName = Annotated[str, Path(pattern=f"^{USERNAME.pattern}$")]


class UserCreate(BaseModel):
    name: str = Field(pattern=f"^{USERNAME.pattern}$")
    role: Role = Role.READONLY
    password: str = Field(max_length=1024, description="Initial password; must change at login.")


class UserUpdate(BaseModel):
    role: Role | None = None
    password: str | None = Field(
        default=None, max_length=1024, description="Reset: the user must change it at login."
    )


class UserPublic(BaseModel):
    name: str
    role: Role
    must_change_password: bool


def _public(user: User) -> UserPublic:
    return UserPublic(
        name=user.name, role=user.role, must_change_password=user.must_change_password
    )


def _user_or_404(services: Services, name: str) -> User:
    user = services.view.users.get(name)
    if user is None:
        raise HTTPException(status_code=404, detail=f"no user {name!r}")
    return user


def _publish(services: Services, envelopes: list[Envelope], *, name: str) -> None:
    before = services.view.users.get(name)
    services.publish(envelopes)
    services.view.settle(lambda: services.view.users.get(name) != before)


@router.get("/api/users", tags=["users"])
def list_users(services: ServicesDep, _user: Viewer) -> list[UserPublic]:
    return [_public(user) for user in sorted(services.view.users.values(), key=lambda u: u.name)]


@router.post("/api/users", status_code=201, tags=["users"])
def add_user(body: UserCreate, services: ServicesDep, admin: Admin) -> UserPublic:
    if body.name in services.view.users:
        raise HTTPException(status_code=409, detail=f"user {body.name!r} exists")
    try:
        envelope = create_user(
            sealer=services.sealer,
            name=body.name,
            role=body.role,
            password=body.password,
            must_change_password=True,
            actor=admin.name,
            source=services.source,
        )
    except UserInvalid as error:
        raise HTTPException(status_code=422, detail=str(error)) from error
    _publish(services, [envelope], name=body.name)
    return _public(services.view.users[body.name])


@router.patch("/api/users/{name}", tags=["users"])
def change_user(
    name: UserName, body: UserUpdate, services: ServicesDep, admin: Admin
) -> UserPublic:
    """Change a user's role, or reset their password."""
    user = _user_or_404(services, name)
    if name == admin.name and body.role is not None and body.role is not Role.ADMIN:
        raise HTTPException(status_code=409, detail="you cannot take your own admin role")
    envelopes = []
    if body.role is not None and body.role is not user.role:
        envelopes.append(set_role(user, role=body.role, actor=admin.name, source=services.source))
        user = replace(user, role=body.role)
    if body.password is not None:
        try:
            envelopes.append(
                set_password(
                    user,
                    sealer=services.sealer,
                    password=body.password,
                    must_change=True,
                    actor=admin.name,
                    source=services.source,
                )
            )
        except UserInvalid as error:
            raise HTTPException(status_code=422, detail=str(error)) from error
    if envelopes:
        _publish(services, envelopes, name=name)
    return _public(services.view.users.get(name, user))


@router.delete("/api/users/{name}", status_code=204, tags=["users"])
def remove_user(name: UserName, services: ServicesDep, admin: Admin) -> None:
    user = _user_or_404(services, name)
    if name == admin.name:
        raise HTTPException(status_code=409, detail="you cannot delete yourself")
    _publish(services, [delete_user(user, actor=admin.name, source=services.source)], name=name)


@router.get("/users", response_class=HTMLResponse, include_in_schema=False)
def users_page(request: Request, services: ServicesDep, user: Viewer) -> HTMLResponse:
    users = sorted(services.view.users.values(), key=lambda u: u.name)
    return render(request, "users.html", user=user, users=users, roles=list(Role))
