"""Cluster life-cycle commands: thin wrappers that load the config and call shapcluster.cluster."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shapcluster import console, project
from shapcluster.cli._errors import translate_errors
from shapcluster.config import ClusterConfig, load_cluster_config

if TYPE_CHECKING:
    from shapcluster import cluster

# The core modules that import docker, fabric/paramiko or boto3 are imported inside the commands:
# `--help` and tab completion then load none of them (tests/unit/test_cli_speed.py).

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="SHAPCLUSTER_CONFIG",
        help="Cluster config (see inventory/shapcluster.toml.example).",
    ),
]  # fmt: skip
DEFAULT_CONFIG = Path("shapcluster.toml")


@translate_errors
def up(
    config: ConfigOption = DEFAULT_CONFIG,
    wheelhouse: Annotated[
        Path | None,
        typer.Option(
            envvar="SHAPCLUSTER_WHEELHOUSE",
            help="Air-gapped build: a folder of cp311 wheels for the context's requirements.txt "
            "(default: <context>/wheels; if it has none and PyPI is reachable, `up` downloads them "
            "once into ~/.cache/shapcluster).",
        ),
    ] = None,
    context: Annotated[
        Path | None,
        typer.Option(
            help="The image's build context, a Dockerfile and requirements.txt "
            "(default: ./docker where you run this, else a shapcluster checkout's docker/)."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for every Ray node to join.")
    ] = 120.0,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the commands `up` would send to each host (as to fresh hosts); contact none.",
        ),
    ] = False,
) -> None:
    """Build one Ray image, start the head and the workers, and wait until every node is alive.

    Running it again with nothing changed restarts nothing."""
    from shapcluster import cluster, creds
    from shapcluster.steps import DockerImageSteps, FileSyncSteps, RoleCredentialSteps

    settings = load_cluster_config(config)
    context_dir = project.find_context(context)
    role_arn = creds.resolve_role_arn(settings.aws, required=False)
    if dry_run:
        _print_plan(settings, context_dir, wheelhouse, role_arn)
        return
    wheels = project.ensure_wheelhouse(context_dir, wheelhouse, console.progress)
    steps = DockerImageSteps(settings, context_dir, wheels)
    credential_steps = RoleCredentialSteps(settings, role_arn) if role_arn else None
    with cluster.open_nodes(settings) as nodes:
        report = cluster.up(
            settings, nodes, steps, FileSyncSteps(settings), console.progress,
            timeout=timeout, credential_steps=credential_steps,
        )  # fmt: skip
    image = report.image.tag if report.image else "?"
    nodes_text = f"{report.nodes_alive} Ray nodes alive, {report.cpus} CPUs"
    changes = f"kept {len(report.kept)}, restarted {len(report.started)}"
    console.ok(f"cluster {settings.name} is up: {nodes_text}; {changes}; image {image}")


def _print_plan(
    settings: ClusterConfig, context_dir: Path, wheelhouse: Path | None, role_arn: str | None
) -> None:
    """`up --dry-run`: `up` itself over recording runners (see shapcluster.dryrun for the rule)."""
    from shapcluster import dryrun
    from shapcluster.steps import FileSyncSteps, RoleCredentialSteps

    wheels, note = project.planned_wheelhouse(context_dir, wheelhouse)
    if note:
        console.attention(note)
    credential_steps = (
        RoleCredentialSteps(settings, role_arn, assume=dryrun.planned_credentials) if role_arn else None
    )
    logging.disable(logging.INFO)  # `up`'s progress logs would read as if it ran ("streamed ...")
    try:
        plan = dryrun.plan_up(
            settings,
            dryrun.PlannedImageSteps(settings, context_dir, wheels),
            FileSyncSteps(settings),
            credential_steps,
        )
    finally:
        logging.disable(logging.NOTSET)
    console.say(dryrun.describe_rule())
    roles = {settings.inventory.head.name: "head"}
    addresses = dryrun.ray_addresses(settings)
    for host, commands in plan.items():
        role = roles.get(host, "worker")
        console.say(f"{host} ({role}, Ray address {addresses[host]}, {len(commands)} commands)", style="bold")
        for command in commands:
            console.say(f"  $ {command}")


@translate_errors
def sync(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Copy the app code and data to every host (only what changed)."""
    from shapcluster import cluster
    from shapcluster.steps import FileSyncSteps

    settings = load_cluster_config(config)
    with cluster.open_nodes(settings) as nodes:
        FileSyncSteps(settings).sync(nodes, console.progress)
    console.ok(f"app{' and data' if settings.sync.data_dir else ''} in sync on every host")


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]


