"""Cluster life-cycle commands. Until their issue lands they fail loudly instead of pretending."""

from __future__ import annotations

from collections.abc import Callable

from shapcluster.cli._errors import translate_errors
from shapcluster.errors import NotImplementedYetError


def _not_built(what: str) -> NotImplementedYetError:
    return NotImplementedYetError(
        f"`shapcluster {what}` is not built yet: it arrives with the cluster life-cycle work.",
        hint="Run the job on this machine meanwhile: shapcluster submit --local",
    )


@translate_errors
def up() -> None:
    """Build one Ray image, start the head and the workers, and wait until every node is alive."""
    raise _not_built("up")


@translate_errors
def sync() -> None:
    """Copy the app code and data to every host (only what changed)."""
    raise _not_built("sync")


@translate_errors
def status() -> None:
    """Show per-host reachability, image, containers, Ray nodes and CPUs."""
    raise _not_built("status")


@translate_errors
def down() -> None:
    """Stop and remove this cluster's containers on every host."""
    raise _not_built("down")


COMMANDS: dict[str, Callable[[], None]] = {"up": up, "sync": sync, "status": status, "down": down}
