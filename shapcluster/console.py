"""The only module of shapcluster that imports rich: consoles, progress, logging set-up.

Everything the user sees goes through here, so secrets can be masked in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
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
    # Their debug logs carry request and response bodies: STS's answer holds the new secret key
    # before shapcluster can register it for masking. Never below WARNING, even with --debug.
    for talkative in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(talkative).setLevel(logging.WARNING)


def say(text: str, *, markup: bool = True) -> None:
    """A line for the user on stdout, secrets masked; ``markup=False`` for text from elsewhere
    (a job's log), whose brackets must print as they are."""
    console.print(mask_secrets(text), markup=markup, highlight=False, soft_wrap=True)


def progress(line: str) -> None:
    console.print(f"[dim]…[/] {escape(mask_secrets(line))}", soft_wrap=True)


def warn(line: str) -> None:
    err_console.print(f"[yellow]Warning:[/] {escape(mask_secrets(line))}", soft_wrap=True)


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
