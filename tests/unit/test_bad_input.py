"""Issue 10's bad inputs: each one clear DataError naming the file and the line or column
(exit 3 before any Ray work, through `python -m app` and `shapcluster submit --local`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from app import etl
from app.errors import DataError
from shapcluster.cli import app

HEADER = "a;b;c;quality"


def rows(n: int = 12, end: str = "") -> list[str]:
    return [f"{4 + i / 10};{2.0 + i};{11.6 - i / 7};{5 + i % 3}{end}" for i in range(n)]


def write(tmp_path: Path, lines: list[str], name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_separator_at_the_end_of_every_line_is_read_correctly(tmp_path: Path) -> None:
    plain = etl.load_dataset(write(tmp_path, [HEADER, *rows()], "plain.csv"))
    trailing = etl.load_dataset(write(tmp_path, [HEADER, *rows(end=";")], "trailing.csv"))
    pd.testing.assert_frame_equal(trailing.features, plain.features, check_exact=True)
    assert trailing.labels is not None and plain.labels is not None
    pd.testing.assert_series_equal(trailing.labels, plain.labels)


def test_a_line_whose_field_count_differs_is_named(tmp_path: Path) -> None:
    lines = [HEADER, *rows(3), *rows(3, end=";"), *rows(6)]
    path = write(tmp_path, lines)
    with pytest.raises(DataError) as caught:
        etl.load_dataset(path)
    assert str(caught.value) == (
        f"{path}: line 5 has 5 fields (it ends with a separator), the header has 4. "
        "Make every line have 4 fields separated by ';'."
    )


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e39"])
def test_infinite_and_too_large_cells_name_the_column_and_lines(tmp_path: Path, bad: str) -> None:
    lines = [HEADER, *rows()]
    lines[3] = f"4.2;{bad};1;5"
    lines[7] = f"4.6;{bad};1;5"
    path = write(tmp_path, lines)
    with pytest.raises(DataError) as caught:
        etl.load_dataset(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: column 'b' has 2 infinite or too large values")
    assert "on line 4" in message and "on line 8" in message and "Fix or drop those rows" in message


def test_an_empty_parquet_file_and_an_unsupported_column_type(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.float64()), "quality": pa.array([], pa.int64())}), empty)
    with pytest.raises(DataError, match=r"empty\.parquet: the Parquet file has no rows"):
        etl.load_dataset(str(empty))
    dated = tmp_path / "dated.parquet"
    frame = pd.DataFrame({"a": range(12), "when": pd.date_range("2026-01-01", periods=12), "quality": 1})
    frame.to_parquet(dated)
    with pytest.raises(
        DataError,
        match=r"dated\.parquet: column 'when' has Parquet type timestamp\[us\], which the job cannot explain",
    ):
        etl.load_dataset(str(dated))
    kept = etl.load_dataset(str(dated), features=("a",)).codec  # left out: no error
    assert kept is not None and kept.kinds == ("int",)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable Parquet file"):
        etl.load_dataset(str(broken))


def test_a_column_of_words_is_a_text_category(tmp_path: Path) -> None:
    lines = [HEADER.replace("c", "colour"), *[r.rsplit(";", 2)[0] + ";red;5" for r in rows()]]
    dataset = etl.load_dataset(write(tmp_path, lines))
    assert dataset.codec is not None and dataset.codec.kinds == ("float", "float", "category")


def test_bad_data_exits_3_before_ray_from_the_job_and_from_submit_local(tmp_path: Path) -> None:
    path = write(tmp_path, [HEADER, *rows(3), *rows(3, end=";"), *rows(6)])
    done = subprocess.run(
        [sys.executable, "-m", "app", "--data", path, "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3
    assert done.stderr.strip() == f"Error: {path}: line 5 has 5 fields (it ends with a separator), " + (
        "the header has 4. Make every line have 4 fields separated by ';'."
    )
    assert "Ray" not in done.stdout + done.stderr  # no local Ray instance was started
    result = CliRunner().invoke(app, ["submit", "--local", "--data", path, "--output-dir", str(tmp_path)])
    assert result.exit_code == 3
    assert "line 5 has 5 fields" in result.output
