"""Issue 10, streaming without Ray: the switch, the blocks and their part names, reading a row range
of a CSV or Parquet file without the rest, a block explained equal to the whole, the progress line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import etl, kernel_shap, results, stream
from app.contract import Link
from app.errors import DataError
from app.tabular import ColumnCodec


def test_the_switch_and_the_blocks():
    assert not stream.streams(stream.STREAM_MIN_ROWS) and stream.streams(stream.STREAM_MIN_ROWS + 1)
    assert stream.blocks(50, 650, 200) == [(50, 250), (250, 450), (450, 650)]
    assert stream.blocks(0, 5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert stream.part_name(50, 250) == "rows-0000000050-0000000250.parquet"
    assert sorted(stream.part_name(a, b) for a, b in stream.blocks(0, 25_000, 5_000)) == [
        stream.part_name(a, b) for a, b in stream.blocks(0, 25_000, 5_000)
    ]  # names sort in row order


@pytest.fixture
def typed(tmp_path: Path) -> tuple[pd.DataFrame, ColumnCodec]:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "blue"], 300),
            "size": rng.integers(0, 9, 300),
            "w": rng.normal(size=300),
        }
    )
    return frame, ColumnCodec.fit(frame)


def test_a_row_range_of_csv_and_parquet_equals_those_rows_of_the_whole(tmp_path, typed):
    frame, codec = typed
    frame.to_csv(tmp_path / "rows.csv", index=False, sep=";")
    frame.to_parquet(tmp_path / "rows.parquet", row_group_size=64)
    whole = codec.encode(frame)
    names = list(frame.columns)
    for path in (tmp_path / "rows.csv", tmp_path / "rows.parquet"):
        assert etl.count_rows(str(path)) == 300
        for start, stop in [(0, 10), (60, 130), (290, 300)]:
            got = etl.read_row_range(str(path), names, codec, start, stop)
            np.testing.assert_array_equal(got, whole[start:stop])


def test_a_bad_cell_of_a_range_names_its_csv_line_or_parquet_row(tmp_path, typed):
    frame, codec = typed
    bad = frame.astype({"w": object})
    bad.loc[150, "w"] = "oops"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="'oops' on line 152"):
        etl.read_row_range(str(tmp_path / "bad.csv"), list(frame.columns), codec, 100, 200)
    etl.read_row_range(str(tmp_path / "bad.csv"), list(frame.columns), codec, 0, 100)  # before it: fine
    frame.loc[[7], "w"] = np.inf
    frame.to_parquet(tmp_path / "inf.parquet")
    with pytest.raises(DataError, match="inf on row 8"):
        etl.read_row_range(str(tmp_path / "inf.parquet"), list(frame.columns), codec, 0, 20)
    with pytest.raises(DataError, match="fewer than 400 rows"):
        etl.read_row_range(str(tmp_path / "inf.parquet"), list(frame.columns), codec, 300, 400)


def test_a_block_explained_alone_equals_those_rows_explained_together():
    """The block's values do not depend on which other rows share its block (bit for bit)."""
    rng = np.random.default_rng(2)
    x, bg = rng.normal(size=(40, 4)), rng.normal(size=(8, 4))
    x[5, 2] = bg[0, 2] = bg[1, 2] = bg[2:, 2].mean()  # rows with other varying sets
    bg[:, 2] = bg[0, 2]

    def predict(rows: np.ndarray) -> np.ndarray:
        p = 1 / (1 + np.exp(-(rows @ np.array([1.0, -0.5, 0.3, 0.2]) + rows[:, 0] * rows[:, 1])))
        return np.stack([1 - p, p], axis=1)

    spec = stream.BlockSpec(bg, None, 14, Link.IDENTITY, 0, None, ("a", "b", "c", "d"), ("0", "1"))
    together, outputs = stream.BlockExplainer(spec).explain(predict, x, np.float64)
    explainer = stream.BlockExplainer(spec)
    parts = [explainer.explain(predict, x[a:b], np.float64) for a, b in stream.blocks(0, 40, 15)]
    np.testing.assert_array_equal(np.concatenate([p[0].values for p in parts]), together.values)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), outputs)
    whole = kernel_shap.explain(predict, x, bg, nsamples=14)
    np.testing.assert_allclose(together.values, whole.values, rtol=0, atol=1e-12)


