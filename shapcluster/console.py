"""The only module of shapcluster that imports rich: consoles, progress, logging set-up.

Everything the user sees goes through here, so secrets can be masked in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from shapcluster.errors import ShapclusterError
from shapcluster.secrets import mask_secrets

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class _MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_secrets(record.getMessage())
        record.args = None
        return True


def setup_logging(*, debug: bool) -> None:
    handler = RichHandler(console=err_console, show_path=debug, rich_tracebacks=False)
    handler.addFilter(_MaskingFilter())
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )
    logging.getLogger("shapcluster").setLevel(logging.DEBUG if debug else logging.INFO)


def print_error(err: ShapclusterError) -> None:
    err_console.print(f"[bold red]Error:[/] {mask_secrets(err.message)}", soft_wrap=True)
    if err.hint:
        err_console.print(f"[yellow]Hint:[/] {mask_secrets(err.hint)}", soft_wrap=True)


def print_traceback() -> None:
    err_console.print_exception(show_locals=False)


def print_table(title: str, columns: Iterable[str], rows: Iterable[Iterable[object]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(mask_secrets(str(cell)) for cell in row))
    console.print(table)
