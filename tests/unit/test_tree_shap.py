"""The exact tree path against exact KernelSHAP, brute-force Shapley values and each model's own
predict (comparison semantics, threshold ties, missing values)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from app import kernel_shap, tree_shap
from app.errors import UnsupportedModelError

# Brute force (all 2^11 coalitions, the forest's own predict_proba, averaged over the 30
# background rows) for the wine case, positive class.
WINE_BRUTE_FORCE = [
    -0.0022104656615954356,
    0.026056861415161964,
    0.0344630579226394,
    -0.0032655122655122514,
    -0.012672591616672231,
    0.0012998160928732116,
    -0.026365957470592973,
    -0.002932245411132905,
    0.01225589297311543,
    0.10514242182015396,
    0.20123554845872502,
]


def brute_force(predict: Callable[[Any], Any], x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Shapley values (M, K) of v(S) = mean_z f(x_S, z_rest) from every coalition."""
    m = x.shape[0]
    masks = np.array(list(itertools.product([False, True], repeat=m)))
    synth = np.where(masks[:, None, :], x[None, None, :], background[None])
    out = np.asarray(predict(synth.reshape(-1, m)), dtype=np.float64).reshape(len(masks), len(background), -1)
    v = out.mean(axis=1)
    index = {tuple(row): i for i, row in enumerate(masks)}
    phi = np.zeros((m, v.shape[1]))
    for i, s in enumerate(masks):
        size = int(s.sum())
        for j in np.flatnonzero(~s):
            t = s.copy()
            t[j] = True
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            phi[j] += weight * (v[index[tuple(t)]] - v[i])
    return phi


def kernel_values(predict: Callable[[Any], Any], rows: np.ndarray, background: np.ndarray) -> np.ndarray:
    nsamples = kernel_shap.exact_nsamples(rows.shape[1])
    return kernel_shap.explain(predict, rows, background, nsamples=nsamples).values


@pytest.fixture(scope="module")
def wine_split(wine_csv: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from tests.conftest import WINE_CSV

    if not WINE_CSV.exists():
        pytest.skip(f"{WINE_CSV} is absent")
    frame = pd.read_csv(WINE_CSV, sep=";")
    x = frame.drop(columns="quality").to_numpy(np.float64)
    y = (frame["quality"] >= 6).to_numpy(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    return x_train, x_test, y_train, y_test


def test_wine_case_equals_brute_force_and_kernel_where_shap_is_off(wine_split: Any) -> None:
    x_train, x_test, y_train, _ = wine_split
    model = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x_train, y_train)
    background, rows = x_train[:30], x_test[:1]
    ours = tree_shap.explain(model, rows, background)
    np.testing.assert_allclose(ours.values[0, :, 1], WINE_BRUTE_FORCE, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.values, kernel_values(model.predict_proba, rows, background), atol=1e-9)
    np.testing.assert_allclose(brute_force(model.predict_proba, rows[0], background)[:, 1], WINE_BRUTE_FORCE)
    import shap

    explainer = shap.TreeExplainer(model, data=background, feature_perturbation="interventional")
    theirs = np.asarray(explainer.shap_values(rows, check_additivity=False))[0, :, 1]
    assert np.abs(theirs - WINE_BRUTE_FORCE).max() > 1e-3  # the float32 threshold tie (0.635)


def _classification(n_classes: int = 2, n_features: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(
        n_samples=300,
        n_features=n_features,
        n_informative=4,
        n_redundant=0,
        n_classes=n_classes,
        random_state=seed,
    )
    return np.round(x, 2), y  # rounded: many ties between data values and thresholds


def _regression(n_features: int = 6) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_regression(n_samples=300, n_features=n_features, noise=1.0, random_state=0)
    return np.round(x, 2), y


def _fitted(name: str) -> tuple[Any, np.ndarray]:  # noqa: PLR0911, PLR0912 -- one case per model
    if name == "rf-regressor":
        x, y = _regression()
        return RandomForestRegressor(8, max_depth=8, random_state=0).fit(x, y), x
    if name == "rf-multiclass":
        x, y = _classification(n_classes=3)
        return RandomForestClassifier(8, random_state=0).fit(x, y), x
    if name == "et-classifier":
        x, y = _classification()
        return ExtraTreesClassifier(8, max_depth=8, random_state=0).fit(x, y), x
    if name == "et-regressor":
        x, y = _regression()
        return ExtraTreesRegressor(8, max_depth=8, random_state=0).fit(x, y), x
    if name == "gb-classifier":
        x, y = _classification()
        return GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y), x
    if name == "gb-multiclass":
        x, y = _classification(n_classes=3)
        return GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=0).fit(x, y), x
    if name == "gb-regressor":
        x, y = _regression()
        return GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0).fit(x, y), x
    if name == "hgb-classifier":
        x, y = _classification()
        x[::7, 1] = np.nan  # missing values go where each node says
        return HistGradientBoostingClassifier(max_iter=20, max_depth=4, random_state=0).fit(x, y), x
    if name == "hgb-multiclass":
        x, y = _classification(n_classes=3)
        return HistGradientBoostingClassifier(max_iter=10, max_depth=3, random_state=0).fit(x, y), x
    if name == "hgb-regressor":
        x, y = _regression()
        return HistGradientBoostingRegressor(max_iter=20, max_depth=4, random_state=0).fit(x, y), x
    if name == "xgboost":
        xgboost = pytest.importorskip("xgboost")
        x, y = _classification()
        x[::7, 2] = np.nan
        return xgboost.XGBClassifier(n_estimators=20, max_depth=3, random_state=0, n_jobs=1).fit(x, y), x
    if name == "xgboost-multiclass":
        xgboost = pytest.importorskip("xgboost")
        x, y = _classification(n_classes=3)
        return xgboost.XGBClassifier(n_estimators=10, max_depth=3, random_state=0, n_jobs=1).fit(x, y), x
    if name == "lightgbm":
        lightgbm = pytest.importorskip("lightgbm")
        x, y = _classification()
        x[::7, 3] = np.nan
        model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, random_state=0, n_jobs=1, verbose=-1)
        return model.fit(x, y), x
    if name == "lightgbm-regressor":
        lightgbm = pytest.importorskip("lightgbm")
        x, y = _regression()
        model = lightgbm.LGBMRegressor(n_estimators=20, num_leaves=8, random_state=0, n_jobs=1, verbose=-1)
        return model.fit(x, y), x
    raise AssertionError(name)


