"""`shapcluster submit` (on the cluster, or locally with --local), `jobs` and `logs`."""

from __future__ import annotations

from argparse import ArgumentTypeError
from datetime import datetime
from typing import Annotated

import click
import typer

from app.config import parse_nsamples, parse_sweep
from app.kernel_shap import Link
from shapcluster import console, jobs
from shapcluster.cli._errors import translate_errors
from shapcluster.cli.cluster import DEFAULT_CONFIG, ConfigOption
from shapcluster.config import load_cluster_config
from shapcluster.errors import InputError

_JOB = "Job options"
_RUN = "Where it runs"


def _nsamples(value: str | None) -> int | str | None:
    try:
        return None if value is None else parse_nsamples(value)
    except ArgumentTypeError as err:
        raise typer.BadParameter(str(err), param_hint="--nsamples") from None


def _sweep(value: str | None) -> tuple[int, ...]:
    try:
        return parse_sweep(value) if value else ()
    except ArgumentTypeError as err:
        raise typer.BadParameter(str(err), param_hint="--sweep") from None


def _print_log_line(line: str) -> None:
    console.say(line, markup=False)


def _confirm_stop() -> bool:
    try:
        return typer.confirm("\nStop the job on the cluster? (no: it keeps running)", default=False)
    except click.exceptions.Abort:  # a second Ctrl-C: leave the job alone
        return False


@translate_errors
def submit(
    local: Annotated[
        bool, typer.Option("--local", help="Run on a Ray instance on this machine.", rich_help_panel=_RUN)
    ] = False,
    cpus: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPUs of the local Ray instance (default: all); only with --local.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    data: Annotated[
        str | None,
        typer.Option(
            envvar="SHAPCLUSTER_DATA",
            help="CSV to train on: a path, s3://bucket/key or https:// URL "
            "(default: data/winequality-red.csv, else scikit-learn's bundled wine data).",
            rich_help_panel=_JOB,
        ),
    ] = None,
    label: Annotated[str, typer.Option(help="Label column.", rich_help_panel=_JOB)] = "quality",
    rows: Annotated[int, typer.Option(min=1, help="Test rows to explain.", rich_help_panel=_JOB)] = 16,
    background: Annotated[
        int,
        typer.Option(min=1, help="Background rows (seeded sample of training rows).", rich_help_panel=_JOB),
    ] = 100,
    nsamples: Annotated[
        str | None,
        typer.Option(
            help="Coalitions per row; 'exact' enumerates all 2^M-2 (default: shap's 2M+2048, "
            "which is exact for M <= 11).",
            rich_help_panel=_JOB,
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Rows per Ray task (default: balanced).", rich_help_panel=_JOB)
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Ray tasks at once (default: all CPUs).", rich_help_panel=_JOB)
    ] = None,
    trees: Annotated[int, typer.Option(min=1, help="Trees in the forest.", rich_help_panel=_JOB)] = 100,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="Train these forest sizes in parallel, e.g. 50,100,200; keep the best.", rich_help_panel=_JOB
        ),
    ] = None,
    test_size: Annotated[float, typer.Option(help="Held-out fraction.", rich_help_panel=_JOB)] = 0.2,
    seed: Annotated[
        int, typer.Option(help="Seed for split, forest, background, sampling.", rich_help_panel=_JOB)
    ] = 0,
    tolerance: Annotated[
        float, typer.Option(help="Largest allowed |ours - shap| and additivity error.", rich_help_panel=_JOB)
    ] = 1e-6,
    link: Annotated[
        Link, typer.Option(help="Link function of the explanation.", rich_help_panel=_JOB)
    ] = Link.IDENTITY,
    reference: Annotated[
        bool,
        typer.Option(
            "--reference/--no-reference",
            help="Also run shap.KernelExplainer and compare (--no-reference: ours only, for benchmarks).",
            rich_help_panel=_JOB,
        ),
    ] = True,
    output_dir: Annotated[
        str,
        typer.Option(
            envvar="SHAPCLUSTER_OUTPUT_DIR",
            help="Results go to OUTPUT_DIR/<run-id>/ (from a cluster: copied there when the job ends).",
            rich_help_panel=_JOB,
        ),
    ] = "results",
    run_id: Annotated[
        str | None,
        typer.Option(
            help="Results folder name, and the job id on a cluster (default: time-based).",
            rich_help_panel=_JOB,
        ),
    ] = None,
) -> None:
    """Run the SHAP job: train, explain with our KernelSHAP and shap's side by side, compare.

    On the cluster of --config unless --local. The log follows live; Ctrl-C stops the job or leaves it.

    Exit status: 0 match, 3 bad input, 4 the explainers disagree, 6 a host is unreachable
    or Ray rejected the token, 7 the job failed, 8 it was stopped, 9 no cluster is up.
    """
    if run_id is not None and ("/" in run_id or run_id in {"", ".", ".."}):
        raise InputError(f"--run-id {run_id!r} must be a plain folder name.")
    if cpus is not None and not local:
        raise typer.BadParameter(
            "only applies with --local (a cluster's CPUs are set in its config)", param_hint="--cpus"
        )
    job = jobs.build_job_config(
        data=data,
        label=label,
        rows=rows,
        background=background,
        nsamples=_nsamples(nsamples),
        batch_size=batch_size,
        workers=workers,
        trees=trees,
        sweep=_sweep(sweep),
        test_size=test_size,
        seed=seed,
        tolerance=tolerance,
        link=link,
        reference=reference,
        output_dir=output_dir,
        run_id=run_id,
        cpus=cpus,
    )
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
