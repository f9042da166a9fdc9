"""Issue 9 through the real CLI on a local Ray instance: each fault's right value, groups."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from shapcluster.cli import app
from shapcluster.errors import ExitStatus

pytestmark = pytest.mark.ray
runner = CliRunner()


def submit(*args: str):
    return runner.invoke(app, ["submit", "--local", *args])


def strict(path: Path) -> dict:
    """summary.json parsed as strict JSON: a bare NaN or Infinity fails."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def wine12_csv(wine_csv: Path, tmp_path: Path) -> Path:
    """The wine file with a 12th feature (seeded noise): 12 players, so shap samples by default."""
    frame = pd.read_csv(wine_csv, sep=";")
    frame.insert(11, "noise", np.random.default_rng(0).normal(size=len(frame)).round(6))
    path = tmp_path / "wine12.csv"
    frame.to_csv(path, sep=";", index=False)
    return path


def test_exact_enumeration_that_cannot_fit_is_refused_in_under_a_second(tmp_path):
    """Fault 3: 40 features, --nsamples exact: refused before Ray starts, exit 3."""
    import ray

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 40)), columns=[f"f{i}" for i in range(40)])
    frame["quality"] = rng.integers(0, 2, size=60)
    path = tmp_path / "wide.csv"
    frame.to_csv(path, index=False)
    started = ray.is_initialized()
    start = time.perf_counter()
    result = submit("--data", str(path), "--nsamples", "exact", "--rows", "1", "--background", "5")
    seconds = time.perf_counter() - start
    assert result.exit_code == ExitStatus.INPUT, result.output
    assert seconds < 1.0, seconds
    assert ray.is_initialized() == started and "Starting a local Ray" not in result.output
    text = " ".join(result.output.split())
    assert "1,099,511,627,774 coalitions" in text
    assert "PB of memory" in text and "GB budget" in text and "--nsamples 2128" in text