NAMES = [
    "rf-regressor",
    "rf-multiclass",
    "et-classifier",
    "et-regressor",
    "gb-classifier",
    "gb-multiclass",
    "gb-regressor",
    "hgb-classifier",
    "hgb-multiclass",
    "hgb-regressor",
    "xgboost",
    "xgboost-multiclass",
    "lightgbm",
    "lightgbm-regressor",
]
# Models that sum their trees in float32 themselves: their own output carries ~1e-7 rounding,
# so they are compared with the same trees summed in float64 (the model's exact semantics).
FLOAT32_SUMS = {"xgboost", "xgboost-multiclass"}


@pytest.mark.parametrize("name", NAMES)
def test_tree_path_equals_exact_kernel_and_model_output(name: str) -> None:
    model, x = _fitted(name)
    background, rows = x[:25], x[200:204]
    ours = tree_shap.explain(model, rows, background)
    predict, _ = tree_shap.model_output(model)
    own = np.asarray(predict(rows), dtype=np.float64).reshape(len(rows), -1)
    exact_output = 1e-5 if name in FLOAT32_SUMS else 1e-9
    np.testing.assert_allclose(ours.outputs, own, rtol=0, atol=exact_output)  # the model's own semantics
    tree_model = tree_shap.prepare_model(model, background)

    def trees_in_float64(z: np.ndarray) -> np.ndarray:
        return tree_shap.model_outputs(tree_model, z)

    reference = trees_in_float64 if name in FLOAT32_SUMS else predict
    np.testing.assert_allclose(ours.values, kernel_values(reference, rows, background), rtol=0, atol=1e-9)
    additivity = ours.values.sum(axis=1) + ours.expected_value[None, :] - ours.outputs
    assert np.abs(additivity).max() < 1e-9


@pytest.mark.parametrize("name", ["rf-multiclass", "gb-classifier", "hgb-classifier", "lightgbm"])
def test_tree_path_equals_brute_force_on_small_cases(name: str) -> None:
    model, x = _fitted(name)
    background, row = x[:12], x[250]
    ours = tree_shap.explain(model, row[None, :], background)
    predict, _ = tree_shap.model_output(model)
    np.testing.assert_allclose(ours.values[0], brute_force(predict, row, background), rtol=0, atol=1e-9)


def test_rows_exactly_at_thresholds_follow_the_model() -> None:
    """Rows whose values are a tree's root threshold, its float32 rounding and the next float32."""
    x, y = _classification()
    model = RandomForestClassifier(6, random_state=0).fit(x, y)
    rows = []
    for estimator in model.estimators_:
        tree = estimator.tree_
        t = tree.threshold[0]
        for value in (t, float(np.float32(t)), float(np.nextafter(np.float32(t), np.float32(np.inf)))):
            row = x[200].copy()
            row[tree.feature[0]] = value
            rows.append(row)
    rows_at = np.asarray(rows)
    background = x[:20]
    ours = tree_shap.explain(model, rows_at, background)
    np.testing.assert_allclose(ours.outputs, model.predict_proba(rows_at), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        ours.values, kernel_values(model.predict_proba, rows_at, background), rtol=0, atol=1e-9
    )


