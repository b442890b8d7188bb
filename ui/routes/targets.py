"""Dispatch targets of every type: CRUD as config events, and the "Test" button."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from executors.dispatch import DispatchError
from executors.dispatch.target import REGISTRY
from executors.dispatch.targets import open_target, target_settings
from streams.config import Target
from ui import config_edit
from ui.config_edit import TARGETS, ConfigKind, ConfigName
from ui.deps import Admin, ServicesDep, Viewer
from ui.forms import form_fields
from ui.pages import render

router = APIRouter()


def _check(entry: BaseModel) -> None:
    target_settings(entry.model_dump())


KIND = ConfigKind(
    section=TARGETS.section,
    noun=TARGETS.noun,
    deleted=TARGETS.deleted,
    used_by=TARGETS.used_by,
    check=_check,
)


class TargetCreate(Target):
    name: str = Field(pattern=config_edit.NAME_PATTERN)


class TargetPublic(Target):
    name: str


class TargetTestResult(BaseModel):
    ok: bool
    summary: str


def _public(name: str, target: Target) -> TargetPublic:
    return TargetPublic(name=name, **target.model_dump())


@router.get("/api/targets", tags=["targets"])
def list_targets(services: ServicesDep, _user: Viewer) -> list[TargetPublic]:
    return [_public(name, target) for name, target in services.view.config.targets.items()]


@router.get("/api/targets/{name}", tags=["targets"])
def read_target(name: ConfigName, services: ServicesDep, _user: Viewer) -> TargetPublic:
    return _public(name, config_edit.entry_or_404(services, KIND, name))


@router.post("/api/targets", status_code=201, tags=["targets"])
def create_target(body: TargetCreate, services: ServicesDep, user: Admin) -> TargetPublic:
    """Publish `TargetSaved` for a new target (its fields checked by its type)."""
    target = Target.model_validate(body.model_dump(exclude={"name"}))
    config_edit.save(services, KIND, name=body.name, entry=target, user=user, creating=True)
    return _public(body.name, target)


@router.put("/api/targets/{name}", tags=["targets"])
def update_target(
    name: ConfigName, body: Target, services: ServicesDep, user: Admin
) -> TargetPublic:
    config_edit.save(services, KIND, name=name, entry=body, user=user, creating=False)
    return _public(name, body)


@router.delete("/api/targets/{name}", status_code=204, tags=["targets"])
def delete_target(name: ConfigName, services: ServicesDep, user: Admin) -> None:
    config_edit.delete(services, KIND, name=name, user=user)


@router.post("/api/targets/{name}/test", tags=["targets"])
def check_target(name: ConfigName, services: ServicesDep, _user: Admin) -> TargetTestResult:
    """Check that the target answers (C-ECHO, a HEAD request, a login, ...)."""
    target: Target = config_edit.entry_or_404(services, KIND, name)
    try:
        return TargetTestResult(ok=True, summary=open_target(target.model_dump()).test())
    except DispatchError as error:
        return TargetTestResult(ok=False, summary=str(error))


@router.get("/api/target-types", tags=["targets"])
def target_types(_user: Viewer) -> dict[str, dict[str, Any]]:
    """Each target type's settings as a JSON schema."""
    return {name: kind.settings.model_json_schema() for name, kind in sorted(REGISTRY.items())}


# --- pages -------------------------------------------------------------------------------------


@router.get("/targets", response_class=HTMLResponse, include_in_schema=False)
def targets_page(request: Request, services: ServicesDep, user: Viewer) -> HTMLResponse:
    return render(
        request,
        "targets.html",
        user=user,
        targets=services.view.config.targets,
        types=sorted(REGISTRY),
    )


@router.get("/targets/new", response_class=HTMLResponse, include_in_schema=False)
def new_target_page(
    request: Request, user: Viewer, target_type: Annotated[str, Query(alias="type")] = "dicom"
) -> HTMLResponse:
    return _editor(request, user, name=None, target=Target(target_type=target_type))


@router.get("/targets/{name}", response_class=HTMLResponse, include_in_schema=False)
def target_page(
    request: Request, name: ConfigName, services: ServicesDep, user: Viewer
) -> HTMLResponse:
    return _editor(request, user, name=name, target=config_edit.entry_or_404(services, KIND, name))


def _editor(request: Request, user: Viewer, *, name: str | None, target: Target) -> HTMLResponse:
    kind = REGISTRY.get(target.target_type)
    if kind is None:
        raise HTTPException(status_code=404, detail=f"no target type {target.target_type!r}")
    return render(
        request,
        "target.html",
        user=user,
        name=name,
        target_type=target.target_type,
        fields=[
            *form_fields(kind.settings, target.model_dump(mode="json")),
            *form_fields(Target, target.model_dump(mode="json"), exclude={"target_type"}),
        ],
    )
