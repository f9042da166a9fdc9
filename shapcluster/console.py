"""The only module of shapcluster that imports rich: consoles, progress, logging set-up.

Everything the user sees goes through here, so secrets can be masked in one place.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from shapcluster.errors import ShapclusterError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

_MASK = "****"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Remember a secret so that any later output or log line shows it masked."""
    if len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def mask_secrets(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


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
