"""Server-rendered pages: Jinja2 with autoescaping, so tag values (attacker-controlled) are text."""

import json
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ui.deps import get_session
from ui.users import Role, User

HERE = Path(__file__).parent
templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
)
templates.env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, sort_keys=True)


def render(
    request: Request,
    template: str,
    *,
    user: User | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page with the user, their role and the session's CSRF token in its context."""
    return templates.TemplateResponse(
        request,
        template,
        {
            "user": user,
            "can_act": user is not None and user.role is Role.ADMIN,
            "csrf_token": get_session(request).csrf,
            **context,
        },
        status_code=status_code,
    )
