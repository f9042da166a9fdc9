"""Help text is never cut: long words (paths, URLs, env var names) fold onto the next line.
Switches show no type: `--purge` takes no value, so no `<bool>` placeholder beside it.

typer renders option help in a rich table whose cells end a word too long for the column with
"…" (at 80 columns, or whenever output is piped and rich assumes 80). typer has no setting for
it, so its two text factories are wrapped once to return text that folds instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from typer import core, rich_utils

# The text factories of option help, and the highlighters that render option names (a long
# name such as --background-weights would otherwise end in "…" in its narrow column).
_WRAPPED = ("_make_rich_text", "_get_parameter_help", "highlighter", "negative_highlighter")


def _fold(renderable: Any) -> Any:
    if hasattr(renderable, "overflow"):
        renderable.overflow = "fold"
    for part in getattr(renderable, "renderables", ()):  # rich Columns: the help, env var, default
        _fold(part)
    return renderable


def _folding(factory: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(factory)
    def folding(*args: Any, **kwargs: Any) -> Any:
        return _fold(factory(*args, **kwargs))

    folding.__dict__["_folds"] = True
    return folding


def fold_long_words() -> None:
    for name in _WRAPPED:
        factory = getattr(rich_utils, name, None)
        if factory is not None and not getattr(factory, "_folds", False):
            setattr(rich_utils, name, _folding(factory))


def _no_flag_type(display: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(display)
    def display_type_rich(self: core.TyperOption, ctx: Any) -> Any:
        if self.is_flag and self.metavar is None:
            return None  # a switch takes no value: no "<bool>"
        return display(self, ctx)

    display_type_rich.__dict__["_no_flag_type"] = True
    return display_type_rich


def hide_flag_types() -> None:
    display = core.TyperOption.display_type_rich
    if not getattr(display, "_no_flag_type", False):
        core.TyperOption.display_type_rich = _no_flag_type(display)  # type: ignore[method-assign]
