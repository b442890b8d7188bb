"""The `talaria` command line: one entry point, a sub-command group per part of the system."""

import sys

import typer

from executors.cleanup.cli import cleanup_app
from executors.dispatch.cli import dispatch_app
from executors.notify.cli import notify_app
from executors.processing.cli import process_app
from executors.query.cli import query_app
from infra.cli import kafka_app, status, topics_app, up
from infra.errors import TalariaError
from infra.logs import configure_logging
from ingest.cli import ingest_app
from projections.cli import projections_app, sql
from streams.cli import config_app, streams_app
from ui.commands import ui_app

app = typer.Typer(
    name="talaria",
    help="Talaria: DICOM router and processing orchestrator on an event log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")
app.add_typer(ingest_app, name="ingest")
app.add_typer(dispatch_app, name="dispatch")
app.add_typer(process_app, name="process")
app.add_typer(notify_app, name="notify")
app.add_typer(cleanup_app, name="cleanup")
app.add_typer(query_app, name="query")
app.command("up")(up)
app.command("status")(status)
app.add_typer(projections_app, name="projections")
app.command("sql")(sql)
app.add_typer(config_app, name="config")
app.add_typer(streams_app, name="streams")
app.add_typer(ui_app, name="ui")


def main() -> None:
    """Run the CLI; a Talaria error becomes one sentence on stderr and exit code 1."""
    configure_logging()
    try:
        app()
    except TalariaError as error:
        print(f"talaria: {error}", file=sys.stderr)  # noqa: T201 - the CLI's own error output
        sys.exit(1)
