"""`shapcluster creds ...`: temporary AWS credentials for the cluster."""

from __future__ import annotations

import typer

from shapcluster import console
from shapcluster.cli._errors import translate_errors
from shapcluster.cli.cluster import DEFAULT_CONFIG, ConfigOption
from shapcluster.config import load_cluster_config

app = typer.Typer(
    help="Temporary AWS credentials (STS assume-role) for the cluster's containers.", no_args_is_help=True
)


@app.command()
@translate_errors
def refresh(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Assume the configured IAM role and write fresh credentials to every host.

    Running containers pick the new keys up at their next S3 read; nothing restarts."""
    from shapcluster import cluster, creds  # boto3 and SSH only when the command runs
    from shapcluster.steps import RoleCredentialSteps, utc_now

    settings = load_cluster_config(config)
    role_arn = creds.resolve_role_arn(settings.aws, required=True)
    assert role_arn is not None  # required=True raises instead
    steps = RoleCredentialSteps(settings, role_arn)
    console.progress(f"Assuming {role_arn} (session {settings.aws.session_name})")
    # Ask STS before touching any host: a refused role changes nothing anywhere.
    fresh = steps.assume_role()
    with cluster.open_nodes(settings) as nodes:
        steps.refresh(nodes, console.progress, fresh)
        hosts = len(nodes)
    console.ok(
        f"credentials for {role_arn} on {hosts} host(s); "
        f"they expire {creds.describe_expiry(fresh.expiration, utc_now())}"
    )
