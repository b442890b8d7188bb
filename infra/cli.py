"""`talaria kafka ...`, `talaria topics ...` and `talaria up`."""

import time

import typer
from rich.console import Console
from rich.table import Table

from infra.admin import ensure_topics
from infra.settings import BrokerSettings, LogSettings, load
from infra.stack import local_broker, wait_for_shutdown_signal

console = Console()
kafka_app = typer.Typer(help="The local single-node Kafka broker.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics of this installation.", no_args_is_help=True)


@kafka_app.command("start")
def kafka_start() -> None:
    """Fetch (first time), format (first time) and start the broker in the background."""
    broker = local_broker(load(BrokerSettings))
    began = time.monotonic()
    broker.start()
    console.print(
        f"Kafka ready on {broker.layout.bootstrap} (pid {broker.pid()}) "
        f"in {time.monotonic() - began:.1f} s; data in {broker.layout.home}"
    )


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the broker cleanly."""
    broker = local_broker(load(BrokerSettings))
    console.print("Kafka stopped." if broker.stop() else "Kafka was not running.")


@kafka_app.command("status")
def kafka_status() -> None:
    """Say whether the broker runs; exit code 1 when it does not."""
    broker = local_broker(load(BrokerSettings))
    pid = broker.pid()
    if pid is None:
        console.print(f"Kafka is not running (data in {broker.layout.home}).")
        raise typer.Exit(1)
    console.print(f"Kafka is running on {broker.layout.bootstrap} (pid {pid}).")


@topics_app.command("ensure")
def topics_ensure(
    grow_partitions: bool = typer.Option(
        False, "--grow-partitions", help="Add partitions to topics that have fewer than needed."
    ),
) -> None:
    """Create missing topics and correct their settings; safe to run any number of times."""
    settings = load(LogSettings)
    reports = ensure_topics(settings, grow_partitions=grow_partitions)
    table = Table("topic", "partitions", "state")
    for report in reports:
        table.add_row(report.name, str(report.partitions), report.state.value)
    console.print(table)


def up() -> None:
    """Run the local stack in the foreground until Ctrl-C: the broker and the topics."""
    broker_settings = load(BrokerSettings)
    broker = local_broker(broker_settings)
    began = time.monotonic()
    broker.start()
    try:
        ensure_topics(load(LogSettings))
        console.print(
            f"Talaria is up in {time.monotonic() - began:.1f} s: Kafka on "
            f"{broker.layout.bootstrap}, data in {broker_settings.data_dir}. Ctrl-C stops it."
        )
        wait_for_shutdown_signal()
    finally:
        console.print("Stopping Kafka...")
        broker.stop()
