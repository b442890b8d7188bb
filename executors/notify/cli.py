"""`talaria notify run`."""

import typer

from executors.notify.notifier import NotifySettings
from executors.notify.service import notify_service
from infra.settings import load

notify_app = typer.Typer(help="Send rules' webhooks and emails.", no_args_is_help=True)


@notify_app.command("run")
def notify_run() -> None:
    """Send notifications from the lanes until Ctrl-C or SIGTERM; several notifiers share them."""
    notify_service(load(NotifySettings)).run_until_signalled()
