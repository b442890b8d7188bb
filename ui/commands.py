"""`talaria ui run`: the web UI and API (and, with embedded chDB, the projector) in one process."""

import typer
import uvicorn
from rich.console import Console

from infra.settings import load
from ui.main import create_app
from ui.services import FIRST_ADMIN, ensure_first_admin, open_services
from ui.settings import UiSettings

console = Console()
ui_app = typer.Typer(help="The web UI and JSON API.", no_args_is_help=True)


@ui_app.command("run")
def run(
    host: str | None = typer.Option(None, help="Address to listen on (TALARIA_UI_BIND)."),
    port: int | None = typer.Option(None, help="Port to listen on (TALARIA_UI_PORT)."),
) -> None:
    """Serve the UI until Ctrl-C; on a log without users, create the first admin."""
    settings = load(UiSettings)
    with open_services(settings) as services:
        password = ensure_first_admin(services)
        if password is not None:
            console.print(
                f"First run: log in as [bold]{FIRST_ADMIN}[/bold] with password "
                f"[bold]{password}[/bold] (shown once; you must change it at first login)."
            )
        uvicorn.run(
            create_app(services),
            host=host or settings.ui_bind,
            port=port or settings.ui_port,
            log_level="info",
        )
