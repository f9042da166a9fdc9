"""The job's command line (``python -m app``), generated from app/contract.py.

shapcluster builds its ``submit`` options from the same contract and turns the value back into
arguments with ``JobConfig.to_argv`` when it submits the job, so both parsers share one definition.
A bad option value exits 2 (argparse's usage error), like shapcluster's ``submit``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from app.contract import (
    EXACT,
    Algorithm,
    ConfigError,
    JobConfig,
    Link,
    OptionError,
    Task,
    choices,
    default_of,
    flag,
    job_options,
    parse_option,
)

__all__ = ["EXACT", "Algorithm", "JobConfig", "Link", "Task", "build_parser", "parse_args"]


def _argparse_type(name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse_option(name, text)
        except OptionError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name  # argparse names the type in its messages
    return convert


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores the value and warns once on stderr."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        print(f"warning: {option} is deprecated; use {flag(self.dest)}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _choices_metavar(name: str) -> str | None:
    names = choices(name)
    return "{" + ",".join(names) + "}" if names else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Explain a model's predictions with distributed KernelSHAP, side by side with "
        "shap.KernelExplainer (by default: a RandomForest trained on wine quality).",
    )
    for f in job_options():
        meta = f.metadata
        default = default_of(f)
        if isinstance(default, bool):
            if default:
                parser.add_argument(
                    "--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", help=meta["help"]
                )
            else:
                parser.add_argument(flag(f.name), dest=f.name, action="store_true", help=meta["help"])
            continue
        shown = f"{meta['help']} (default: {default})" if default not in (None, ()) else meta["help"]
        parser.add_argument(
            flag(f.name),
            dest=f.name,
            type=_argparse_type(f.name),
            default=default,
            metavar=meta["metavar"] or _choices_metavar(f.name) or f.name.upper(),
            help=shown,
        )
        for alias in meta["aliases"]:
            parser.add_argument(
                alias,
                dest=f.name,
                type=_argparse_type(f.name),
                action=_DeprecatedAlias,
                help=argparse.SUPPRESS,  # a deprecated spelling: works and warns, not shown
            )
    return parser


def parse_args(argv: list[str] | None = None) -> JobConfig:
    """The JobConfig of a command line; a bad value or combination exits 2 with one usage line."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    try:
        return JobConfig(**vars(namespace))
    except ConfigError as err:
        parser.error(f"argument {err.option}: {err}")
    except (OptionError, ValueError) as err:
        parser.error(str(err))
    raise AssertionError("unreachable: parser.error exits")
