"""`shapcluster creds ...`: temporary AWS credentials for the cluster."""

from __future__ import annotations

import typer

from shapcluster.cli._errors import translate_errors
from shapcluster.errors import NotImplementedYetError

app = typer.Typer(
    help="Temporary AWS credentials (STS assume-role) for the cluster's containers.", no_args_is_help=True
)


@app.command()
@translate_errors
def refresh() -> None:
    """Assume the configured IAM role and write fresh credentials to every host."""
    raise NotImplementedYetError(
        "`shapcluster creds refresh` is not built yet.",
        hint="Meanwhile the job reads s3:// data with your own AWS environment: shapcluster submit --local",
    )
