"""Cluster life-cycle commands: thin wrappers that load the config and call shapcluster.cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from shapcluster import cluster, console
from shapcluster.cli._errors import translate_errors
from shapcluster.config import load_cluster_config
from shapcluster.errors import NotImplementedYetError

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="SHAPCLUSTER_CONFIG",
        help="Cluster config (see inventory/shapcluster.toml.example).",
    ),
]  # fmt: skip
DEFAULT_CONFIG = Path("shapcluster.toml")


def _not_built(what: str) -> NotImplementedYetError:
    return NotImplementedYetError(
        f"`shapcluster {what}` is not built yet: building and shipping the image and syncing files "
        "arrive with the rest of the cluster life-cycle work.",
        hint="Run the job on this machine meanwhile: shapcluster submit --local",
    )


@translate_errors
def up(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Build one Ray image, start the head and the workers, and wait until every node is alive."""
    load_cluster_config(config)  # a broken config is reported even before the command exists
    raise _not_built("up")


@translate_errors
def sync(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Copy the app code and data to every host (only what changed)."""
    load_cluster_config(config)
    raise _not_built("sync")


@translate_errors
def status(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Show each host's reachability, this cluster's container and the image it runs."""
    settings = load_cluster_config(config)
    with cluster.open_nodes(settings) as nodes:
        rows = cluster.status(settings, nodes)
    console.print_table(
        f"Cluster {settings.name}",
        ("host", "role", "reachable", "container", "image", "error"),
        (
            (r.host, r.role, "yes" if r.reachable else "NO", r.container, r.image_id[:19], r.error)
            for r in rows
        ),
    )


@translate_errors
def down(
    config: ConfigOption = DEFAULT_CONFIG,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also remove the image and the synced files.")
    ] = False,
) -> None:
    """Stop and remove this cluster's containers on every host (found by label)."""
    settings = load_cluster_config(config)
    with cluster.open_nodes(settings) as nodes:
        results = cluster.down(settings, nodes, purge=purge)
    for host, outcome in results.items():
        console.console.print(f"[green]✓[/] {host}: {outcome}")


COMMANDS: dict[str, Callable[..., Any]] = {"up": up, "sync": sync, "status": status, "down": down}
