"""Issue 10 end to end: `submit --local` explains the user's skops Pipeline (text categories, a
OneHotEncoder) on a Parquet file, rows to explain and background from files of their own, matching
shap.KernelExplainer, with Parquet values equal to the CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from typer.testing import CliRunner

from app.contract import SUMMARY_KEYS
from shapcluster.cli import app


def test_submit_local_explains_a_skops_pipeline_on_parquet(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 120
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.integers(1, 5, n)
    organic = rng.random(n) < 0.5
    weight = rng.normal(size=n)
    score = (colour == "red") * 1.5 + size * 0.4 - organic * 0.7 + weight + rng.normal(scale=0.3, size=n)
    frame = pd.DataFrame(
        {"colour": colour, "size": size, "organic": organic, "weight": weight, "grade": score > 1.0}
    )
    frame["grade"] = np.where(frame["grade"], "good", "bad")
    frame.to_parquet(tmp_path / "shop.parquet")
    columns = ["colour", "size", "organic", "weight"]
    encode = ColumnTransformer([("text", OneHotEncoder(), ["colour"])], remainder=StandardScaler())
    fitted = make_pipeline(encode, LogisticRegression()).fit(frame[columns], frame["grade"])
    sio.dump(fitted, tmp_path / "shop.skops")

    frame[columns][:2].to_csv(tmp_path / "explain.csv", index=False)  # the rows to explain, own file
    frame[columns][50:70].to_parquet(tmp_path / "background.parquet")
    data, model = str(tmp_path / "shop.parquet"), str(tmp_path / "shop.skops")
    argv = ["--data", data, "--model", model, "--label", "grade", "--rows", "3", "--background", "15"]
    argv += ["--explain", str(tmp_path / "explain.csv")]
    argv += ["--background-data", str(tmp_path / "background.parquet")]
    out_args = ["--output-dir", str(tmp_path), "--run-id", "own"]
    result = CliRunner().invoke(app, ["submit", "--local", "--cpus", "2", *argv, *out_args])
    assert result.exit_code == 0, result.output
    out = tmp_path / "own"
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["comparison"]["verdict"] == "match" and summary["comparison"]["max_abs_diff"] <= 1e-9
    assert summary["feature_names"] == columns and summary["classes"] == ["bad", "good"]
    assert summary["model"]["type"] == "Pipeline" and summary["model"]["task"] == "classification"
    assert 0.5 <= summary["model"]["score"] <= 1.0  # scored on the held-out rows: --label was given
    values = pd.read_parquet(out / "shap_values.parquet")
    # data_line is nullable (empty without a file): Int64 in Parquet, int64 once CSV is read back
    pd.testing.assert_frame_equal(
        values, pd.read_csv(out / "shap_values.csv"), check_exact=True, check_dtype=False
    )
    context = ["row", "data_line", "class", "label", "expected_value", "model_output"]
    assert list(values.columns) == [*context, *columns, *[f"value:{c}" for c in columns]]
    assert summary["rows"] == 2 and summary["row_ids"] == [0, 1]  # --explain's two rows, not --rows 3
    assert summary["background"] == 15  # a sample of --background-data's 20 rows
