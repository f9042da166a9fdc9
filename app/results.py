"""Write a run's results: values as CSV, an explanation file for shap, summary.json, plots (PNG).

The writing functions take the values plus an ``ExplainedRows`` (what was explained) and a
folder or path; each writes atomically. Conventions: R rows, M features, G players (M, or the
groups of --groups), K classes.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.tabular import ColumnCodec


@dataclass(frozen=True)
class ExplainedRows:
    """What the explained rows are, written beside their SHAP values.

    Conventions: R explained rows, M features, K model outputs (one per class).
    ``row_ids``: each row's 0-based position in the data (pandas' index: the first data row, on
    the line after the header, is 0). ``data_lines``: its 1-based line number in the CSV file
    (the header is line 1, so ``data_line = row + 2``); None when the data has no file (the
    bundled wine data).
    """

    row_ids: npt.NDArray[np.int64]  # (R,)
    data_lines: npt.NDArray[np.int64] | None  # (R,) or None
    features: npt.NDArray[np.float64]  # (R, M): the rows' feature values, as the model saw them
    feature_names: Sequence[str]  # (M,)
    labels: npt.NDArray[Any] | None  # (R,): the true label of each row, None if unknown
    outputs: npt.NDArray[np.float64]  # (R, K): the model's output, in the explanation's link space
    expected_value: npt.NDArray[np.float64]  # (K,): the expected (base) value, same space
    class_names: Sequence[str]  # (K,): in the model's order (scikit-learn's sorted classes_)
    # How the features' codes decode to the user's values (text, booleans, integers); None: floats
    codec: ColumnCodec | None = None

    def user_values(self) -> pd.DataFrame | None:
        """(R, M) the rows' values as the user wrote them (text, not its code), or None when the
        features are plain floats (their codes are their values)."""
        if self.codec is None or self.codec.all_float or list(self.codec.names) != list(self.feature_names):
            return None
        return self.codec.decode(np.asarray(self.features))

    def __post_init__(self) -> None:
        n_rows = len(self.row_ids)
        if self.outputs.shape != (n_rows, len(self.class_names)):
            raise ValueError(f"outputs {self.outputs.shape} != (R, K) = ({n_rows}, {len(self.class_names)})")
        if self.features.shape != (n_rows, len(self.feature_names)):
            raise ValueError(
                f"features {self.features.shape} != (R, M) = ({n_rows}, {len(self.feature_names)})"
            )
        for name in ("features", "outputs", "expected_value"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name} holds a non-finite number")


@dataclass(frozen=True)
class BlockRows:
    """A block of rows read to be explained: codes (R, M), row ids (R,), 1-based CSV lines (R,)
    or None, true labels (R,) or None."""

    codes: npt.NDArray[np.float64]
    row_ids: npt.NDArray[np.int64]
    data_lines: npt.NDArray[np.int64] | None
    labels: npt.NDArray[Any] | None

    def explained(
        self,
        feature_names: Sequence[str],
        outputs: npt.NDArray[np.float64],
        expected_value: npt.NDArray[np.float64],
        class_names: Sequence[str],
        codec: ColumnCodec | None = None,
    ) -> ExplainedRows:
        """These rows as ExplainedRows, with the model's ``outputs`` (R, K) and expected value (K,)."""
        return ExplainedRows(
            row_ids=self.row_ids,
            data_lines=self.data_lines,
            features=self.codes,
            feature_names=list(feature_names),
            labels=self.labels,
            outputs=np.asarray(outputs, dtype=np.float64),
            expected_value=np.asarray(expected_value, dtype=np.float64).reshape(-1),
            class_names=list(class_names),
            codec=codec,
        )


def data_lines_of(row_ids: npt.ArrayLike, from_file: bool) -> npt.NDArray[np.int64] | None:
    """1-based CSV line numbers of 0-based data rows (line 1 is the header), None without a file."""
    return np.asarray(row_ids, dtype=np.int64) + 2 if from_file else None


VALUE_PREFIX = "value:"  # feature-value columns: "value:alcohol" beside the SHAP column "alcohol"


