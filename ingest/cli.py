"""`talaria ingest run` (the DICOM receiver) and `talaria ingest import FOLDER`."""

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infra.settings import load
from ingest.batch import receive_one
from ingest.intake import Origin
from ingest.service import open_intake, run_until_signalled
from ingest.settings import IngestSettings
from ingest.workers import run_workers

console = Console()
ingest_app = typer.Typer(help="The DICOM receiver and other intake.", no_args_is_help=True)


@ingest_app.command("run")
def run() -> None:
    """Receive DICOM (C-STORE, C-ECHO) until Ctrl-C or SIGTERM; /metrics alongside."""
    settings = load(IngestSettings)
    if settings.dicom_workers == 1:
        run_until_signalled(settings)
        return
    raise typer.Exit(code=run_workers(settings))


@ingest_app.command("import")
def import_folder(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder to import.")],
) -> None:
    """Import every DICOM file under FOLDER, as if it had been sent; others are counted."""
    paths = sorted(path for path in folder.rglob("*") if path.is_file())
    origin = Origin(intake="import")
    statuses: Counter[int] = Counter()
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with open_intake(load(IngestSettings)) as intake, Progress(*columns, console=console) as bar:
        task = bar.add_task("import", total=len(paths))
        for path in paths:
            statuses[receive_one(intake, path.read_bytes(), origin).status] += 1
            bar.advance(task)
    refused = ", ".join(f"{n} with 0x{status:04X}" for status, n in statuses.items() if status)
    console.print(
        f"Imported {statuses[0]} of {len(paths)} files"
        + (f"; refused {refused}" if refused else "")
        + "."
    )
    if statuses[0] < len(paths):
        raise typer.Exit(code=1)
