"""The UCI Adult workload of the distributed KernelSHAP write-ups, prepared once for every system.

Seldon's alibi benchmark (and its Ray write-up) explain a logistic regression on Adult with the
12 columns alibi's ``fetch_adult`` keeps (``fnlwgt`` and ``education-num`` dropped) as 12
players: each categorical column one-hot encoded (a missing ``?`` is a category of its own) and
its indicator columns grouped into one player, each numeric column standardised and a player
of its own. Plain pandas + scikit-learn, no Ray, so the unit tests check it cheaply.

Conventions: ``R`` rows explained, ``N`` background rows, ``D`` encoded columns, ``G = 12``
groups (players).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

# The 15 columns of adult.data / adult.test (UCI's adult.names), in file order.
COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
NUMERIC = ("age", "capital-gain", "capital-loss", "hours-per-week")
# The 12 players, in file order: alibi's fetch_adult keeps these.
FEATURES = tuple(c for c in COLUMNS if c not in {"fnlwgt", "education-num", "income"})
CATEGORICAL = tuple(c for c in FEATURES if c not in NUMERIC)
MISSING = "missing"  # the category a `?` becomes


@dataclass(frozen=True)
class AdultWorkload:
    """Encoded data, the model and the 12 groups: everything the explainers share."""

    x_train: npt.NDArray[np.float64]  # (n_train, D)
    y_train: npt.NDArray[np.int64]  # 1 where income is >50K
    x_test: npt.NDArray[np.float64]  # (n_test, D), in adult.test's row order
    y_test: npt.NDArray[np.int64]
    encoded_names: tuple[str, ...]  # (D,) e.g. "sex=Male", "age"
    group_names: tuple[str, ...]  # (G,) the original column names
    groups: tuple[tuple[int, ...], ...]  # (G,) encoded column indices of each group, ascending
    model: LogisticRegression
    test_accuracy: float

    def background(self, size: int = 100, seed: int = 0) -> npt.NDArray[np.float64]:
        """A seeded random sample of training rows (without replacement): (size, D)."""
        rng = np.random.default_rng(seed)
        return self.x_train[np.sort(rng.choice(len(self.x_train), size=size, replace=False))]


def read_adult(path: Path, *, test: bool) -> pd.DataFrame:
    """One Adult file as the data folder's README says to load it; labels without the test file's dot.

    Raises FileNotFoundError (a missing file) or ValueError (a file that is not Adult's 15 columns).
    """
    frame = pd.read_csv(
        path,
        header=None,
        names=list(COLUMNS),
        skipinitialspace=True,
        na_values="?",
        skiprows=1 if test else 0,
    )
    if frame.shape[1] != len(COLUMNS) or frame["income"].isna().any():
        raise ValueError(f"{path}: not the UCI Adult layout (15 comma-separated columns, no header)")
    frame["income"] = frame["income"].str.rstrip(".")
    return frame


def encoder() -> ColumnTransformer:
    """One transformer per player, in FEATURES order, so each player's output columns are contiguous."""
    steps = []
    for column in FEATURES:
        if column in NUMERIC:
            steps.append((column, StandardScaler(), [column]))
        else:
            steps.append(
                (
                    column,
                    make_pipeline(
                        SimpleImputer(strategy="constant", fill_value=MISSING),
                        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                    ),
                    [column],
                )
            )
    return ColumnTransformer(steps, sparse_threshold=0.0)


def prepare(data_dir: Path, seed: int = 0) -> AdultWorkload:
    """Read adult.data (training) and adult.test, encode, fit the logistic regression."""
    train = read_adult(data_dir / "adult.data", test=False)
    test = read_adult(data_dir / "adult.test", test=True)
    transformer = encoder()
    x_train = np.asarray(transformer.fit_transform(train[list(FEATURES)]), dtype=np.float64)
    x_test = np.asarray(transformer.transform(test[list(FEATURES)]), dtype=np.float64)
    y_train = (train["income"] == ">50K").to_numpy(dtype=np.int64)
    y_test = (test["income"] == ">50K").to_numpy(dtype=np.int64)
    groups = tuple(
        tuple(range(transformer.output_indices_[c].start, transformer.output_indices_[c].stop))
        for c in FEATURES
    )
    names = tuple(name.split("__", 1)[1] for name in transformer.get_feature_names_out())
    model = LogisticRegression(max_iter=1000, random_state=seed)
    model.fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    return AdultWorkload(x_train, y_train, x_test, y_test, names, FEATURES, groups, model, accuracy)
