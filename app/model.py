"""Split, train (or take the user's --model) and score; choose the rows to explain. Ray-free."""

from __future__ import annotations

import time
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.model_selection import train_test_split

from app.contract import OptionError, Task, row_range
from app.errors import DataError
from app.etl import Dataset, infer_task
from app.tabular import ModelFunction


@dataclass(frozen=True)
class Split:
    feature_names: tuple[str, ...]
    x_train: npt.NDArray[np.float64]
    x_test: npt.NDArray[np.float64]
    y_train: npt.NDArray[Any]  # class labels (any type) or regression targets; NaN: no label
    y_test: npt.NDArray[Any]
    test_index: npt.NDArray[np.int64]  # row numbers of the test rows in the source file
    w_train: npt.NDArray[np.float64] | None = None  # --background-weights of the training rows
    task: Task = Task.CLASSIFICATION


@dataclass(frozen=True)
class TrainedModel:
    model: Any  # a RandomForestClassifier, or a ModelFunction around a regressor
    n_estimators: int
    score: float  # accuracy (classification) or R^2 (regression) on the held-out split
    seconds: float


@dataclass(frozen=True)
class ExplainData:
    rows: npt.NDArray[np.float64]  # (R, M): the first R test rows
    row_ids: npt.NDArray[np.int64]  # their row numbers in the source data
    background: npt.NDArray[np.float64]  # (N, M): a seeded random sample of training rows
    _: KW_ONLY  # the optional parts, by name only
    background_weights: npt.NDArray[np.float64] | None = None  # (N,): their weights, if given
    labels: npt.NDArray[Any] | None = None  # (R,): the rows' true labels (any type; NaN: none)


def split_data(dataset: Dataset, test_size: float = 0.2, seed: int = 0, task: Task | None = None) -> Split:
    x = dataset.features.to_numpy(dtype=np.float64)
    y = dataset.labels.to_numpy() if dataset.labels is not None else np.full(len(x), np.nan)
    task = infer_task(dataset, task)
    index = np.arange(len(x))
    try:
        x_train, x_test, y_train, y_test, train_index, test_index = train_test_split(
            x, y, index, test_size=test_size, random_state=seed, stratify=None
        )
    except ValueError as err:
        raise DataError(f"{dataset.source}: cannot split into train and test ({err}).") from None
    w_train = None if dataset.weights is None else dataset.weights.to_numpy(dtype=np.float64)[train_index]
    return Split(tuple(dataset.features.columns), x_train, x_test, y_train, y_test, test_index, w_train, task)


def train_forest(split: Split, n_estimators: int = 100, seed: int = 0, label: str = "value") -> TrainedModel:
    """One forest, single-threaded on purpose: a Ray task's CPU count must mean what it says.
    A classifier on the split's classes (numbers or text), or for regression a regressor
    wrapped so that its predictions are the one output (named after the label)."""
    start = time.perf_counter()
    if split.task is Task.REGRESSION:
        regressor = RandomForestRegressor(n_estimators=n_estimators, random_state=seed, n_jobs=1)
        regressor.fit(split.x_train, split.y_train.astype(np.float64))
        seconds = time.perf_counter() - start
        score = float(regressor.score(split.x_test, split.y_test.astype(np.float64)))
        return TrainedModel(
            ModelFunction(regressor, None, regression=True, target=label), n_estimators, score, seconds
        )
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    model.fit(split.x_train, split.y_train)
    seconds = time.perf_counter() - start
    return TrainedModel(model, n_estimators, float(model.score(split.x_test, split.y_test)), seconds)


def is_regressor(estimator: Any) -> bool:
    """A regressor predicts one number per row; everything with predict_proba is a classifier."""
    from sklearn.base import is_regressor as sklearn_is_regressor

    return bool(sklearn_is_regressor(estimator)) or not hasattr(estimator, "predict_proba")


def explained_model(estimator: Any, dataset: Dataset, source: str) -> ModelFunction:
    """The user's fitted estimator as the function of the data's codes. Raises DataError when the
    columns it was fitted on differ from the data's (naming the missing and the extra ones)."""
    names = list(dataset.features.columns)
    expected = getattr(estimator, "feature_names_in_", None)
    if expected is not None:
        expected = [str(c) for c in expected]
        if expected != names:
            missing = [c for c in expected if c not in names]
            extra = [c for c in names if c not in expected]
            if missing or extra:
                raise DataError(
                    f"{source}: the model expects columns the data ({dataset.source}) does not match: "
                    f"missing {', '.join(missing) or 'none'}; extra {', '.join(extra) or 'none'}. "
                    + (
                        f"Pass --features {','.join(expected)}."
                        if not missing
                        else "Give the data those columns."
                    )
                )
            raise DataError(
                f"{source}: the model expects the columns in the order {', '.join(expected)}; "
                f"pass --features {','.join(expected)}."
            )
    elif dataset.codec is not None and not set(dataset.codec.kinds) <= {"float", "int"}:
        raise DataError(
            f"{source}: the model was fitted on a plain number matrix, but the data has text or "
            "boolean columns; fit it on a DataFrame (a Pipeline that encodes them) or give numbers."
        )
    n_in = getattr(estimator, "n_features_in_", len(names))
    if n_in != len(names):
        raise DataError(f"{source}: the model expects {n_in} columns, the data has {len(names)}.")
    codec = dataset.codec if expected is not None else None  # fitted on a matrix: give it the codes
    if expected is not None and codec is None:
        from app.tabular import ColumnCodec

        codec = ColumnCodec(
            tuple(names), ("float",) * len(names), ("float64",) * len(names), ((),) * len(names)
        )
    return ModelFunction(estimator, codec, regression=is_regressor(estimator), target=dataset.label)


def pick_best(candidates: list[tuple[int, float]]) -> int:
    """Index of the best (trees, held-out accuracy): highest accuracy, on a tie the smaller
    (faster to explain) forest."""
    return max(range(len(candidates)), key=lambda i: (candidates[i][1], -candidates[i][0]))


def input_dtype(fitted: object) -> type[np.floating]:
    """scikit-learn forests cast inputs to float32; building synthetic rows in float32 saves a
    copy of every one of them and gives the model bit-identical input."""
    return (
        np.float32 if isinstance(fitted, RandomForestClassifier) else np.float64
    )  # a ModelFunction: float64


def get_data_to_explain(split: Split, rows: int | str, background: int, seed: int = 0) -> ExplainData:
    """The test rows of ``--rows`` (N, 'all' or START:STOP) and a seeded background sample."""
    if isinstance(rows, int) and rows > len(split.x_test):
        raise DataError(
            f"--rows {rows} asks for more rows than the test split has ({len(split.x_test)}). "
            "Lower --rows or raise --test-size."
        )
    try:
        start, stop = row_range(rows, len(split.x_test))
    except OptionError as err:
        raise DataError(f"--rows {err} (the test split). Lower --rows or raise --test-size.") from None
    if background > len(split.x_train):
        raise DataError(
            f"--background {background} asks for more rows than the training split has "
            f"({len(split.x_train)}). Lower --background."
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(split.x_train), size=background, replace=False))
    weights = None if split.w_train is None else split.w_train[chosen]
    return ExplainData(
        split.x_test[start:stop],
        split.test_index[start:stop],
        split.x_train[chosen],
        background_weights=weights,
        labels=split.y_test[start:stop],
    )
