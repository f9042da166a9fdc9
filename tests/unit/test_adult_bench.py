"""benchmarks/adult_data.py: the Adult workload's 12 groups and one-hot columns, on the real files."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, SHARED_DATA

_spec = importlib.util.spec_from_file_location("adult_data", REPO / "benchmarks" / "adult_data.py")
assert _spec and _spec.loader
adult_data = importlib.util.module_from_spec(_spec)
sys.modules["adult_data"] = adult_data  # dataclasses look their module up while building
_spec.loader.exec_module(adult_data)


@pytest.fixture(scope="module")
def workload():
    if not (SHARED_DATA / "adult.data").exists() or not (SHARED_DATA / "adult.test").exists():
        pytest.skip(f"the Adult files are absent from {SHARED_DATA}")
    return adult_data.prepare(SHARED_DATA)


def test_groups_are_the_twelve_original_columns_and_partition_the_encoding(workload):
    assert workload.group_names == (
        "age",
        "workclass",
        "education",
        "marital-status",
        "occupation",
        "relationship",
        "race",
        "sex",
        "capital-gain",
        "capital-loss",
        "hours-per-week",
        "native-country",
    )
    flat = [i for group in workload.groups for i in group]
    assert flat == list(range(workload.x_train.shape[1]))  # contiguous, in order, every column once
    for name, group in zip(workload.group_names, workload.groups, strict=True):
        encoded = [workload.encoded_names[i] for i in group]
        if name in adult_data.NUMERIC:
            assert encoded == [name]
        else:
            assert all(e.startswith(f"{name}_") for e in encoded)


def test_one_hot_columns_map_to_the_rows_categories(workload):
    """Row by row, exactly the indicator of the row's own category is 1 in each categorical group."""
    test = adult_data.read_adult(SHARED_DATA / "adult.test", test=True)
    assert len(test) == 16281 == len(workload.x_test)
    assert set(test["income"]) == {"<=50K", ">50K"}  # the test file's trailing dots are gone
    names = workload.encoded_names
    for row in (0, 1, 2, 13):  # the first rows, and one with `?` as workclass and occupation
        for name, group in zip(workload.group_names, workload.groups, strict=True):
            if name in adult_data.NUMERIC:
                continue
            raw = test[name].iloc[row]
            category = adult_data.MISSING if pd.isna(raw) else raw  # NaN: a `?` in the file
            hot = [names[i] for i in group if workload.x_test[row, i] == 1.0]
            assert hot == [f"{name}_{category}"], (row, name)
            assert workload.x_test[row, list(group)].sum() == 1.0
    assert test["workclass"].isna().iloc[13] and test["occupation"].isna().iloc[13]  # the `?` case


def test_numerics_are_standardised_on_training_data_and_the_model_is_fitted(workload):
    age = workload.groups[0][0]
    assert abs(workload.x_train[:, age].mean()) < 1e-9
    assert workload.x_train[:, age].std() == pytest.approx(1.0)
    assert workload.test_accuracy > 0.84  # alibi's example model reaches about 0.85
    background = workload.background(100, seed=0)
    assert background.shape == (100, workload.x_train.shape[1])
    np.testing.assert_array_equal(background, workload.background(100, seed=0))
