"""`shapcluster submit`: run the SHAP job (locally with --local)."""

from __future__ import annotations

from argparse import ArgumentTypeError
from typing import Annotated

import typer

from app.config import parse_nsamples, parse_sweep
from app.kernel_shap import Link
from shapcluster import jobs
from shapcluster.cli._errors import translate_errors
from shapcluster.errors import InputError, NotImplementedYetError

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


@translate_errors
def submit(
    local: Annotated[
        bool, typer.Option("--local", help="Run on a Ray instance on this machine.", rich_help_panel=_RUN)
    ] = False,
    cpus: Annotated[
        int | None,
        typer.Option(min=1, help="CPUs of the local Ray instance (default: all).", rich_help_panel=_RUN),
    ] = None,
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
    output_dir: Annotated[
        str,
        typer.Option(
            envvar="SHAPCLUSTER_OUTPUT_DIR", help="Results go to OUTPUT_DIR/<run-id>/.", rich_help_panel=_JOB
        ),
    ] = "results",
    run_id: Annotated[
        str | None, typer.Option(help="Results folder name (default: time-based).", rich_help_panel=_JOB)
    ] = None,
) -> None:
    """Run the SHAP job: train, explain with our KernelSHAP and shap's side by side, compare.

    Exit status: 0 match, 3 bad input, 4 the explainers disagree.
    """
    if run_id is not None and ("/" in run_id or run_id in {"", ".", ".."}):
        raise InputError(f"--run-id {run_id!r} must be a plain folder name.")
    config = jobs.build_job_config(
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
        output_dir=output_dir,
        run_id=run_id,
        cpus=cpus,
    )
    if not local:
        raise NotImplementedYetError(
            "Submitting to a cluster is not built yet.",
            hint="Run the same job on this machine: shapcluster submit --local",
        )
    jobs.run_local(config)
