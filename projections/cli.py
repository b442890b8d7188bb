"""`talaria projections run|rebuild` and `talaria sql "SELECT ..."`."""

import typer
from rich.console import Console
from rich.progress import Progress as ProgressBar
from rich.table import Table

from infra.log import EventProducer
from infra.settings import load
from infra.stack import wait_for_shutdown_signal
from projections.projector import Projector
from projections.rebuild import rebuild
from projections.settings import ProjectionSettings
from projections.store import ClickHouse

console = Console()
projections_app = typer.Typer(
    help="ClickHouse read models derived from the log.", no_args_is_help=True
)


def _open(settings: ProjectionSettings) -> ClickHouse:
    store = ClickHouse.open(settings.clickhouse())
    store.migrate()
    return store


@projections_app.command("run")
def projections_run() -> None:
    """Run the projector in the foreground until Ctrl-C (for a ClickHouse server install)."""
    settings = load(ProjectionSettings)
    store = _open(settings)
    with EventProducer(settings, client_id="projector") as producer:
        projector = Projector(
            settings,
            store=store,
            producer=producer,
            batch=settings.projector_batch,
            cache_rows=settings.projector_cache_rows,
        )
        projector.start()
        console.print(f"Projecting the log into {store.target.describe()}. Ctrl-C stops it.")
        try:
            wait_for_shutdown_signal()
        finally:
            projector.stop()


@projections_app.command("rebuild")
def projections_rebuild() -> None:
    """Replay the log from the beginning into fresh tables, then swap them in."""
    settings = load(ProjectionSettings)
    store = _open(settings)
    with (
        EventProducer(settings, client_id="projections-rebuild") as producer,
        ProgressBar(console=console) as bar,
    ):
        task = bar.add_task("Replaying the log", total=None)
        report = rebuild(
            settings,
            store=store,
            producer=producer,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            batch=settings.projector_batch,
        )
    console.print(
        f"Rebuilt generation {report.generation} from {report.events} events "
        f"in {report.seconds:.1f} s."
    )


def sql(query: str = typer.Argument(..., help="One read-only SQL statement.")) -> None:
    """Run a read-only SQL query on the projections (writes are refused)."""
    result = _open(load(ProjectionSettings)).analytics(query)
    table = Table(*result.columns)
    for row in result.rows:
        table.add_row(*(str(value) for value in row))
    console.print(table)
