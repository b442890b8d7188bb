"""`talaria cleanup run`."""

import typer

from executors.cleanup.cleaner import CleanupSettings
from executors.cleanup.service import CleanupService
from infra.settings import load

cleanup_app = typer.Typer(help="Delete the blobs of done series after retention.")


@cleanup_app.command("run")
def cleanup_run(
    purge_failed: bool = typer.Option(
        False, "--purge-failed", help="Also purge the inputs of failed jobs (never pending ones)."
    ),
) -> None:
    """Sweep every interval until Ctrl-C or SIGTERM; run one cleaner per blob store."""
    settings = load(CleanupSettings)
    if purge_failed:
        settings = settings.model_copy(update={"cleanup_purge_failed": True})
    CleanupService(settings).run_until_signalled()
