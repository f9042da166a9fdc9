"""Issue 10, streaming: rows to explain go through Ray Data in blocks, each written as a Parquet
part; the parts equal the in-memory run bit for bit, a rerun skips finished parts, the driver
reads back only the first rows, progress shows rows/s and time left, a bad cell in a later block
stops the job naming its line. Small: 1,500 rows, 4 features, 5 trees, background 10, local Ray;
the switch (stream.STREAM_MIN_ROWS) and the part size are lowered for the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import stream
from app.__main__ import main
from app.contract import SUMMARY_KEYS

pytestmark = pytest.mark.ray

FEATURES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 4))
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["grade"] = np.where(x[:, 0] + 0.5 * x[:, 1] - x[:, 2] * x[:, 3] > 0, "good", "bad")
    path = tmp_path_factory.mktemp("stream") / "table.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def small_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "STREAM_MIN_ROWS", 100)
    monkeypatch.setattr(stream, "BLOCK_ROWS", 200)
    monkeypatch.setattr(stream, "PROGRESS_SECONDS", 0.0)  # a line per part


def run(table: Path, out: Path, run_id: str, *extra: str) -> int:
    argv = ["--data", str(table), "--label", "grade", "--trees", "5", "--test-size", "0.5"]
    argv += ["--background", "10", "--output-dir", str(out), "--run-id", run_id, *extra]
    return main(argv)


def parts_of(run_dir: Path) -> pd.DataFrame:
    files = sorted((run_dir / stream.VALUES_PARTS).glob("rows-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def test_streamed_parts_equal_the_in_memory_run_bit_for_bit(
    local_ray, table, tmp_path, monkeypatch, capsys, small_stream
):
    assert run(table, tmp_path, "streamed", "--rows", "all") == 0
    printed = capsys.readouterr().out
    monkeypatch.setattr(stream, "STREAM_MIN_ROWS", 100_000)
    assert run(table, tmp_path, "memory", "--rows", "all", "--no-reference") == 0

    streamed, memory = tmp_path / "streamed", tmp_path / "memory"
    names = sorted(p.name for p in (streamed / stream.VALUES_PARTS).glob("*.parquet"))
    assert names == [stream.part_name(a, b) for a, b in [(0, 200), (200, 400), (400, 600), (600, 750)]]
    pd.testing.assert_frame_equal(
        parts_of(streamed), pd.read_parquet(memory / "shap_values.parquet"), check_exact=True
    )
    # what needs all values is not written; what is written says where it came from
    assert not (streamed / "shap_values.csv").exists() and not (streamed / "explanation.npz").exists()
    summary = json.loads((streamed / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary) and summary["rows"] == 750
    assert summary["streamed"]["parts"] == 4 and summary["streamed"]["parts_computed"] == 4
    assert summary["comparison"]["verdict"] == "match"
    assert len(summary["streamed"]["comparison_row_ids"]) == 16
    in_memory = json.loads((memory / "summary.json").read_text())
    assert summary["exact"] is True and summary["nsamples"] == in_memory["nsamples"] == 14
    values = stream.values_of(parts_of(streamed), FEATURES, 2)
    mean_abs = np.abs(values).mean(axis=0)  # (G, K)
    got = np.array([summary["mean_abs_shap"][f] for f in FEATURES])
    np.testing.assert_allclose(got, mean_abs, rtol=1e-12)
    assert summary["additivity_error_all_rows"] <= 1e-12
    assert {"shap_summary.png", "shap_values.parts/"} <= set(summary["files"])
    # progress: a line as each part completes, with the rate and the time left
    lines = [line for line in printed.splitlines() if "streamed" in line and "rows/s" in line]
    assert len(lines) == 4 and all(" left" in line for line in lines), printed
    assert "streamed 750/750 rows (100%)" in lines[-1]


def test_the_tree_path_streams_too_and_equals_its_in_memory_run(
    local_ray, table, tmp_path, monkeypatch, small_stream
):
    assert run(table, tmp_path, "tree", "--rows", "0:500", "--algorithm", "tree") == 0
    monkeypatch.setattr(stream, "STREAM_MIN_ROWS", 100_000)
    assert run(table, tmp_path, "tree-memory", "--rows", "0:500", "--algorithm", "tree") == 0
    pd.testing.assert_frame_equal(
        parts_of(tmp_path / "tree"),
        pd.read_parquet(tmp_path / "tree-memory" / "shap_values.parquet"),
        check_exact=True,
    )
    summary = json.loads((tmp_path / "tree" / "summary.json").read_text())
    assert summary["algorithm"] == "tree" and summary["streamed"]["parts"] == 3
    assert summary["check"]["against"] == "exact KernelSHAP" and summary["check"]["max_abs_diff"] <= 1e-12


def test_rerun_with_the_same_run_id_computes_only_the_missing_parts(
    local_ray, table, tmp_path, capsys, small_stream
):
    explain = tmp_path / "explain.parquet"
    pd.read_csv(table)[FEATURES].iloc[:700].to_parquet(explain, row_group_size=128)
    extra = ("--explain", str(explain), "--rows", "50:650", "--no-reference")
    assert run(table, tmp_path, "again", *extra) == 0
    run_dir = tmp_path / "again"
    first = parts_of(run_dir)
    assert first["row"].tolist()[::2] == list(range(50, 650))  # rows of the --explain file, 2 classes
    assert first["data_line"].isna().all()  # a Parquet file has no lines
    parts = run_dir / stream.VALUES_PARTS
    gone = parts / stream.part_name(250, 450)
    gone.unlink()  # as if the run had been stopped before this part was written
    kept = {p.name: p.stat().st_mtime_ns for p in parts.iterdir()}

    assert run(table, tmp_path, "again", *extra) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["streamed"]["parts_computed"] == 1 and summary["streamed"]["parts_read_back"] == 2
    assert all((parts / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())  # not rewritten
    pd.testing.assert_frame_equal(parts_of(run_dir), first, check_exact=True)
    # the parts of other settings are not taken for this run's
    assert run(table, tmp_path, "again", *extra, "--seed", "7") == 3
    assert "its parts were computed with other settings (seed differ)" in capsys.readouterr().err


def test_the_driver_reads_back_only_the_first_rows(local_ray, table, tmp_path, monkeypatch, small_stream):
    """The values stay in the parts: the driver reads the first part (shap's comparison and the
    plots of the first rows) and per-part sums, never the values of every row."""
    monkeypatch.setattr(stream, "PLOT_ROWS", 100)
    read: list[int] = []
    real = pd.read_parquet

    def counting(path, *args, **kwargs):  # in the driver only: the workers are other processes
        frame = real(path, *args, **kwargs)
        read.append(len(frame))
        return frame

    monkeypatch.setattr(pd, "read_parquet", counting)
    assert run(table, tmp_path, "flat", "--rows", "all", "--no-reference") == 0
    assert sum(read) <= 2 * 200 * 2, read  # the first part (200 rows x 2 classes), twice at most


def test_a_bad_cell_in_a_later_block_names_its_line(local_ray, table, tmp_path, capsys, small_stream):
    frame = pd.read_csv(table)[FEATURES].iloc[:700].astype(object)
    frame.loc[500, "c"] = "n/a?"
    explain = tmp_path / "bad.csv"
    frame.to_csv(explain, index=False)
    assert run(table, tmp_path, "bad", "--explain", str(explain), "--rows", "all", "--no-reference") == 3
    err = capsys.readouterr().err
    assert f"{explain}: column 'c' is not numeric: 'n/a?' on line 502" in err
    assert "Traceback" not in err


def test_parquet_rows_have_no_data_line_and_text_values_show_as_text(local_ray, tmp_path):
    """Issue 10, noticed: data_line was filled for Parquet input (it has no lines) and value:colour
    held the code of the text, not the text."""
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"colour": rng.choice(["red", "blue", "green"], 200), "w": rng.normal(size=200)})
    frame["grade"] = np.where((frame["colour"] == "red") ^ (frame["w"] > 0), "good", "bad")
    frame.to_parquet(tmp_path / "shop.parquet")
    argv = ["--data", str(tmp_path / "shop.parquet"), "--label", "grade", "--trees", "5", "--rows", "3"]
    argv += ["--background", "10", "--no-reference", "--output-dir", str(tmp_path), "--run-id", "pq"]
    assert main(argv) == 0
    values = pd.read_parquet(tmp_path / "pq" / "shap_values.parquet")
    assert values["data_line"].isna().all()
    rows = values["row"].to_numpy()
    assert values["value:colour"].tolist() == frame["colour"].to_numpy()[rows].tolist()
