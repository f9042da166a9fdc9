"""The job's options: one frozen value, parsed once from the command line of ``python -m app``.

shapcluster builds the same value from its own CLI and turns it back into arguments with
``to_argv`` when it submits the job to a cluster, so both paths share one definition.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from app.kernel_shap import Link

EXACT = "exact"


@dataclass(frozen=True)
class JobConfig:
    data: str | None = None  # local path, s3://bucket/key or https:// URL; None: the default
    label: str = "quality"
    rows: int = 16
    background: int = 100
    nsamples: int | str | None = None  # None: shap's default 2M + 2048; "exact": 2^M - 2
    batch_size: int | None = None  # rows per Ray task; None: chosen to balance the workers
    workers: int | None = None  # how many tasks run at once; None: every CPU of the cluster
    trees: int = 100
    sweep: tuple[int, ...] = ()  # n_estimators candidates trained in parallel; best one kept
    test_size: float = 0.2
    seed: int = 0
    tolerance: float = 1e-6
    link: Link = Link.IDENTITY
    output_dir: str = "results"
    run_id: str | None = None
    cpus: int | None = None  # CPUs of a local Ray instance the job starts itself
    ray_address: str | None = None
    reference: bool = True  # False (--no-reference): our explainer alone, e.g. to time it
    groups: str | None = None  # JSON or TOML file: group name -> columns; each group one player
    tol: float | None = None  # sampling: add coalitions until the largest standard error < tol
    background_weights: str | None = None  # column of the data holding each row's weight

    def __post_init__(self) -> None:
        positive: dict[str, int | None] = {
            "rows": self.rows,
            "background": self.background,
            "trees": self.trees,
        }
        positive |= {"batch_size": self.batch_size, "workers": self.workers, "cpus": self.cpus}
        for name, value in positive.items():
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if isinstance(self.nsamples, int) and self.nsamples < 1:
            raise ValueError(f"--nsamples must be at least 1 (or 'exact'), got {self.nsamples}")
        if isinstance(self.nsamples, str) and self.nsamples != EXACT:
            raise ValueError(f"--nsamples must be a whole number or 'exact', got {self.nsamples!r}")
        if not 0.0 < self.test_size < 1.0:
            raise ValueError(f"--test-size must be between 0 and 1, got {self.test_size}")
        if any(n < 1 for n in self.sweep):
            raise ValueError(f"--sweep needs positive tree counts, got {self.sweep}")
        if self.tolerance < 0:
            raise ValueError(f"--tolerance must be >= 0, got {self.tolerance}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"--tol must be a positive standard error, got {self.tol}")

    def to_argv(self) -> list[str]:
        """Arguments for ``python -m app`` that reproduce this config (defaults omitted)."""
        argv: list[str] = []
        default = JobConfig()
        for f in fields(self):
            value = getattr(self, f.name)
            if value == getattr(default, f.name) or value is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.name == "sweep":
                argv += [flag, ",".join(str(n) for n in value)]
            elif isinstance(value, bool):  # switches default to on and are turned off by --no-<name>
                argv.append("--no-" + f.name.replace("_", "-"))
            else:
                argv += [flag, str(value)]
        return argv


def parse_nsamples(text: str) -> int | str:
    if text == EXACT:
        return EXACT
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'exact', got {text!r}") from None


def parse_sweep(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected tree counts like 50,100,200, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Train a RandomForest on wine quality and explain it with distributed KernelSHAP, "
        "side by side with shap.KernelExplainer.",
    )
    add = parser.add_argument
    add("--data", help="CSV: local path, s3://bucket/key or https:// URL (default: data/winequality-red.csv)")
    add("--label", default="quality", help="label column (default: quality)")
    add("--rows", type=int, default=16, help="test rows to explain (default: 16)")
    add("--background", type=int, default=100, help="background rows (default: 100)")
    add(
        "--nsamples",
        type=parse_nsamples,
        default=None,
        help="coalitions per row, or 'exact' (default: 2M+2048)",
    )
    add("--batch-size", type=int, default=None, help="rows per Ray task (default: balanced)")
    add("--workers", type=int, default=None, help="Ray tasks at once (default: all CPUs)")
    add("--trees", type=int, default=100, help="trees in the forest (default: 100)")
    add("--sweep", type=parse_sweep, default=(), help="train these forest sizes in parallel, keep the best")
    add("--test-size", type=float, default=0.2, help="held-out fraction (default: 0.2)")
    add("--seed", type=int, default=0, help="seed for split, forest, background and sampling")
    add("--tolerance", type=float, default=1e-6, help="max allowed difference (default: 1e-6)")
    add("--link", type=Link, choices=list(Link), default=Link.IDENTITY, help="link function")
    add("--output-dir", default="results", help="where results/<run-id>/ goes (default: results)")
    add("--run-id", default=None, help="name of the results folder (default: time-based)")
    add("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    add("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local instance)")
    add("--groups", default=None, help="JSON or TOML file: group name -> list of columns; one player each")
    add(
        "--tol",
        type=float,
        default=None,
        help="sampling: double the coalitions until every standard error is below TOL",
    )
    add(
        "--background-weights",
        default=None,
        metavar="COLUMN",
        help="column of the data with each row's weight as a background row (not a feature)",
    )
    add(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip shap.KernelExplainer: only our explainer runs (its wall time is then ours alone)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> JobConfig:
    parser = build_parser()
    namespace = parser.parse_args(argv)
    try:
        return JobConfig(**vars(namespace))
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
