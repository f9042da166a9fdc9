"""`shapcluster submit` (on the cluster, or locally with --local), `jobs`, `logs` and `stop`.

``submit``'s job options are generated from app/contract.py, the one definition the job's own
parser (``python -m app``) is built from too."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer

from app import contract
from shapcluster import console
from shapcluster.cli._errors import translate_errors
from shapcluster.cli.cluster import DEFAULT_CONFIG, ConfigOption, JsonOption
from shapcluster.config import load_cluster_config
from shapcluster.errors import InputError

if TYPE_CHECKING:
    from shapcluster.config import ClusterConfig
# shapcluster.jobs (Ray's client, SSH, pandas) is imported inside the commands: `--help` stays fast.

_JOB = "Job options"
_RUN = "Where it runs"
_RUN_OPTIONS = ("cpus",)


def _print_log_line(line: str) -> None:
    console.say(line, markup=False)


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
    wait = Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="--no-wait: print the job id once the cluster accepted the job, and how to follow it.",
            rich_help_panel=_RUN,
            metavar="",
        ),
    ]
    as_json = Annotated[
        bool,
        typer.Option(
            "--json",
            help="End with a JSON summary on stdout (the log goes to stderr).",
            rich_help_panel=_RUN,
            metavar="",
        ),
    ]
    params += [
        inspect.Parameter("wait", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=wait),
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=as_json),
    ]
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


def submit(local: bool, config: Path, wait: bool = True, as_json: bool = False, **options: Any) -> None:
    """Run the SHAP job: train (or load --model), explain with our KernelSHAP and shap's side by side.

    On the cluster of --config unless --local. The log follows live; Ctrl-C stops the job or leaves it.

    Exit status: 0 match, 2 a bad option value, 3 bad input, 4 the explainers disagree, 6 a host is
    unreachable or Ray rejected the token, 7 the job failed, 8 it was stopped, 9 no cluster is up.
    """
    from shapcluster import jobs

    job = build_job(local, options)
    if local:
        if not wait:
            raise typer.BadParameter(
                "applies to cluster jobs only (a local run ends with the command)", param_hint="--no-wait"
            )
        # With --json the job's own lines go to stderr, so stdout holds the JSON alone.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            summary = jobs.run_local(job)
        if as_json:
            comparison = summary.get("comparison") or {}
            console.print_json(
                {
                    "job_id": summary.get("run_id"),
                    "status": "SUCCEEDED",
                    "results_dir": str(Path(job.output_dir) / str(summary.get("run_id"))),
                    "detached": False,
                    "local": True,
                    "verdict": comparison.get("verdict"),
                }
            )
        return
    outcome = jobs.submit(
        _cluster_config(config),
        job,
        on_log=console.say_err if as_json else _print_log_line,
        confirm_stop=_confirm_stop,
        progress=console.say_err if as_json else console.progress,
        warn=console.warn,
        wait=wait,
    )
    if as_json:
        console.print_json({**dataclasses.asdict(outcome), "local": False})
    elif outcome.detached and not wait:
        console.ok(
            f"job {outcome.job_id} submitted. Follow it (and fetch its results when it ends): "
            f"shapcluster logs {outcome.job_id} --follow; stop it: shapcluster stop {outcome.job_id}"
        )
    elif outcome.detached:
        console.say(
            f"Job {outcome.job_id} keeps running. Follow it: shapcluster logs {outcome.job_id} --follow"
        )
    elif outcome.results_dir is not None:
        console.ok(f"job {outcome.job_id} succeeded; results: {outcome.results_dir}")
    else:
        console.ok(f"job {outcome.job_id} succeeded (it wrote no results)")


def _cluster_config(config: Path) -> ClusterConfig:
    """The cluster config; without one, the error also suggests `submit --local`."""
    try:
        return load_cluster_config(config)
    except InputError as err:
        if not err.message.startswith("config file not found"):
            raise
        hint = f"{err.hint} " if err.hint else ""
        raise InputError(
            err.message, hint=f"{hint}To run the job on this machine: shapcluster submit --local"
        ) from None


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
def list_jobs(config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False) -> None:
    """The jobs submitted to the cluster: id, state, start, duration, command."""
    from shapcluster import jobs

    settings = load_cluster_config(config)
    rows = jobs.list_jobs(settings)
    if as_json:
        console.print_json([dataclasses.asdict(r) for r in rows])
        return
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
    output_dir: Annotated[
        Path,
        typer.Option(
            envvar="SHAPCLUSTER_OUTPUT_DIR",
            help="With --follow: copy the ended job's results to OUTPUT_DIR/<job id>/.",
        ),
    ] = Path("results"),
) -> None:
    """Print a cluster job's log (--follow: live, until it ends, then fetch its results; Ctrl-C
    leaves it running)."""
    from shapcluster import jobs

    settings = load_cluster_config(config)
    try:
        info = jobs.job_logs(
            settings, job_id, follow=follow, on_log=_print_log_line, results_to=output_dir if follow else None
        )
    except KeyboardInterrupt:
        console.say(f"\nJob {job_id} keeps running.")
        return
    if follow:
        fetched = output_dir / job_id
        where = f"; results: {fetched}" if info.done and fetched.is_dir() else ""
        console.say(f"Job {job_id}: {info.status}{where}")


@translate_errors
def stop(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job id (see `shapcluster jobs`).")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Stop a cluster job and wait until Ray says it ended (a job that ended already is left alone).

    Exit status: 0 stopped or already ended, 3 no such job, 6 the stop did not land, 9 no cluster is up."""
    from shapcluster import jobs

    info = jobs.stop_job(load_cluster_config(config), job_id)
    console.ok(f"job {job_id}: {info.status}")
