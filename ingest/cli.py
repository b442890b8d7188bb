"""`talaria ingest run` (the DICOM receiver) and `talaria ingest import FOLDER`."""

import asyncio
import ctypes
import multiprocessing
import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infra.settings import load
from ingest.batch import receive_one
from ingest.intake import Origin
from ingest.service import open_intake, serve
from ingest.settings import IngestSettings

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
console = Console()
ingest_app = typer.Typer(help="The DICOM receiver and other intake.", no_args_is_help=True)


@ingest_app.command("run")
def run() -> None:
    """Receive DICOM (C-STORE, C-ECHO) until Ctrl-C or SIGTERM; /metrics alongside."""
    settings = load(IngestSettings)
    if settings.dicom_workers == 1:
        asyncio.run(_serve_until_signalled(settings))
        return
    raise typer.Exit(code=run_workers(settings))


def run_workers(settings: IngestSettings) -> int:
    """`dicom_workers` receiver processes on one port until SIGINT/SIGTERM or one fails; the
    exit code is 0 only if every worker stopped cleanly."""
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    workers = [
        context.Process(
            target=_serve_worker, args=(settings.for_worker(n), os.getpid()), name=f"receiver-{n}"
        )
        for n in range(settings.dicom_workers)
    ]
    for worker in workers:
        worker.start()
    while not stop.wait(0.5):
        if any(worker.exitcode is not None for worker in workers):
            console.print("A receiver worker stopped; stopping the others.")
            break
    for worker in workers:
        if worker.exitcode is None and worker.pid is not None:
            os.kill(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.join()
    return 0 if all(worker.exitcode == 0 for worker in workers) else 1


def _serve_worker(settings: IngestSettings, parent_pid: int) -> None:
    # A worker must not outlive a parent killed with SIGKILL (it would keep the port).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        return  # the parent died before the request took effect
    asyncio.run(_serve_until_signalled(settings))


async def _serve_until_signalled(settings: IngestSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(settings, stop=stop)


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
