"""The ``shapcluster`` command: typer apps only. They parse options, call the core and turn
``ShapclusterError`` into one red line and a distinct exit status."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shapcluster.cli.root import app

GLOBAL_FLAGS = ("--debug",)  # root options also accepted after the subcommand, as ray and sky do


def hoist_global_flags(args: Sequence[str]) -> list[str]:
    """``args`` with every global flag moved before the subcommand (up to a ``--``)."""
    end = list(args).index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for i, a in enumerate(args) if i >= end or a not in GLOBAL_FLAGS]
    return [*flags, *rest]


def main(argv: Sequence[str] | None = None) -> None:
    app(args=hoist_global_flags(sys.argv[1:] if argv is None else argv), prog_name="shapcluster")


__all__ = ["app", "hoist_global_flags", "main"]
