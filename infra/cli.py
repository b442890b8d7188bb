"""`talaria kafka ...`, `talaria topics ...` and `talaria up`."""

import os
import signal
import time

import typer
from rich.console import Console
from rich.table import Table

from infra.admin import ensure_topics
from infra.settings import BrokerSettings, LogSettings, load
from infra.stack import docker_answers, local_broker, service_specs
from infra.supervisor import Supervisor, read_states

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
    """Run the whole local stack in the foreground until Ctrl-C or SIGTERM."""
    broker_settings = load(BrokerSettings)
    log_settings = load(LogSettings)
    external = "kafka_bootstrap" in log_settings.model_fields_set
    broker = None if external else local_broker(broker_settings)
    began = time.monotonic()
    environment = dict(os.environ)
    if broker is not None:
        broker.start()
        # The services reach the broker this command started, on whatever port it was given.
        environment["TALARIA_KAFKA_BOOTSTRAP"] = broker.layout.bootstrap
        log_settings = log_settings.model_copy(update={"kafka_bootstrap": broker.layout.bootstrap})
    try:
        ensure_topics(log_settings)
        with_processor = docker_answers()
        if not with_processor:
            console.print("No Docker engine answers: processing modules will not run.")
        supervisor = Supervisor(
            service_specs(with_processor=with_processor),
            run_dir=broker_settings.data_dir / "run",
            env=environment,
        )
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: supervisor.stop_requested.set())
        console.print(
            f"Talaria is up in {time.monotonic() - began:.1f} s: Kafka on "
            f"{log_settings.kafka_bootstrap}, data in {broker_settings.data_dir}, "
            f"service logs in {broker_settings.data_dir / 'run'}. Ctrl-C stops it."
        )
        supervisor.run()
    finally:
        if broker is not None:
            console.print("Stopping Kafka...")
            broker.stop()


def status() -> None:
    """Show the broker and each service of the local stack; exit code 1 if any is down."""
    settings = load(BrokerSettings)
    table = Table("service", "state", "pid", "restarts", "last exit")
    pid = local_broker(settings).pid()
    healthy = pid is not None
    table.add_row("kafka", "running" if pid else "stopped", str(pid or ""), "", "")
    for state in read_states(settings.data_dir / "run"):
        healthy = healthy and state.state == "running"
        table.add_row(
            state.name,
            state.state,
            str(state.pid or ""),
            str(state.restarts),
            "" if state.last_exit is None else str(state.last_exit),
        )
    console.print(table)
    if not healthy:
        raise typer.Exit(1)
