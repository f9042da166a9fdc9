"""Write a run's results: SHAP values as CSV, summary.json and a summary plot (PNG)."""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def values_frame(
    values: npt.NDArray[np.float64],
    row_ids: Sequence[int],
    feature_names: Sequence[str],
    class_names: Sequence[str],
) -> pd.DataFrame:
    """One line per (row, class): the row's number in the data, the class, a column per feature."""
    n_rows, n_features, n_classes = values.shape
    flat = values.transpose(0, 2, 1).reshape(n_rows * n_classes, n_features)
    frame = pd.DataFrame(flat, columns=list(feature_names))
    frame.insert(0, "class", np.tile(np.asarray(class_names, dtype=object), n_rows))
    frame.insert(0, "row", np.repeat(np.asarray(row_ids), n_classes))
    return frame


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    # repr-exact floats: these values go to regulators and get compared to 1e-9.
    _write_atomic(path, frame.to_csv(index=False, float_format="%.17g").encode())


CSV_MAX_LINES = 100_000  # larger values tables are written as Parquet only


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """The table ``write_csv`` writes, as Parquet: float64 values kept to the last bit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    _write_atomic(path, sink.getvalue().to_pybytes())


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


def write_plot(
    path: Path,
    values: npt.NDArray[np.float64],
    rows: npt.NDArray[np.float64] | None,
    feature_names: Sequence[str],
    class_names: Sequence[str],
) -> None:
    """Mean |SHAP value| per player; ``rows`` None when players are groups of columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    per_class = [values[:, :, k] for k in range(values.shape[2])]
    shap.summary_plot(
        per_class if len(per_class) > 1 else per_class[0],
        rows,
        feature_names=list(feature_names),
        class_names=[f"class {c}" for c in class_names],
        plot_type="bar",
        show=False,
    )
    figure = plt.gcf()
    figure.suptitle("Mean |SHAP value| per feature (distributed KernelSHAP)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
