"""Checks that need the data but not Ray (nor scikit-learn): run in milliseconds, before the
job imports or starts anything heavy. A local CSV is read, the groups file checked against its
columns, and the explanation's plan sized against kernel_shap.PLAN_MEMORY_BUDGET."""

from __future__ import annotations

import math

from app import etl, kernel_shap
from app import groups as groups_file
from app.config import JobConfig
from app.errors import BudgetError


def players(config: JobConfig, feature_names: list[str]) -> groups_file.Players | None:
    """The players of --groups over these columns, or None (one player per column)."""
    return groups_file.load_groups(config.groups, feature_names) if config.groups else None


def resolve_budget(
    config: JobConfig,
    nsamples: int | str | None,
    n_players: int,
    n_rows: int,
    n_background: int,
    n_outputs: int,
) -> int | None:
    """kernel_shap.resolve_nsamples, its refusal turned into the job's BudgetError (exit 3)."""
    try:
        return kernel_shap.resolve_nsamples(nsamples, n_players, n_rows, n_background, n_outputs)
    except kernel_shap.PlanTooLargeError as err:
        raise BudgetError(f"{config.data or 'the data'}: {err}") from None


def check_job(config: JobConfig) -> None:
    """Raise DataError/BudgetError for a local CSV, groups file or plan that cannot work.
    Upper bounds: every requested row explained, every player varying. Remote data (s3://,
    https://) is checked by the job once it has read it."""
    source = etl.resolve_source(config.data)
    if source is None or "://" in source:
        return
    dataset = etl.with_weights(etl.load_dataset(source, config.label), config.background_weights)
    names = [str(c) for c in dataset.features.columns]
    spec = players(config, names)
    n_players = len(names) if spec is None else len(spec.names)
    n_classes = max(int(dataset.labels.nunique()), 1)
    n_test = math.ceil(len(dataset.features) * config.test_size)  # as train_test_split rounds
    rows = min(config.rows, n_test)  # more rows than the split has fails later, with its own message
    background = min(config.background, len(dataset.features) - n_test)
    resolve_budget(config, config.nsamples, n_players, rows, background, n_classes)
