from __future__ import annotations

from typing import Annotated

import typer

from shapcluster import __version__, console
from shapcluster.cli import cluster, creds, job, serve
from shapcluster.cli._errors import set_debug
from shapcluster.cli._help import fold_long_words, hide_flag_types

fold_long_words()
hide_flag_types()

app = typer.Typer(
    name="shapcluster",
    help=(
        "Turn a few Linux machines reachable over SSH into a Ray cluster and explain model "
        "predictions on it with exact distributed KernelSHAP, checked against shap.KernelExplainer."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        console.say(f"shapcluster {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="SHAPCLUSTER_DEBUG", help="Show tracebacks and debug logs.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    set_debug(debug)
    console.setup_logging(debug=debug)


app.command("submit")(job.submit)
app.command("jobs")(job.list_jobs)
app.command("logs")(job.logs)
app.command("stop")(job.stop)
for name, command in cluster.COMMANDS.items():
    app.command(name)(command)
app.add_typer(creds.app, name="creds")
app.add_typer(serve.app, name="serve")
