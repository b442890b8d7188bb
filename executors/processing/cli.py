"""`talaria process run`: the processor service until Ctrl-C or SIGTERM."""

import typer

from executors.processing.processor import processor_service
from executors.processing.settings import ProcessorSettings
from infra.settings import load

process_app = typer.Typer(help="Processing modules (mercure-compatible containers).")


@process_app.command("run")
def run() -> None:
    """Run processing jobs from the lanes until Ctrl-C or SIGTERM; several processors share them."""
    processor_service(load(ProcessorSettings)).run_until_signalled()