@translate_errors
def status(config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False) -> None:
    """Per host: reachable, container, image (and whether it is the head's), Ray node, CPUs.

    Exits 0 when every node is alive, 10 when the cluster is degraded, 9 when none is up
    (also with --json, after printing it)."""
    from shapcluster import cluster

    settings = load_cluster_config(config)
    with cluster.open_nodes(settings) as nodes:
        rows = cluster.status(settings, nodes)
    alive = [r for r in rows if r.ray_alive]
    if as_json:
        console.print_json(
            {
                "cluster": settings.name,
                "nodes_alive": len(alive),
                "hosts": len(rows),
                "cpus_alive": sum(r.cpus for r in alive),
                "rows": [dataclasses.asdict(r) for r in rows],
            }
        )
        cluster.check_health(rows)
        return
    console.print_table(
        f"Cluster {settings.name}",
        ("host", "role", "reachable", "container", "image", "same image", "Ray node", "CPUs", "error"),
        (
            (
                r.host, r.role, "yes" if r.reachable else "NO", r.container, r.image_id[:19],
                {True: "yes", False: "NO", None: "-"}[r.image_matches], "alive" if r.ray_alive else "-",
                f"{r.cpus:g}", r.error,
            )
            for r in rows
        ),
    )  # fmt: skip
    console.say(f"{len(alive)} of {len(rows)} Ray nodes alive, {sum(r.cpus for r in alive):g} CPUs")
    _print_credentials(rows)
    cluster.check_health(rows)


def _print_credentials(rows: list[cluster.HostStatus]) -> None:
    from shapcluster import creds
    from shapcluster.steps import utc_now

    held = {r.host: r.credentials for r in rows if r.reachable}
    metas = [m for m in held.values() if m is not None]
    if not metas:
        return
    now = utc_now()
    soonest = min(metas, key=lambda m: m.expiration)
    line = f"AWS credentials for {soonest.role_arn} expire {creds.describe_expiry(soonest.expiration, now)}"
    missing = sorted(host for host, meta in held.items() if meta is None)
    if soonest.seconds_left(now) <= 0 or missing:
        gaps = f"; none on {', '.join(missing)}" if missing else ""
        console.attention(f"{line}{gaps}: run `shapcluster creds refresh`")
    else:
        console.say(line)


@translate_errors
def down(
    config: ConfigOption = DEFAULT_CONFIG,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also remove the image and the synced files (asks first).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --purge.")] = False,
) -> None:
    """Stop and remove this cluster's containers on every host (found by label).

    --purge asks for confirmation (skip it with -y); answering no exits 1 with nothing changed."""
    from shapcluster import cluster

    settings = load_cluster_config(config)
    if purge and not yes:
        hosts = ", ".join(h.address for h in settings.inventory.hosts)
        question = (
            f"Remove cluster {settings.name}'s containers, images and synced files "
            f"({settings.remote_dir}) on {hosts}?"
        )
        if not typer.confirm(question, default=False):
            console.say("Nothing removed.")
            raise typer.Exit(1)
    with cluster.open_nodes(settings) as nodes:
        result = cluster.down(settings, nodes, purge=purge)
    for host, outcome in result.successes.items():
        console.ok(f"{host}: {outcome}")
    result.raise_for_failures("down")


COMMANDS: dict[str, Callable[..., Any]] = {"up": up, "sync": sync, "status": status, "down": down}
