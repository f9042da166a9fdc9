"""The only module of shapcluster that imports rich: consoles, progress, logging set-up.

Everything the user sees goes through here, so secrets can be masked in one place. Text is
always printed literally: messages carry host names, file contents, remote output and config
values, whose brackets (``[user@]host``, ``[workers]``) must neither vanish nor crash rich's
markup parser. Only the fixed marks below (✓, !, Error:, Hint:) are styled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

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
    # paramiko logs a whole traceback at ERROR for an unreachable host, which shapcluster then
    # reports in one line with a hint; the traceback is for --debug only.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if debug else logging.CRITICAL)


def _literal(text: str, style: str | None = None) -> Text:
    return Text(mask_secrets(text), style=style or "")


def _marked(mark: str, style: str, text: str) -> Text:
    return Text.assemble((mark, style), " ", _literal(text))


def say(text: str, *, style: str | None = None, markup: bool = False) -> None:
    """A line for the user on stdout, printed literally, secrets masked. ``markup`` is accepted
    for older callers and ignored: text is never parsed as markup (use ``ok``/``attention``)."""
    del markup
    console.print(_literal(text, style), highlight=False, soft_wrap=True)


def ok(text: str) -> None:
    """A line reporting success, after a green check mark."""
    console.print(_marked("✓", "green", text), highlight=False, soft_wrap=True)


def attention(text: str) -> None:
    """A line that asks the user to act, after a yellow exclamation mark (stdout, not a warning)."""
    console.print(_marked("!", "yellow", text), highlight=False, soft_wrap=True)


def progress(line: str) -> None:
    console.print(_marked("…", "dim", line), highlight=False, soft_wrap=True)


def warn(line: str) -> None:
    err_console.print(_marked("Warning:", "yellow", line), highlight=False, soft_wrap=True)


def print_error(err: ShapclusterError) -> None:
    err_console.print(_marked("Error:", "bold red", err.message), highlight=False, soft_wrap=True)
    if err.hint:
        err_console.print(_marked("Hint:", "yellow", err.hint), highlight=False, soft_wrap=True)


def print_json(value: object) -> None:
    """``value`` as indented JSON on stdout, nothing else on the line (for `--json`), secrets
    masked; dates and paths as their text."""
    import json

    print(mask_secrets(json.dumps(value, indent=2, default=str)), flush=True)


def say_err(text: str) -> None:
    """A line for the user on stderr (keeps stdout for `--json` output), secrets masked."""
    err_console.print(_literal(text), highlight=False, soft_wrap=True)


def print_traceback() -> None:
    err_console.print_exception(show_locals=False)


def print_table(title: str, columns: Iterable[str], rows: Iterable[Iterable[object]]) -> None:
    table = Table(title=_literal(title))
    for column in columns:  # fold, never "…": a cut host or job id is useless (also when piped)
        table.add_column(_literal(column), overflow="fold")
    for row in rows:
        table.add_row(*(_literal(str(cell)) for cell in row))
    console.print(table)