def test_a_feature_that_does_not_vary_gets_zero() -> None:
    x, y = _classification()
    x[:, 2] = 0.5
    model = RandomForestClassifier(6, random_state=0).fit(x, y)
    background, rows = x[:20], x[200:203]
    ours = tree_shap.explain(model, rows, background)
    assert np.all(ours.values[:, 2, :] == 0.0)
    np.testing.assert_allclose(
        ours.values, kernel_values(model.predict_proba, rows, background), rtol=0, atol=1e-9
    )


def test_auto_picks_the_tree_path_only_for_supported_models() -> None:
    model, x = _fitted("gb-classifier")
    assert tree_shap.choose_algorithm("auto", model)[0] == "tree"
    linear = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    algorithm, reason = tree_shap.choose_algorithm("auto", linear)
    assert algorithm == "kernel"
    assert "LogisticRegression" in reason
    assert tree_shap.choose_algorithm("kernel", model)[0] == "kernel"


def test_unsupported_models_give_one_clear_error() -> None:
    x, y = _classification()
    linear = LogisticRegression().fit(x, y)
    with pytest.raises(
        UnsupportedModelError, match=r"does not support LogisticRegression.*--algorithm kernel"
    ):
        tree_shap.choose_algorithm("tree", linear)
    categorical = HistGradientBoostingClassifier(max_iter=3, categorical_features=[0], random_state=0)
    x_cat = x.copy()
    x_cat[:, 0] = np.abs(np.round(x_cat[:, 0])) % 4
    categorical.fit(x_cat, y)
    with pytest.raises(UnsupportedModelError, match="categorical"):
        tree_shap.explain(categorical, x_cat[:2], x_cat[:5])


def test_algorithm_option_round_trips_and_refuses_a_link() -> None:
    from app.config import Algorithm, JobConfig, parse_args
    from app.contract import Link

    config = JobConfig(algorithm=Algorithm.TREE_PATH_DEPENDENT)
    assert config.to_argv() == ["--algorithm", "tree-path-dependent"]
    assert parse_args(config.to_argv()) == config
    assert JobConfig().algorithm is Algorithm.KERNEL
    with pytest.raises(ValueError, match="--algorithm tree explains the model's own output"):
        JobConfig(algorithm=Algorithm.TREE, link=Link.LOGIT)
    for players in ({"groups": "groups.json"}, {"background_weights": "w"}):
        with pytest.raises(ValueError, match="unweighted background"):
            JobConfig(algorithm=Algorithm.TREE, **players)  # type: ignore[arg-type]
    JobConfig(algorithm=Algorithm.AUTO, groups="groups.json")  # auto falls back to the kernel


def test_row_blocks_cover_every_row_once() -> None:
    blocks = tree_shap.row_blocks(1000, workers=2)
    assert [b.start for b in blocks] == list(range(0, 1000, 125))
    assert tree_shap.row_blocks(10, workers=8) == [slice(0, 10)]
    assert tree_shap.row_blocks(10, workers=1, batch_size=4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert tree_shap.row_blocks(0, workers=2) == []


def test_deep_leaves_and_tabled_leaves_agree_with_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaves with more than MAX_TABLE_FEATURES path features take the pattern loop, the others a
    table: a deep 9-feature forest has both; with no tables at all the values are the same."""
    x, y = _classification(n_features=9)
    model = RandomForestClassifier(4, random_state=0).fit(x, y)
    background, rows = x[:20], x[200:203]
    tree_model = tree_shap.prepare_model(model, background)
    depth = np.diff(tree_model.ensemble.leaf_start)
    assert (depth > tree_shap.MAX_TABLE_FEATURES).any() and (depth <= tree_shap.MAX_TABLE_FEATURES).any()
    ours = tree_shap.explain(model, rows, background).values
    np.testing.assert_allclose(ours, kernel_values(model.predict_proba, rows, background), rtol=0, atol=1e-9)
    monkeypatch.setattr(tree_shap, "MAX_TABLE_FEATURES", 0)
    np.testing.assert_allclose(tree_shap.explain(model, rows, background).values, ours, rtol=0, atol=1e-12)


def test_an_unsupported_model_is_a_configuration_error_with_exit_3() -> None:
    from app.errors import DataError

    error = UnsupportedModelError("x")
    assert isinstance(error, DataError)  # shapcluster maps it to InputError: exit 3
    assert error.exit_status == 3
