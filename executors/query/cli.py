"""`talaria query ...`: run the query worker, submit jobs and follow them with a progress bar."""

import getpass
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from executors.query import jobs
from executors.query.history import JobState, QueryLog
from executors.query.service import query_service
from executors.query.worker import QuerySettings
from infra.log import EventProducer
from infra.settings import LogSettings, load
from infra.topics import Lane
from streams.view import read_configuration

console = Console()
query_app = typer.Typer(
    help="Retrieve studies by accession number from PACS, DICOMweb servers and folders.",
    no_args_is_help=True,
)


@query_app.command("run")
def query_run() -> None:
    """Run query jobs from the lanes until Ctrl-C or SIGTERM; several workers share them."""
    query_service(load(QuerySettings)).run_until_signalled()


@query_app.command("submit")
def query_submit(
    source: Annotated[str, typer.Option("--source", help="A target with direction query or both.")],
    accessions: Annotated[list[str] | None, typer.Argument(help="Accession numbers.")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="A file of accession numbers, one per line.", exists=True),
    ] = None,
    study_description: Annotated[
        str, typer.Option(help="Only studies matching (wildcards * ?).")
    ] = "",
    series_description: Annotated[
        str, typer.Option(help="Only series matching (wildcards * ?).")
    ] = "",
    forced_rule: Annotated[str, typer.Option(help="Route what is retrieved by this rule.")] = "",
    destination: Annotated[
        str, typer.Option(help="A folder target to write to instead of Talaria's intake.")
    ] = "",
    offpeak: Annotated[bool, typer.Option(help="Run in the off-peak window only.")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the job to its end.")] = True,
) -> None:
    """Submit a job; with --wait (the default) show its progress until it completes."""
    settings = load(LogSettings)
    wanted = list(accessions or [])
    if file is not None:
        wanted += jobs.parse_accessions(file.read_text(encoding="utf-8", errors="replace"))
    config = read_configuration(settings)
    target = config.targets.get(source)
    folder = config.targets.get(destination) if destination else None
    if forced_rule and forced_rule not in config.rules:
        raise jobs.QueryRequestInvalid(f"no rule named {forced_rule!r}")
    with EventProducer(settings, client_id="talaria-query") as producer:
        job_id = jobs.submit(
            producer,
            source=source,
            source_config=None if target is None else target.model_dump(),
            accessions=jobs.parse_accessions(" ".join(wanted)),
            actor=getpass.getuser(),
            study_description=study_description,
            series_description=series_description,
            forced_rule=forced_rule,
            lane=Lane.OFFPEAK if offpeak else Lane.NORMAL,
            destination=destination,
            destination_config=None if folder is None else folder.model_dump(),
        )
    console.print(f"query job {job_id} submitted")
    if wait:
        _follow(settings, job_id)


@query_app.command("status")
def query_status(
    job_id: Annotated[str | None, typer.Argument(help="A job; all jobs when left out.")] = None,
    follow: Annotated[bool, typer.Option(help="Show a progress bar until it ends.")] = False,
) -> None:
    """Show a job's accessions (or every job); exit 1 when the job does not exist."""
    settings = load(LogSettings)
    if follow and job_id:
        _follow(settings, job_id)
        return
    with QueryLog(settings) as history:
        found = history.refresh()
    if job_id is None:
        table = Table("job", "source", "status", "retrieved", "not found", "failed", "total")
        for job in found.values():
            table.add_row(
                job.job_id,
                job.submitted.source,
                job.status,
                str(job.count("retrieved")),
                str(job.count("not_found")),
                str(job.count("failed")),
                str(len(job.accessions)),
            )
        console.print(table)
        return
    job = _job(found, job_id)
    console.print(f"job {job.job_id} from {job.submitted.source}: {job.status} (run {job.run})")
    table = Table("accession", "status", "failed attempts", "instances", "reason")
    for state in job.accessions.values():
        table.add_row(
            state.accession, state.status, str(state.attempts), str(state.instances), state.reason
        )
    console.print(table)


@query_app.command("pause")
def query_pause(job_id: str) -> None:
    """Start no further accession of a running job."""
    _change(job_id, jobs.pause)


@query_app.command("resume")
def query_resume(job_id: str) -> None:
    """Go on with a paused job."""
    _change(job_id, jobs.resume)


@query_app.command("retry")
def query_retry(job_id: str) -> None:
    """Try the failed and not-found accessions of a completed job again."""
    _change(job_id, jobs.retry)


def _change(job_id: str, action: jobs.Change) -> None:
    settings = load(LogSettings)
    with QueryLog(settings) as history:
        job = _job(history.refresh(), job_id)
    with EventProducer(settings, client_id="talaria-query") as producer:
        action(producer, job, actor=getpass.getuser())
    console.print(f"query job {job_id}: done")


def _job(found: dict[str, JobState], job_id: str) -> JobState:
    job = found.get(job_id)
    if job is None:
        raise jobs.QueryRequestInvalid(f"no query job {job_id}")
    return job


def _follow(settings: LogSettings, job_id: str) -> None:
    """A progress bar of settled accessions until the job completes or pauses; exit code 2
    when some accessions were not retrieved."""
    with (
        QueryLog(settings) as history,
        Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress,
    ):
        task = progress.add_task("retrieving", total=None)
        while True:
            job = history.refresh().get(job_id)
            if job is not None:
                done = sum(1 for state in job.accessions.values() if state.settled(job.run))
                progress.update(
                    task,
                    total=len(job.accessions),
                    completed=done,
                    description=f"{job.count('retrieved')} retrieved, "
                    f"{job.count('not_found')} not found, {job.count('failed')} failed",
                )
                if job.status != "running":
                    break
            time.sleep(0.5)
    console.print(f"query job {job_id}: {job.status}")
    for state in job.accessions.values():
        if state.status in ("not_found", "failed"):
            console.print(f"  {state.accession}: {state.status} ({state.reason})")
    if job.count("not_found", "failed"):
        raise typer.Exit(2)
