from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import click
import typer

from app import contract
from shapcluster import console, jobs
from shapcluster.cli._errors import translate_errors
from shapcluster.cli.cluster import DEFAULT_CONFIG, ConfigOption
from shapcluster.config import load_cluster_config

_JOB = "Job options"
_RUN = "Where it runs"
_RUN_OPTIONS = ("cpus",)


def _print_log_line(line: str) -> None:
    console.say(line)


def _confirm_stop() -> bool:
    try:
        return typer.confirm("\nStop the job on the cluster? (no: it keeps running)", default=False)
    except click.exceptions.Abort:  # a second Ctrl-C: leave the job alone
        return False


def _parser(name: str) -> Callable[[str], Any]:
    """click's conversion of one job option: the contract's value, or a usage error (exit 2)."""

    def convert(text: str) -> Any:
        if not isinstance(text, str):  # click passes values it converted already
            return text
        try:
            return contract.parse_option(name, text)
        except contract.OptionError as err:
            raise typer.BadParameter(str(err)) from None

    return convert


def _option_parameter(name: str, spelling: str, *, hidden: bool = False) -> inspect.Parameter:
    """One typer option of ``submit`` from the contract's field ``name``."""
    f = contract.JobConfig.__dataclass_fields__[name]
    meta = f.metadata
    default = contract.default_of(f)
    panel = _RUN if name in _RUN_OPTIONS else _JOB
    if isinstance(default, bool):
        decls = f"{spelling}/--no-{name.replace('_', '-')}" if default else spelling
        info: Any = typer.Option(
            decls, help=meta["help"], rich_help_panel=panel, envvar=meta["envvar"], metavar=""
        )
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[bool, info]
        )
    names = contract.choices(name)
    info = typer.Option(
        spelling,
        parser=_parser(name),
        metavar=meta["metavar"] or ("[" + "|".join(names) + "]" if names else "TEXT"),
        help=f"Deprecated spelling of {contract.flag(name)}." if hidden else meta["help"],
        show_default=str(default) if default not in (None, ()) else False,  # shown as [default: (16)]
        envvar=None if hidden else meta["envvar"],
        rich_help_panel=panel,
        hidden=hidden,
    )
    param_name = spelling.lstrip("-").replace("-", "_") if hidden else name
    return inspect.Parameter(
        param_name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[str | None, info]
    )


def _submit_parameters() -> list[inspect.Parameter]:
    """``submit``'s signature: --local, --config, then every job option of the contract."""
    local = Annotated[
        bool,
        typer.Option(
            "--local", help="Run on a Ray instance on this machine.", rich_help_panel=_RUN, metavar=""
        ),
    ]
    params = [
        inspect.Parameter("local", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=local),
        inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_CONFIG, annotation=ConfigOption
        ),
    ]
    for f in contract.job_options():
        if f.metadata["toolkit"]:
            params.append(_option_parameter(f.name, contract.flag(f.name)))
            params += [_option_parameter(f.name, alias, hidden=True) for alias in f.metadata["aliases"]]
    return params


def _deprecated_aliases() -> dict[str, str]:
    """Parameter name of each deprecated spelling -> the field it sets (workers -> max_tasks)."""
    return {
        alias.lstrip("-").replace("-", "_"): f.name
        for f in contract.job_options()
        for alias in f.metadata["aliases"]
    }


def build_job(local: bool, options: dict[str, Any]) -> contract.JobConfig:
    """The JobConfig of ``submit``'s parsed options; a bad combination is a usage error (exit 2)."""
    values = dict(options)
    for alias, name in _deprecated_aliases().items():
        given = values.pop(alias, None)
        if given is not None:
            console.warn(f"{contract.flag(alias)} is deprecated; use {contract.flag(name)}")
            if values.get(name) is None:
                values[name] = given
    if values.get("cpus") is not None and not local:
        raise typer.BadParameter(
            "only applies with --local (a cluster's CPUs are set in its config)", param_hint="--cpus"
        )
    try:
        return contract.JobConfig(**{k: v for k, v in values.items() if v is not None})
    except contract.ConfigError as err:
        raise typer.BadParameter(str(err), param_hint=err.option) from None


def submit(local: bool, config: Any, **options: Any) -> None:
    """Run the SHAP job: train (or load --model), explain with our KernelSHAP and shap's side by side.

    On the cluster of --config unless --local. The log follows live; Ctrl-C stops the job or leaves it.

    Exit status: 0 match, 2 a bad option value, 3 bad input, 4 the explainers disagree, 6 a host is
    unreachable or Ray rejected the token, 7 the job failed, 8 it was stopped, 9 no cluster is up.
    """
    job = build_job(local, options)
    if local:
        jobs.run_local(job)
        return
    outcome = jobs.submit(
        load_cluster_config(config),
        job,
        on_log=_print_log_line,
        confirm_stop=_confirm_stop,
        progress=console.progress,
        warn=console.warn,
    )
    if outcome.detached:
        console.say(
            f"Job {outcome.job_id} keeps running. Follow it: shapcluster logs {outcome.job_id} --follow"
        )
    elif outcome.results_dir is not None:
        console.ok(f"job {outcome.job_id} succeeded; results: {outcome.results_dir}")
    else:
        console.ok(f"job {outcome.job_id} succeeded (it wrote no results)")


submit = translate_errors(submit)
_PARAMETERS = _submit_parameters()
submit.__signature__ = inspect.Signature(_PARAMETERS)  # type: ignore[attr-defined]
submit.__annotations__ = {p.name: p.annotation for p in _PARAMETERS}


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


@translate_errors
def list_jobs(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """The jobs submitted to the cluster: id, state, start, duration, command."""
    settings = load_cluster_config(config)
    rows = jobs.list_jobs(settings)
    console.print_table(
        f"Jobs on cluster {settings.name}",
        ("job", "state", "started", "duration", "command"),
        ((r.job_id, r.state, _when(r.start), _duration(r.seconds), r.entrypoint) for r in rows),
    )


@translate_errors
def logs(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job id (see `shapcluster jobs`).")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Print a cluster job's log (--follow: live, until it ends; Ctrl-C leaves it running)."""
    settings = load_cluster_config(config)
    try:
        info = jobs.job_logs(settings, job_id, follow=follow, on_log=_print_log_line)
    except KeyboardInterrupt:
        console.say(f"\nJob {job_id} keeps running.")
        return
    if follow:
        console.say(f"Job {job_id}: {info.status}")
