"""Checks that need the data but not Ray (nor scikit-learn): run in milliseconds, before the
job imports or starts anything heavy. A local CSV is read, the groups file checked against its
columns, and the explanation's plan sized against kernel_shap.PLAN_MEMORY_BUDGET."""

from __future__ import annotations

import functools
import math

from app import etl, kernel_shap, stream
from app import groups as groups_file
from app.config import Algorithm, JobConfig
from app.contract import DEFAULT_LABEL, Task, row_range
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
    except (kernel_shap.PlanTooLargeError, kernel_shap.PlanTooSmallError) as err:
        raise BudgetError(f"{config.data or 'the data'}: {err}") from None


def label_required(config: JobConfig) -> bool:
    """With --model the label only scores, so the data may lack it unless --label was given."""
    return config.model is None or config.label is not None


def read_columns(config: JobConfig) -> tuple[str, ...]:
    """The columns to read: --features (default: the columns a local --model was fitted on, when
    it records them), plus the --background-weights column (not a feature)."""
    weights = config.background_weights
    features = config.features or model_columns(config)
    if not features or weights is None or weights in features:
        return features
    return (*features, weights)


def model_columns(config: JobConfig) -> tuple[str, ...]:
    """The columns a local --model was fitted on (scikit-learn's ``feature_names_in_``, in its
    order), or () when --features is given, the model is remote or records no names. Raises
    DataError for a model file that cannot be loaded."""
    if config.features or config.model is None or "://" in config.model:
        return ()
    from pathlib import Path

    path = Path(config.model)
    if not path.is_file():
        return ()  # model_file names the missing file, in its place in the checks
    return _fitted_columns(str(path), config.trust_model, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _fitted_columns(path: str, trust: bool, mtime_ns: int) -> tuple[str, ...]:
    from app import model_file  # scikit-learn: only when a model is given

    del mtime_ns  # part of the cache key: a file written anew is read anew
    names = getattr(model_file.load_model(path, trust), "feature_names_in_", None)
    return () if names is None else tuple(str(n) for n in names)


def explain_rows(config: JobConfig) -> int | None:
    """The data rows of a local --explain file (counted without holding it), else None."""
    if config.explain is None or "://" in config.explain:
        return None
    return etl.count_rows(config.explain)


def check_job(config: JobConfig) -> None:
    """Raise DataError/BudgetError for a local file, groups file, plan or model that cannot
    work. Upper bounds: every requested row explained, every player varying. Remote data
    (s3://, https://) is checked by the job once it has read it."""
    source = etl.resolve_source(config.data)
    if source is None or "://" in source:
        return
    label = config.label or DEFAULT_LABEL
    dataset = etl.load_dataset(source, label, read_columns(config), label_required=label_required(config))
    dataset = etl.with_weights(dataset, config.background_weights)
    task = etl.infer_task(dataset, config.task)
    if config.algorithm not in (Algorithm.TREE, Algorithm.TREE_PATH_DEPENDENT):
        names = [str(c) for c in dataset.features.columns]
        spec = players(config, names)
        n_players = len(names) if spec is None else len(spec.names)
        regression = task is Task.REGRESSION
        n_classes = 1 if dataset.labels is None or regression else max(int(dataset.labels.nunique()), 1)
        n_rows, n_test = len(dataset.features), math.ceil(len(dataset.features) * config.test_size)
        start, stop = row_range(config.rows, None)  # syntax only; the split's bounds come later
        available = n_test if config.explain is None else explain_rows(config) or n_rows
        stop = available if stop < 0 else min(stop, available)  # stop < 0: --rows all
        background = min(config.background, n_rows - n_test)  # as train_test_split rounds
        plan_rows = max(stop - start, 1)
        if stream.streams(plan_rows) and config.algorithm == Algorithm.KERNEL and config.tol is None:
            plan_rows = min(plan_rows, config.batch_size or stream.BLOCK_ROWS)  # one plan per block
        resolve_budget(config, config.nsamples, n_players, plan_rows, background, n_classes)
    for option, path in (("--explain", config.explain), ("--background-data", config.background_data)):
        if path is None or "://" in path:
            continue
        if option == "--explain" and stream.streams(explain_rows(config) or 0):
            # a streamed file is checked block by block where it is read; here its first block
            names = [str(c) for c in dataset.features.columns]
            stop = min(stream.BLOCK_ROWS, explain_rows(config) or 0)
            etl.read_row_range(path, names, dataset.codec, 0, stop)
        else:
            etl.load_rows(path, dataset, option)
    if config.model is not None and "://" not in config.model:
        from app import model, model_file  # scikit-learn: only once the plan is known to fit

        model.explained_model(model_file.load_model(config.model, config.trust_model), dataset, config.model)