def test_part_stats_are_the_same_from_a_written_part_and_its_copy_read_back(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.normal(size=(6, 3, 2))
    rows = results.BlockRows(rng.normal(size=(6, 3)), np.arange(6), None, None).explained(
        ["a", "b", "c"], rng.normal(size=(6, 2)), np.array([0.1, 0.9]), ["x", "y"]
    )
    frame = results.values_frame(values, rows, ["a", "b", "c"])
    results.write_parquet(tmp_path / "p.parquet", frame, {"k": "v"})
    back = pd.read_parquet(tmp_path / "p.parquet")
    assert results.parquet_metadata(tmp_path / "p.parquet")["k"] == "v"
    one = stream.part_stats(frame, ["a", "b", "c"], 2, True, 0.0, start=0, stop=6)
    two = stream.part_stats(back, ["a", "b", "c"], 2, False, 0.0, start=0, stop=6)
    np.testing.assert_array_equal(one.abs_sum, two.abs_sum)
    np.testing.assert_allclose(one.abs_sum, np.abs(values).sum(axis=0).T)
    np.testing.assert_array_equal(stream.values_of(back, ["a", "b", "c"], 2), values)
    total = stream.totals([two, one])
    assert total.rows == 12 and total.parts_computed == 1
    np.testing.assert_allclose(total.mean_abs, np.abs(values).mean(axis=0))


def test_progress_line_has_rate_and_time_left():
    line = stream.progress_line(250_000, 1_000_000, 250_000, 100.0)
    assert line.strip() == "streamed 250,000/1,000,000 rows (25%), 2,500 rows/s, 5 min 00 s left"
    assert "unknown left" in stream.progress_line(0, 10, 0, 0.0)


def test_value_columns_and_display_data_hold_the_users_text_not_its_codes(tmp_path, typed):
    """Issue 10, noticed: value:<feature> held a text column's float code; now its text (and the
    explanation file gets shap's display_data of the user's values beside the numeric data)."""
    frame, codec = typed
    codes = codec.encode(frame.iloc[:3])
    rows = results.BlockRows(codes, np.arange(3), None, None).explained(
        list(frame.columns), np.zeros((3, 2)), np.zeros(2), ["x", "y"], codec
    )
    table = results.values_frame(np.zeros((3, 3, 2)), rows, list(frame.columns))
    assert table["value:colour"].tolist() == np.repeat(frame["colour"][:3].to_numpy(), 2).tolist()
    assert table["value:size"].tolist() == np.repeat(frame["size"][:3].to_numpy(), 2).tolist()
    assert table["value:w"].tolist() == np.repeat(frame["w"][:3].to_numpy(), 2).tolist()  # bit for bit
    results.write_explanation(tmp_path / "e.npz", np.zeros((3, 3, 2)), rows, list(frame.columns))
    saved = np.load(tmp_path / "e.npz")
    assert saved["display_data"][:, 0].tolist() == frame["colour"][:3].tolist()
    np.testing.assert_array_equal(saved["data"], codes)


def test_features_default_to_the_columns_the_model_was_fitted_on(tmp_path):
    """Issue 10, noticed: with --model and no --features every other column was a feature, so a
    data file with an id column was refused; now the model's feature_names_in_ are the default."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    from app import precheck
    from app.config import parse_args

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"id": np.arange(60), "b": rng.normal(size=60), "a": rng.normal(size=60)})
    frame["y"] = np.where(frame["a"] > frame["b"], "up", "down")
    frame.to_csv(tmp_path / "d.csv", index=False)
    sio.dump(LogisticRegression().fit(frame[["a", "b"]], frame["y"]), tmp_path / "m.skops")
    config = parse_args(
        ["--data", str(tmp_path / "d.csv"), "--model", str(tmp_path / "m.skops"), "--label", "y"]
    )
    assert precheck.read_columns(config) == ("a", "b")  # the model's order, not the file's
    precheck.check_job(config)  # was: "the model expects ... extra id"
    given = parse_args(
        [*["--data", str(tmp_path / "d.csv"), "--model", str(tmp_path / "m.skops")], "--features", "b"]
    )
    assert precheck.read_columns(given) == ("b",)