def values_frame(
    values: npt.NDArray[np.float64], rows: ExplainedRows, player_names: Sequence[str]
) -> pd.DataFrame:
    """One line per (explained row, class); ``values`` (R, G, K), G players (features or groups).

    Columns: ``row`` (0-based data row), ``data_line`` (1-based CSV line, empty without a file),
    ``class``, ``label`` (the row's true label), ``expected_value`` and ``model_output`` (of that
    class, link space), one column of SHAP values per player (its name), then the row's feature
    values as ``value:<feature>``. Per line, the SHAP values sum to model_output - expected_value.
    """
    n_rows, n_players, n_classes = values.shape
    if n_players != len(player_names) or n_classes != len(rows.class_names) or n_rows != len(rows.row_ids):
        raise ValueError(f"values {values.shape} do not match {n_rows} rows, players and classes")
    if not np.all(np.isfinite(values)):
        raise ValueError("SHAP values hold a non-finite number")
    flat = values.transpose(0, 2, 1).reshape(n_rows * n_classes, n_players)
    frame = pd.DataFrame(flat, columns=list(player_names))
    repeat = functools.partial(np.repeat, repeats=n_classes)
    lines = repeat(rows.data_lines) if rows.data_lines is not None else [pd.NA] * (n_rows * n_classes)
    labels = repeat(np.asarray(rows.labels)) if rows.labels is not None else [pd.NA] * (n_rows * n_classes)
    head = pd.DataFrame(
        {
            "row": repeat(np.asarray(rows.row_ids)),
            "data_line": pd.array(lines, dtype="Int64"),
            "class": np.tile(np.asarray(rows.class_names, dtype=object), n_rows),
            "label": labels,
            "expected_value": np.tile(rows.expected_value, n_rows),
            "model_output": rows.outputs.reshape(-1),
        }
    )
    value_names = [VALUE_PREFIX + str(name) for name in rows.feature_names]
    user = rows.user_values()  # text columns as their text, not their codes
    if user is None:
        feature_values = pd.DataFrame(np.repeat(rows.features, n_classes, axis=0), columns=value_names)
    else:
        feature_values = user.loc[user.index.repeat(n_classes)].reset_index(drop=True)
        feature_values.columns = value_names
    return pd.concat([head, frame, feature_values], axis=1)


def write_explanation(
    path: Path,
    values: npt.NDArray[np.float64],
    rows: ExplainedRows,
    player_names: Sequence[str],
    standard_errors: npt.NDArray[np.float64] | None = None,
) -> None:
    """An ``.npz`` whose arrays are exactly ``shap.Explanation``'s arguments, no pickled objects:

        explanation = shap.Explanation(**np.load(path))

    ``values`` (R, G, K), ``base_values`` (R, K), ``feature_names`` (G,), ``output_names`` (K,),
    ``data`` (R, M) when the players are the features (absent with --groups; numbers: a text
    column's code, which shap's plots colour by), ``display_data`` (R, M) strings of the values as
    the user wrote them when some column is text, boolean or integer, ``error_std`` (R, G, K) in
    sampling mode. Slice one class for shap's single-output plots:
    ``explanation[:, :, k]``.
    """
    arrays: dict[str, npt.NDArray[Any]] = {
        "values": np.asarray(values, dtype=np.float64),
        "base_values": np.broadcast_to(
            rows.expected_value, (len(rows.row_ids), len(rows.class_names))
        ).copy(),
        "feature_names": np.asarray([str(n) for n in player_names], dtype=str),
        "output_names": np.asarray([str(c) for c in rows.class_names], dtype=str),
    }
    if len(player_names) == len(rows.feature_names):
        arrays["data"] = np.asarray(rows.features, dtype=np.float64)
        user = rows.user_values()
        if user is not None:
            arrays["display_data"] = user.astype(str).to_numpy(dtype=str)
    if standard_errors is not None:
        arrays["error_std"] = np.asarray(standard_errors, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    _write_atomic(path, buffer.getvalue())


def versions() -> dict[str, str | None]:
    """Versions of what made the numbers (None: not installed where the job ran, e.g.
    shapcluster inside the cluster's image); read from package metadata, nothing imported."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("shap", "scikit-learn", "ray", "numpy", "pandas", "shapcluster"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    # repr-exact floats: these values go to regulators and get compared to 1e-9.
    _write_atomic(path, frame.to_csv(index=False, float_format="%.17g").encode())


CSV_MAX_LINES = 100_000  # larger values tables are written as Parquet only


def write_parquet(path: Path, frame: pd.DataFrame, metadata: dict[str, str] | None = None) -> None:
    """The table ``write_csv`` writes, as Parquet: float64 values kept to the last bit.
    ``metadata``: extra key-value pairs of the file's schema (read back with parquet_metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        extra = {k.encode(): v.encode() for k, v in metadata.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    pq.write_table(table, sink)
    _write_atomic(path, sink.getvalue().to_pybytes())


def parquet_metadata(path: Path) -> dict[str, str]:
    """The key-value pairs of a Parquet file's schema (only its footer is read)."""
    import pyarrow.parquet as pq

    found = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in found.items()}


