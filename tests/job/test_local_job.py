"""The whole DAG on a local Ray instance with the real wine file, through the real CLI."""

from __future__ import annotations

import json
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


def test_submit_local_runs_the_whole_dag(wine_csv: Path, tmp_path: Path):
    """Starts and stops its own Ray instance, exactly as a user's `submit --local` does."""
    import ray

    assert not ray.is_initialized()
    result = submit(
        "--data", str(wine_csv), "--rows", "3", "--cpus", "2", "--output-dir", str(tmp_path), "--run-id", "r1"
    )
    assert result.exit_code == 0, result.output
    assert not ray.is_initialized()  # the job shut down the instance it started
    out = tmp_path / "r1"
    beeswarms = [f"beeswarm_class_{c}.png" for c in range(3, 9)]
    summary = json.loads((out / "summary.json").read_text())
    files = sorted([*beeswarms, "explanation.npz", "reference_shap_values.csv",
                    "reference_shap_values.parquet", "shap_summary.png", "shap_values.csv",
                    "shap_values.parquet", f"waterfall_row_{summary['row_ids'][0]}.png"])  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "summary.json"])
    assert summary["files"] == files
    assert (summary["seed"], summary["test_size"]) == (0, 0.2)
    assert set(summary["versions"]) >= {"shap", "scikit-learn", "ray", "shapcluster", "python"}
    assert summary["versions"]["shapcluster"] and summary["versions"]["shap"]
    assert summary["comparison"]["verdict"] == "match"
    assert summary["comparison"]["max_abs_diff"] <= 1e-9
    assert summary["comparison"]["additivity_error_ours"] <= 1e-9
    assert (summary["rows"], summary["features"], summary["background"]) == (3, 11, 100)
    assert summary["nsamples"] == 2046 and summary["exact"] is True
    assert summary["classes"] == ["3", "4", "5", "6", "7", "8"]
    assert summary["cpus"] == 2
    (node,) = summary["nodes"]  # a local run: one node
    assert node["cpus"] == 2 and node["id"] and node["ip"]
    assert summary["nodes_lost"] == [] and "node lost" not in result.output
    assert summary["comparison"]["skipped"] is False
    for step in ("etl", "create_model", "get_data_to_explain", "warm_up", "compare_results", "write_results"):
        assert summary["wall_seconds"][step] >= 0
    ours = pd.read_csv(out / "shap_values.csv")
    theirs = pd.read_csv(out / "reference_shap_values.csv")
    assert len(ours) == 3 * 6 and list(ours.columns[:6]) == [
        "row",
        "data_line",
        "class",
        "label",
        "expected_value",
        "model_output",
    ]
    assert (ours["data_line"] == ours["row"] + 2).all()  # line 1 of the file is the header
    assert list(ours["row"].unique()) == summary["row_ids"]
    features = summary["feature_names"]
    assert np.abs(ours[features].to_numpy() - theirs[features].to_numpy()).max() <= 1e-9
    # Additivity from the written files alone: per row, the classes' values sum to f(x) - E[f],
    # and f(x) sums to 1 over the classes, as does E[f]: so the grand total per row is 0.
    assert np.abs(ours.groupby("row")[features].sum().to_numpy().sum(axis=1)).max() <= 1e-9
    assert (out / "shap_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Verdict: match" in result.output
    assert "Timings" in result.output


def test_sweep_trains_candidates_in_parallel_and_keeps_the_best(local_ray, wine_csv, tmp_path):
    result = submit(
        "--data",
        str(wine_csv),
        "--rows",
        "1",
        "--sweep",
        "3,12",
        "--output-dir",
        str(tmp_path),
        "--run-id",
        "s",
    )
    assert result.exit_code == 0, result.output
    assert "Model sweep" in result.output
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["model"]["trees"] == 12  # 12 trees beat 3 on held-out accuracy here
    assert summary["comparison"]["verdict"] == "match"


def test_sampling_mode_matches_within_the_standard_errors(local_ray, wine_csv, tmp_path):
    """Issue 9, fault 5: two sampled estimates differ by noise, judged against their errors."""
    result = submit(
        "--data",
        str(wine_csv),
        "--rows",
        "1",
        "--trees",
        "5",
        "--nsamples",
        "200",
        "--output-dir",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert "sampling mode" in result.output
    assert "sqrt(se_ours^2 + se_shap^2)" in result.output


def test_error_inside_a_ray_task_reaches_the_user_unwrapped(local_ray, wine_csv, tmp_path):
    result = submit("--data", str(wine_csv), "--rows", "100000", "--output-dir", str(tmp_path))
    assert result.exit_code == ExitStatus.INPUT, result.output
    assert "--rows 100000 asks for more rows than the test split has (320)" in result.output
    assert "RayTaskError" not in result.output and "Traceback" not in result.output


def test_bundled_dataset_when_no_data_is_given(local_ray, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = submit("--rows", "1", "--trees", "5", "--background", "20")
    assert result.exit_code == 0, result.output
    assert "bundled wine dataset" in result.output
    (run,) = (tmp_path / "results").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["features"] == 13 and summary["exact"] is True and summary["nsamples"] == 8190
    assert summary["comparison"]["verdict"] == "match"


def test_no_reference_runs_our_explainer_alone(local_ray, wine_csv, tmp_path, capsys):
    from app.__main__ import main

    argv = ["--data", str(wine_csv), "--rows", "2", "--trees", "5", "--background", "20"]
    status = main([*argv, "--no-reference", "--output-dir", str(tmp_path), "--run-id", "alone"])
    assert status == 0
    out = tmp_path / "alone"
    written = {p.name for p in out.iterdir()}
    assert {
        "shap_summary.png",
        "shap_values.csv",
        "shap_values.parquet",
        "summary.json",
        "explanation.npz",
    } <= written
    assert not (out / "reference_shap_values.csv").exists()
    summary = json.loads((out / "summary.json").read_text())
    from app.contract import SUMMARY_KEYS

    assert set(SUMMARY_KEYS) <= set(summary)
    comparison = summary["comparison"]
    assert comparison["skipped"] is True and comparison["match"] is True
    assert comparison["additivity_error_ours"] <= 1e-9
    assert summary["wall_seconds"]["distributed KernelSHAP"] > 0  # what the scaling benchmark reads
    assert "shap.KernelExplainer" not in summary["wall_seconds"]
    assert summary["tasks"].keys() == summary["cpu_seconds"].keys() == {"ours"}
    printed = capsys.readouterr().out
    assert "reference skipped (--no-reference)" in printed
    assert "shap.KernelExplainer" not in printed
