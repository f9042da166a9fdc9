from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from shapcluster import console
from shapcluster.errors import ShapclusterError

P = ParamSpec("P")
R = TypeVar("R")

_debug = {"on": False}


def set_debug(on: bool) -> None:
    _debug["on"] = on


def translate_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print a ShapclusterError as one red line (plus a hint) and exit with its status."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ShapclusterError as err:
            console.print_error(err)
            if _debug["on"]:
                console.print_traceback()
            raise typer.Exit(int(err.exit_status)) from None

    return wrapper
