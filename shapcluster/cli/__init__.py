"""The ``shapcluster`` command: typer apps only. They parse options, call the core and turn
``ShapclusterError`` into one red line and a distinct exit status."""

from __future__ import annotations

from shapcluster.cli.root import app


def main() -> None:
    app()


__all__ = ["app", "main"]
