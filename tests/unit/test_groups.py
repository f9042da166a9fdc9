"""Feature groups files: JSON or TOML, each group one player, clear errors naming file and column."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from app.errors import DataError
from app.groups import load_groups
from app.results import strict_json, write_summary

COLUMNS = ["age", "edu_hs", "edu_ba", "hours", "sex_f", "sex_m"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_json_and_toml_give_the_same_players(tmp_path):
    groups = {"education": ["edu_hs", "edu_ba"], "sex": ["sex_m", "sex_f"]}
    from_json = load_groups(write(tmp_path, "g.json", json.dumps(groups)), COLUMNS)
    toml = 'education = ["edu_hs", "edu_ba"]\nsex = ["sex_m", "sex_f"]\n'
    from_toml = load_groups(write(tmp_path, "g.toml", toml), COLUMNS)
    assert from_json == from_toml
    # Ungrouped columns stay players of their own; players keep the data's column order.
    assert from_json.names == ("age", "education", "hours", "sex")
    assert from_json.columns == ((0,), (1, 2), (3,), (4, 5))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"education": ["edu_hs", "edu_phd"]}', "group 'education' names column 'edu_phd', which the data"),
        ('{"a": ["edu_hs"], "b": ["edu_ba", "edu_hs"]}', "column 'edu_hs' is in group 'a' and in group 'b'"),
        ('{"education": []}', "group 'education' lists no columns"),
        ('{"hours": ["edu_hs", "edu_ba"]}', "group 'hours' has the name of a column in no group"),
        ('{"education": "edu_hs"}', "group 'education' must be a list of column names"),
        ("[1, 2]", "expected a table of group name -> list of columns"),
        ('{"education": ["edu_hs",', "g.json:1:"),
    ],
)
def test_bad_groups_files_name_the_file_and_the_column(tmp_path, text, message):
    path = write(tmp_path, "g.json", text)
    with pytest.raises(DataError) as caught:
        load_groups(path, COLUMNS)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_missing_groups_file(tmp_path):
    with pytest.raises(DataError, match="no such groups file"):
        load_groups(tmp_path / "absent.json", COLUMNS)


def test_summary_is_strict_json_with_null_for_non_finite_numbers(tmp_path):
    summary = {"a": math.nan, "b": [1.0, math.inf], "c": {"d": np.float64("-inf")}, "e": np.array([np.nan])}
    assert strict_json(summary) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": [None]}
    write_summary(tmp_path / "summary.json", summary)
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["b"] == [1.0, None]


def test_a_weights_column_leaves_the_features_and_bad_weights_name_their_line(tmp_path):
    from app import etl

    path = write(tmp_path, "d.csv", "a,w,quality\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(12)))
    dataset = etl.with_weights(etl.load_dataset(str(path)), "w")
    assert list(dataset.features.columns) == ["a"]
    assert dataset.weights is not None and dataset.weights.tolist() == [i % 3 for i in range(12)]
    bad = write(tmp_path, "bad.csv", "a,w,quality\n" + "".join(f"{i},{1 - i},{i % 2}\n" for i in range(12)))
    with pytest.raises(DataError, match=r"bad\.csv: weight -1 in column 'w' on line 4"):
        etl.with_weights(etl.load_dataset(str(bad)), "w")
    with pytest.raises(DataError, match="no weights column 'v'"):
        etl.with_weights(etl.load_dataset(str(path)), "v")
