"""`talaria dispatch run` and `talaria dispatch test TARGET`."""

import typer
from rich.console import Console

from executors.dispatch.dispatcher import DispatchSettings
from executors.dispatch.service import run
from executors.dispatch.targets import open_target
from infra.settings import load
from streams.view import read_configuration

console = Console()
dispatch_app = typer.Typer(help="Deliver series to their targets.", no_args_is_help=True)


@dispatch_app.command("run")
def dispatch_run() -> None:
    """Run a dispatcher until Ctrl-C; run several to share the work."""
    run(load(DispatchSettings))


@dispatch_app.command("test")
def dispatch_test(name: str = typer.Argument(help="The target's name.")) -> None:
    """Check that a configured target answers (C-ECHO, HEAD bucket, ...); exit 1 if not."""
    settings = load(DispatchSettings)
    target = read_configuration(settings).targets.get(name)
    if target is None:
        console.print(f"talaria: no target named {name!r}", style="red")
        raise typer.Exit(1)
    console.print(open_target(target.model_dump()).test())
