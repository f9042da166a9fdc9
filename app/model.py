"""Split, train and score the RandomForest; choose the rows to explain. Ray-free."""

from __future__ import annotations

import time
from dataclasses import KW_ONLY, dataclass

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from app.errors import DataError
from app.etl import Dataset


@dataclass(frozen=True)
class Split:
    feature_names: tuple[str, ...]
    x_train: npt.NDArray[np.float64]
    x_test: npt.NDArray[np.float64]
    y_train: npt.NDArray[np.int64]
    y_test: npt.NDArray[np.int64]
    test_index: npt.NDArray[np.int64]  # row numbers of the test rows in the source file
    w_train: npt.NDArray[np.float64] | None = None  # --background-weights of the training rows


@dataclass(frozen=True)
class TrainedModel:
    model: RandomForestClassifier
    n_estimators: int
    score: float  # accuracy on the held-out split
    seconds: float


@dataclass(frozen=True)
class ExplainData:
    rows: npt.NDArray[np.float64]  # (R, M): the first R test rows
    row_ids: npt.NDArray[np.int64]  # their row numbers in the source data
    background: npt.NDArray[np.float64]  # (N, M): a seeded random sample of training rows
    _: KW_ONLY  # the optional parts, by name only
    background_weights: npt.NDArray[np.float64] | None = None  # (N,): their weights, if given
    labels: npt.NDArray[np.int64] | None = None  # (R,): the rows' true labels


def split_data(dataset: Dataset, test_size: float = 0.2, seed: int = 0) -> Split:
    x = dataset.features.to_numpy(dtype=np.float64)
    y = dataset.labels.to_numpy()
    index = np.arange(len(x))
    try:
        x_train, x_test, y_train, y_test, train_index, test_index = train_test_split(
            x, y, index, test_size=test_size, random_state=seed, stratify=None
        )
    except ValueError as err:
        raise DataError(f"{dataset.source}: cannot split into train and test ({err}).") from None
    w_train = None if dataset.weights is None else dataset.weights.to_numpy(dtype=np.float64)[train_index]
    return Split(tuple(dataset.features.columns), x_train, x_test, y_train, y_test, test_index, w_train)


def train_forest(split: Split, n_estimators: int = 100, seed: int = 0) -> TrainedModel:
    """One forest, single-threaded on purpose: a Ray task's CPU count must mean what it says."""
    start = time.perf_counter()
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    model.fit(split.x_train, split.y_train)
    seconds = time.perf_counter() - start
    return TrainedModel(model, n_estimators, float(model.score(split.x_test, split.y_test)), seconds)


def pick_best(candidates: list[tuple[int, float]]) -> int:
    """Index of the best (trees, held-out accuracy): highest accuracy, on a tie the smaller
    (faster to explain) forest."""
    return max(range(len(candidates)), key=lambda i: (candidates[i][1], -candidates[i][0]))


def input_dtype(fitted: object) -> type[np.floating]:
    """scikit-learn forests cast inputs to float32; building synthetic rows in float32 saves a
    copy of every one of them and gives the model bit-identical input."""
    return np.float32 if isinstance(fitted, RandomForestClassifier) else np.float64


def get_data_to_explain(split: Split, rows: int, background: int, seed: int = 0) -> ExplainData:
    if rows > len(split.x_test):
        raise DataError(
            f"--rows {rows} asks for more rows than the test split has ({len(split.x_test)}). "
            "Lower --rows or raise --test-size."
        )
    if background > len(split.x_train):
        raise DataError(
            f"--background {background} asks for more rows than the training split has "
            f"({len(split.x_train)}). Lower --background."
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(split.x_train), size=background, replace=False))
    weights = None if split.w_train is None else split.w_train[chosen]
    return ExplainData(
        split.x_test[:rows],
        split.test_index[:rows],
        split.x_train[chosen],
        background_weights=weights,
        labels=split.y_test[:rows],
    )
