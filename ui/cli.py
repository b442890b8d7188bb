"""The `talaria` command line: one entry point, a sub-command group per part of the system."""

import sys

import typer

from infra.cli import kafka_app, topics_app, up
from infra.errors import TalariaError

app = typer.Typer(
    name="talaria",
    help="Talaria: DICOM router and processing orchestrator on an event log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")
app.command("up")(up)


def main() -> None:
    """Run the CLI; a Talaria error becomes one sentence on stderr and exit code 1."""
    try:
        app()
    except TalariaError as error:
        print(f"talaria: {error}", file=sys.stderr)  # noqa: T201 - the CLI's own error output
        sys.exit(1)