def test_logit_link_on_a_forest_matches_shap(local_ray, wine_csv, tmp_path):
    """Fault 1: probabilities of exactly 0 and 1 gave NaN values, exit 4 and bare NaN in JSON."""
    result = submit(
        "--data", str(wine_csv), "--rows", "4", "--link", "logit", "--trees", "10", "--background", "30",
        "--output-dir", str(tmp_path), "--run-id", "logit",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = strict(tmp_path / "logit" / "summary.json")
    comparison = summary["comparison"]
    assert comparison["verdict"] == "match" and comparison["max_abs_diff"] <= 1e-9
    ours = pd.read_csv(tmp_path / "logit" / "shap_values.csv")
    assert np.isfinite(ours.iloc[:, 2:].to_numpy()).all()
    assert np.abs(ours.iloc[:, 2:].to_numpy()).max() > 5  # logit-scale values of 0/1 probabilities


def test_a_varying_timestamp_is_explained_and_shaps_zero_is_named(local_ray, tmp_path):
    """Fault 2: shap's np.allclose calls t = 1.7e9 + uniform(0, 5000) constant. Ours gives t
    the effect; the verdict names t and says why instead of a bare MISMATCH."""
    rng = np.random.default_rng(3)
    t = 1.7e9 + rng.uniform(0, 5000, 300)
    frame = pd.DataFrame({"t": t, "noise1": rng.normal(size=300), "noise2": rng.normal(size=300)})
    frame["quality"] = (t > 1.7e9 + 2500).astype(int)
    path = tmp_path / "timestamps.csv"
    frame.to_csv(path, index=False, float_format="%.17g")
    result = submit(
        "--data", str(path), "--rows", "6", "--trees", "10", "--background", "40",
        "--output-dir", str(tmp_path), "--run-id", "t",
    )  # fmt: skip
    assert result.exit_code == ExitStatus.MISMATCH, result.output
    text = " ".join(result.output.split())
    assert "shap zeroes 't'" in text and "np.allclose" in text
    summary = strict(tmp_path / "t" / "summary.json")
    assert list(summary["comparison"]["reference_constant"]) == ["t"]
    ours = pd.read_csv(tmp_path / "t" / "shap_values.csv")
    reference = pd.read_csv(tmp_path / "t" / "reference_shap_values.csv")
    assert (reference["t"] == 0).all()
    assert ours["t"].abs().mean() > 5 * ours[["noise1", "noise2"]].abs().to_numpy().mean()


def test_reruns_are_byte_identical_whatever_workers_and_batch_size(local_ray, wine12_csv, tmp_path):
    """Fault 4 (and 5): 12 features sampled; same seed => same bytes, reference included."""
    common = ["--data", str(wine12_csv), "--rows", "3", "--trees", "5", "--background", "20"]
    common += ["--nsamples", "300", "--output-dir", str(tmp_path)]
    one = submit(*common, "--workers", "1", "--batch-size", "1", "--run-id", "a")
    two = submit(*common, "--workers", "2", "--batch-size", "2", "--run-id", "b")
    assert one.exit_code == 0, one.output
    assert two.exit_code == 0, two.output
    files = ["shap_values.csv", "reference_shap_values.csv", "shap_standard_errors.csv"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    first, second = strict(tmp_path / "a" / "summary.json"), strict(tmp_path / "b" / "summary.json")
    assert first["comparison"] == second["comparison"]
    assert first["comparison"]["verdict"] == "match" and first["exact"] is False
    assert first["comparison"]["standard_error_z"] > 3
    errors = pd.read_csv(tmp_path / "a" / "shap_standard_errors.csv")
    assert list(errors.columns) == list(pd.read_csv(tmp_path / "a" / "shap_values.csv").columns)
    errors = errors[first["players"]].to_numpy()
    assert (errors >= 0).all() and errors.max() > 0


def test_a_default_run_on_12_features_ends_in_match(local_ray, wine12_csv, tmp_path):
    """Fault 5: exact whenever affordable (here 4094 coalitions x 20 background x 2 rows)."""
    result = submit(
        "--data", str(wine12_csv), "--rows", "2", "--trees", "5", "--background", "20",
        "--output-dir", str(tmp_path), "--run-id", "d",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = strict(tmp_path / "d" / "summary.json")
    assert summary["exact"] is True and summary["nsamples"] == 4094
    assert summary["comparison"]["verdict"] == "match" and summary["comparison"]["max_abs_diff"] <= 1e-9


def test_tol_samples_until_the_standard_errors_are_small(local_ray, wine12_csv, tmp_path):
    result = submit(
        "--data", str(wine12_csv), "--rows", "2", "--trees", "5", "--background", "10",
        "--nsamples", "100", "--tol", "0.004", "--no-reference",
        "--output-dir", str(tmp_path), "--run-id", "tol",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = strict(tmp_path / "tol" / "summary.json")
    assert summary["tol"] == 0.004 and summary["nsamples"] > 100
    if not summary["exact"]:
        errors = pd.read_csv(tmp_path / "tol" / "shap_standard_errors.csv")[summary["players"]].to_numpy()
        assert errors.max() <= 0.004
    assert "--tol 0.004" in result.output


def test_groups_file_makes_each_group_one_player_and_matches_shap(local_ray, wine_csv, tmp_path):
    groups = {
        "acidity": ["fixed acidity", "volatile acidity", "citric acid", "pH"],
        "sulfur": ["free sulfur dioxide", "total sulfur dioxide", "sulphates"],
    }
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(groups))
    result = submit(
        "--data", str(wine_csv), "--rows", "3", "--trees", "5", "--background", "20", "--groups", str(path),
        "--output-dir", str(tmp_path), "--run-id", "g",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = strict(tmp_path / "g" / "summary.json")
    players = ["acidity", "residual sugar", "chlorides", "sulfur", "density", "alcohol"]
    assert summary["players"] == players and summary["groups"] == groups
    assert summary["exact"] is True and summary["nsamples"] == 2**6 - 2
    assert summary["comparison"]["verdict"] == "match" and summary["comparison"]["max_abs_diff"] <= 1e-9
    ours = pd.read_csv(tmp_path / "g" / "shap_values.csv")
    context = ["row", "data_line", "class", "label", "expected_value", "model_output"]
    assert list(ours.columns)[: len(context) + len(players)] == [*context, *players]


def test_a_bad_groups_file_is_refused_before_ray_starts(tmp_path, wine_csv):
    path = tmp_path / "groups.toml"
    path.write_text('acidity = ["fixed acidity", "acidity of the soul"]\n')
    result = submit("--data", str(wine_csv), "--groups", str(path))
    assert result.exit_code == ExitStatus.INPUT, result.output
    text = " ".join(result.output.split())
    assert str(path) in text and "'acidity of the soul'" in text


def test_background_weights_column_is_shaps_weighted_background(local_ray, wine_csv, tmp_path):
    frame = pd.read_csv(wine_csv, sep=";")
    frame.insert(0, "w", np.random.default_rng(1).integers(1, 6, size=len(frame)))
    path = tmp_path / "weighted.csv"
    frame.to_csv(path, sep=";", index=False)
    common = ["--rows", "2", "--trees", "5", "--background", "20", "--output-dir", str(tmp_path)]
    weighted = submit("--data", str(path), "--background-weights", "w", *common, "--run-id", "w")
    assert weighted.exit_code == 0, weighted.output
    summary = strict(tmp_path / "w" / "summary.json")
    assert "w" not in summary["feature_names"] and summary["background_weights"] == "w"
    assert summary["comparison"]["verdict"] == "match" and summary["comparison"]["max_abs_diff"] <= 1e-9
    plain = submit("--data", str(wine_csv), *common, "--run-id", "p")
    assert plain.exit_code == 0, plain.output
    unweighted = strict(tmp_path / "p" / "summary.json")
    assert unweighted["row_ids"] == summary["row_ids"]  # the same rows and background, unweighted
    assert not np.allclose(unweighted["expected_value"], summary["expected_value"], rtol=0, atol=1e-6)


def test_run_distributed_shap_with_groups_and_weights_equals_the_in_process_explainer(local_ray, wine_csv):
    """The API the benchmarks use: same values as kernel_shap.explain, sampled and exact."""
    import ray

    from app import etl, kernel_shap, model
    from app.dag import run_distributed_shap

    split = model.split_data(etl.load_dataset(str(wine_csv)))
    forest = model.train_forest(split, n_estimators=3).model
    data = model.get_data_to_explain(split, rows=3, background=15)
    groups = [[0, 1, 2], [3], [4, 9], [5, 6], [7], [8], [10]]
    weights = np.arange(1.0, 16.0)
    model_ref = ray.put(forest)
    for nsamples in (None, 40):
        ours = run_distributed_shap(
            model_ref,
            data,
            nsamples=nsamples,
            seed=3,
            groups=groups,
            background_weights=weights,
            batch_size=1,
        )
        alone = kernel_shap.explain(
            forest.predict_proba, data.rows, data.background, nsamples=nsamples, seed=3, groups=groups,
            background_weights=weights, dtype=model.input_dtype(forest),
        )  # fmt: skip
        assert ours.values.shape == (3, 7, len(forest.classes_))
        np.testing.assert_allclose(ours.values, alone.values, rtol=0, atol=1e-12)
        assert ours.exact == (nsamples is None) and (ours.standard_errors is None) == ours.exact
        if alone.standard_errors is not None:
            np.testing.assert_allclose(ours.standard_errors, alone.standard_errors, rtol=0, atol=1e-12)