def write_values(path: Path, frame: pd.DataFrame) -> list[str]:
    """``path`` as .parquet, and as .csv too when it has at most CSV_MAX_LINES lines; the names written."""
    parquet = path.with_suffix(".parquet")
    write_parquet(parquet, frame)
    written = [parquet.name]
    if len(frame) <= CSV_MAX_LINES:
        write_csv(path.with_suffix(".csv"), frame)
        written.append(path.with_suffix(".csv").name)
    return written


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinity) replaced by None: summary.json is
    strict JSON always (null where a number could not be computed; the verdict says why)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.floating):
        return strict_json(float(value))
    return value


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    text = json.dumps(strict_json(summary), indent=2, sort_keys=False, allow_nan=False)
    _write_atomic(path, (text + "\n").encode())


def write_plots(
    out_dir: Path,
    values: npt.NDArray[np.float64],
    rows: ExplainedRows,
    player_names: Sequence[str],
    *,
    mean_abs: npt.NDArray[np.float64] | None = None,
    all_rows: int | None = None,
) -> list[str]:
    """The PNGs; returns their file names. ``values`` (R, G, K).

    - ``shap_summary.png``: mean |SHAP value| per player, one stacked bar per class in the
      model's class order;
    - ``beeswarm_class_<c>.png``: shap's beeswarm of class c (colour: the feature's value; grey
      with --groups, whose players have no single value);
    - ``waterfall_row_<row>.png``: shap's waterfall of the first explained row, for the class the
      model gives the highest output.
    Every title says how many rows it shows; figures are saved with tight bounds so labels fit.
    A streamed run passes ``mean_abs`` (G, K) over all of its ``all_rows`` rows for the bar chart,
    and the first rows' values for the others.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    n_rows = values.shape[0]
    rows_text = f"{n_rows} explained row{'s' if n_rows != 1 else ''}"
    bar_text = rows_text
    if all_rows is not None:
        bar_text = f"{all_rows:,} explained row{'s' if all_rows != 1 else ''}"
        rows_text = f"the first {n_rows:,} of {bar_text}"
    names: list[str] = []

    def save(name: str, title: str, pad: float = 6.0) -> None:
        figure = plt.gcf()
        figure.axes[0].set_title(title, fontsize=11, pad=pad)
        figure.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        plt.close(figure)
        names.append(name)

    out_dir.mkdir(parents=True, exist_ok=True)
    _mean_abs_bar(
        np.abs(values).mean(axis=0) if mean_abs is None else mean_abs, player_names, rows.class_names
    )
    save("shap_summary.png", f"Mean |SHAP value| per feature over {bar_text}")
    data = rows.features if len(player_names) == len(rows.feature_names) else None
    explanation = shap.Explanation(
        values=values,
        base_values=np.broadcast_to(rows.expected_value, (n_rows, len(rows.class_names))),
        data=data,
        feature_names=[str(n) for n in player_names],
        output_names=[str(c) for c in rows.class_names],
    )
    for k, class_name in enumerate(rows.class_names):
        shap.plots.beeswarm(explanation[:, :, k], show=False, max_display=len(player_names) + 1)
        save(f"beeswarm_class_{_safe(class_name)}.png", f"Class {class_name}: SHAP values of {rows_text}")
    k = int(np.argmax(rows.outputs[0]))
    line = "" if rows.data_lines is None else f", data line {int(rows.data_lines[0])}"
    label = "" if rows.labels is None else f", label {rows.labels[0]}"
    shap.plots.waterfall(explanation[0, :, k], show=False, max_display=len(player_names) + 1)
    save(
        f"waterfall_row_{int(rows.row_ids[0])}.png",
        f"Row {int(rows.row_ids[0])}{line}{label}: class {rows.class_names[k]} (highest output), 1 row",
        pad=26.0,  # above shap's f(x) label
    )
    return names


def _mean_abs_bar(
    mean_abs: npt.NDArray[np.float64], player_names: Sequence[str], class_names: Sequence[str]
) -> None:
    """Stacked horizontal bars of mean |SHAP| (G, K); the largest total on top, classes in order."""
    import matplotlib.pyplot as plt

    order = np.argsort(mean_abs.sum(axis=1))  # ascending: barh draws bottom-up
    figure, axis = plt.subplots(figsize=(8, 0.4 * len(player_names) + 1.6))
    left = np.zeros(len(order))
    colours = plt.get_cmap("viridis", max(len(class_names), 2))
    for k, class_name in enumerate(class_names):
        axis.barh(
            [str(player_names[g]) for g in order], mean_abs[order, k], left=left, color=colours(k),
            label=f"class {class_name}",
        )  # fmt: skip
        left += mean_abs[order, k]
    axis.set_xlabel("mean |SHAP value| (stacked over classes)")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()


def _safe(name: object) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # results are for sharing; mkstemp would make them 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
