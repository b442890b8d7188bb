"""`talaria config apply|import-mercure` and `talaria streams run`."""

import getpass
import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from infra.log import EventProducer
from infra.settings import LogSettings, load
from streams.config import (
    ConfigDocument,
    ConfigInvalid,
    changes,
    from_mercure,
    parse_document,
    validate,
)
from streams.view import read_configuration
from streams.worker import StreamsSettings
from streams.worker import run as run_worker

console = Console()
config_app = typer.Typer(
    help="Routing configuration: rules, targets, modules.", no_args_is_help=True
)
streams_app = typer.Typer(
    help="The streams worker: completion and decisions.", no_args_is_help=True
)

ACTOR = typer.Option(None, "--actor", help="Who makes the change (default: the login name).")


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ConfigInvalid(f"cannot read {path}: {error}") from error


def _publish(document: ConfigDocument, *, actor: str | None) -> None:
    settings = load(LogSettings)
    current = read_configuration(settings)
    validate(document, current)
    events = changes(document, current, actor=actor or getpass.getuser(), source="cli")
    with EventProducer(settings, client_id="talaria-config") as producer:
        producer.publish_all(events)
    for event in events:
        console.print(f"{event.type} {event.subject}")
    console.print(f"{len(events)} change(s) published.")


@config_app.command("apply")
def apply(
    path: Annotated[Path, typer.Argument(help="YAML or JSON: rules, targets, modules, settings.")],
    actor: str | None = ACTOR,
) -> None:
    """Validate a configuration file and publish what it changes as config events."""
    _publish(parse_document(_read(path)), actor=actor)


@config_app.command("import-mercure")
def import_mercure(
    path: Annotated[Path, typer.Argument(help="mercure's mercure.json.")],
    actor: str | None = ACTOR,
) -> None:
    """Convert a mercure configuration (rules, targets, modules, timeouts) into config events."""
    document, notes = from_mercure(_read(path))
    for note in notes:
        console.print(f"note: {note}")
    _publish(document, actor=actor)


@streams_app.command("run")
def run() -> None:
    """Run a streams worker until Ctrl-C or SIGTERM; several workers share the partitions."""
    run_worker(load(StreamsSettings), name=f"{socket.gethostname()}-{os.getpid()}")
