"""Typed tables through a numeric kernel: each user column gets a float64 code and back.

Conventions: N rows, M user columns (the players, before any groups), K model outputs.

KernelSHAP only copies values: a synthetic row takes each column either from the explained row
or from a background row, never a value in between. So the kernel can run on a float64 matrix
of codes, (N, M), and the function it explains decodes the synthetic rows back into a DataFrame
with the user's own column types (text categories, booleans, integers, floats) before the
model's own pipeline (ColumnTransformer, OneHotEncoder, ...) sees them. The explanation is then
of the user's columns, exactly as shap.KernelExplainer on the same raw-column function would
give it (tested to 1e-9), with no cast of the table to one float matrix for the model.

Codes: a float column is its own code (bit-identical); an integer column is its value (exact
below 2^53); a boolean is 0/1; a text (or categorical) column is the index of its value in the
sorted list of the column's values in the table that was coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.errors import DataError

FLOAT, INT, BOOL, CATEGORY = "float", "int", "bool", "category"


def column_kind(series: pd.Series) -> str | None:
    """The kind of a column, or None for a type the job cannot explain (dates, lists, bytes...)."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return BOOL
    if pd.api.types.is_integer_dtype(dtype):
        return INT
    if pd.api.types.is_float_dtype(dtype):
        return FLOAT
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
        values = series.dropna()
        if all(isinstance(v, str) for v in values):
            return CATEGORY
    return None


@dataclass(frozen=True)
class ColumnCodec:
    """How each of M columns becomes one float64 code column, and back."""

    names: tuple[str, ...]  # (M,)
    kinds: tuple[str, ...]  # (M,) FLOAT, INT, BOOL or CATEGORY
    dtypes: tuple[str, ...]  # (M,) the pandas dtype each decoded column gets back
    categories: tuple[tuple[str, ...], ...]  # (M,) the values a CATEGORY code indexes; () otherwise

    @classmethod
    def fit(cls, frame: pd.DataFrame, source: str = "the data") -> ColumnCodec:
        """The codec of a typed frame. Raises DataError naming a column of an unsupported type."""
        kinds, dtypes, categories = [], [], []
        for name in frame.columns:
            kind = column_kind(frame[name])
            if kind is None:
                raise DataError(
                    f"{source}: column {name!r} has type {frame[name].dtype}, which the job cannot "
                    "explain; use numbers, booleans or text categories (or leave it out with --features)."
                )
            kinds.append(kind)
            dtypes.append(str(frame[name].dtype))
            values = sorted({str(v) for v in frame[name].dropna()}) if kind == CATEGORY else []
            categories.append(tuple(values))
        return cls(tuple(str(c) for c in frame.columns), tuple(kinds), tuple(dtypes), tuple(categories))

    def without(self, name: str) -> ColumnCodec | None:
        """This codec less one column (None when every column left is a float)."""
        keep = [j for j, n in enumerate(self.names) if n != name]
        parts = (tuple(getattr(self, f)[j] for j in keep) for f in ("names", "kinds", "dtypes", "categories"))
        codec = ColumnCodec(*parts)
        return None if codec.all_float else codec

    @property
    def all_float(self) -> bool:
        return all(kind == FLOAT for kind in self.kinds)

    def encode(self, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        """(N, M) float64 codes of a frame with these columns. Raises DataError on an unknown
        category (a value the coded table did not have)."""
        codes = np.empty((len(frame), len(self.names)), dtype=np.float64)
        for j, (name, kind) in enumerate(zip(self.names, self.kinds, strict=True)):
            column = frame[name]
            if kind == CATEGORY:
                lookup = {value: i for i, value in enumerate(self.categories[j])}
                mapped = column.astype(str).map(lookup)
                if mapped.isna().any():
                    raise DataError(f"column {name!r}: value {column[mapped.isna()].iloc[0]!r} is not known")
                codes[:, j] = mapped.to_numpy(dtype=np.float64)
            else:
                codes[:, j] = column.to_numpy(dtype=np.float64)
        return codes

    def decode(self, codes: npt.NDArray[np.floating[Any]]) -> pd.DataFrame:
        """The typed frame of (N, M) codes: each column back in its own dtype."""
        columns: dict[str, Any] = {}
        for j, (name, kind) in enumerate(zip(self.names, self.kinds, strict=True)):
            code = codes[:, j]
            if kind == CATEGORY:
                values = np.asarray(self.categories[j], dtype=object)[code.astype(np.intp)]
                columns[name] = pd.Series(values, dtype=self.dtypes[j])
            elif kind == BOOL:
                columns[name] = pd.Series(code != 0, dtype=self.dtypes[j])
            elif kind == INT:
                columns[name] = pd.Series(code.astype(np.int64), dtype=self.dtypes[j])
            else:
                columns[name] = pd.Series(code, dtype=self.dtypes[j])
        return pd.DataFrame(columns)


class ModelFunction:
    """The function the job explains: (N, M) codes -> (N, K) outputs of a fitted estimator.

    Classifiers give ``predict_proba`` (every class, K = number of classes), regressors
    ``predict`` (K = 1). With a codec the rows reach the estimator as a typed DataFrame of the
    user's columns (its Pipeline does the rest); without one, as the float matrix itself.
    Named ``predict_proba`` so the job's steps call every model the same way.
    """

    def __init__(self, estimator: Any, codec: ColumnCodec | None, *, regression: bool, target: str = "value"):
        self.estimator = estimator
        self.codec = codec
        self.regression = regression
        self.classes_ = np.asarray([target]) if regression else np.asarray(estimator.classes_)

    def model_input(self, codes: npt.NDArray[np.floating[Any]]) -> Any:
        return codes if self.codec is None else self.codec.decode(codes)

    def predict_proba(self, codes: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """(N, K) float64 outputs of (N, M) codes."""
        rows = self.model_input(np.asarray(codes))
        if self.regression:
            return np.asarray(self.estimator.predict(rows), dtype=np.float64).reshape(len(codes), -1)
        return np.asarray(self.estimator.predict_proba(rows), dtype=np.float64)

    def score(self, codes: npt.NDArray[np.floating[Any]], labels: Any) -> float:
        """Accuracy (classifiers) or R^2 (regressors) of the estimator on coded rows."""
        return float(self.estimator.score(self.model_input(codes), labels))
