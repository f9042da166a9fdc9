"""--algorithm tree through the real CLI on a local Ray instance with the real wine file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from shapcluster.cli import app
from shapcluster.errors import ExitStatus

pytestmark = pytest.mark.ray
runner = CliRunner()
SMALL = ("--rows", "6", "--trees", "10", "--background", "30", "--cpus", "2")


def test_tree_algorithm_runs_checks_and_says_so(wine_csv: Path, tmp_path: Path) -> None:
    args = ["submit", "--local", "--data", str(wine_csv), *SMALL, "--algorithm", "tree"]
    result = runner.invoke(app, [*args, "--output-dir", str(tmp_path), "--run-id", "t"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["algorithm"] == "tree"
    assert "--algorithm tree" in summary["algorithm_reason"]
    assert summary["explains"].startswith("probability")
    check = summary["check"]
    assert check["against"] == "exact KernelSHAP" and len(check["checked_rows"]) == 4
    assert check["max_abs_diff"] <= 1e-9 and check["additivity_error_all_rows"] <= 1e-9
    assert check["match"] is True
    values = pd.read_csv(tmp_path / "t" / "shap_values.csv")
    assert len(values) == 6 * 6  # rows x classes
    assert "exact KernelSHAP check" in summary["wall_seconds"]


def test_a_difference_above_tolerance_exits_4(wine_csv: Path, tmp_path: Path) -> None:
    """Tolerance 0: the tree path and the exact kernel differ by rounding (~1e-15), so exit 4."""
    args = ["submit", "--local", "--data", str(wine_csv), *SMALL, "--algorithm", "auto", "--tolerance", "0"]
    result = runner.invoke(app, [*args, "--output-dir", str(tmp_path), "--run-id", "z"])
    assert result.exit_code == ExitStatus.MISMATCH, result.output
    summary = json.loads((tmp_path / "z" / "summary.json").read_text())
    assert summary["algorithm"] == "tree" and summary["algorithm_reason"].startswith("auto:")
    assert summary["check"]["match"] is False
