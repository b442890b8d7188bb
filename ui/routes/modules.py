"""Processing modules: CRUD as config events; settings as validated JSON, limits and flags."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import Field

from streams.config import Module
from ui import config_edit
from ui.config_edit import MODULES, ConfigName
from ui.deps import Admin, ServicesDep, Viewer
from ui.forms import form_fields
from ui.pages import render

router = APIRouter()


class ModuleCreate(Module):
    name: str = Field(pattern=config_edit.NAME_PATTERN)


class ModulePublic(Module):
    name: str


def _public(name: str, module: Module) -> ModulePublic:
    return ModulePublic(name=name, **module.model_dump())


@router.get("/api/modules", tags=["modules"])
def list_modules(services: ServicesDep, _user: Viewer) -> list[ModulePublic]:
    return [_public(name, module) for name, module in services.view.config.modules.items()]


@router.get("/api/modules/{name}", tags=["modules"])
def read_module(name: ConfigName, services: ServicesDep, _user: Viewer) -> ModulePublic:
    return _public(name, config_edit.entry_or_404(services, MODULES, name))


@router.post("/api/modules", status_code=201, tags=["modules"])
def create_module(body: ModuleCreate, services: ServicesDep, user: Admin) -> ModulePublic:
    """Publish `ModuleSaved` for a new module."""
    module = Module.model_validate(body.model_dump(exclude={"name"}))
    config_edit.save(services, MODULES, name=body.name, entry=module, user=user, creating=True)
    return _public(body.name, module)


@router.put("/api/modules/{name}", tags=["modules"])
def update_module(
    name: ConfigName, body: Module, services: ServicesDep, user: Admin
) -> ModulePublic:
    config_edit.save(services, MODULES, name=name, entry=body, user=user, creating=False)
    return _public(name, body)


@router.delete("/api/modules/{name}", status_code=204, tags=["modules"])
def delete_module(name: ConfigName, services: ServicesDep, user: Admin) -> None:
    config_edit.delete(services, MODULES, name=name, user=user)


@router.get("/modules", response_class=HTMLResponse, include_in_schema=False)
def modules_page(request: Request, services: ServicesDep, user: Viewer) -> HTMLResponse:
    return render(request, "modules.html", user=user, modules=services.view.config.modules)


@router.get("/modules/new", response_class=HTMLResponse, include_in_schema=False)
def new_module_page(request: Request, user: Viewer) -> HTMLResponse:
    return render(request, "module.html", user=user, name=None, fields=form_fields(Module))


@router.get("/modules/{name}", response_class=HTMLResponse, include_in_schema=False)
def module_page(
    request: Request, name: ConfigName, services: ServicesDep, user: Viewer
) -> HTMLResponse:
    module: Module = config_edit.entry_or_404(services, MODULES, name)
    fields = form_fields(Module, module.model_dump(mode="json"))
    return render(request, "module.html", user=user, name=name, fields=fields)
