"""Our KernelSHAP against shap.KernelExplainer, closed forms and its own invariants."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import shap

from app import kernel_shap as ks

RNG = np.random.default_rng(42)


def nonlinear_model(x: np.ndarray) -> np.ndarray:
    """Three outputs with interactions, so no coalition is redundant."""
    a = np.sin(x[:, 0]) * x[:, 1] + x[:, 2] ** 2 - x[:, 3] * x[:, 4] + 0.3 * x.sum(axis=1)
    b = np.tanh(x[:, :3].sum(axis=1)) * np.cos(x[:, -1])
    c = x.prod(axis=1) * 0.01 + x[:, 0]
    return np.stack([a, b, c], axis=1)


def probability_model(x: np.ndarray) -> np.ndarray:
    logits = np.stack(
        [x @ np.linspace(-1, 1, x.shape[1]), x @ np.linspace(1, -0.5, x.shape[1]), np.zeros(len(x))], 1
    )
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reference(predict, rows, background, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.KernelExplainer(predict, background, link=kwargs.pop("link", "identity"))
        values = explainer.shap_values(rows, l1_reg=False, silent=True, **kwargs)
    return np.asarray(values), np.atleast_1d(explainer.expected_value)


def test_exact_case_equals_shap_kernel_explainer_to_1e9():
    background = RNG.normal(size=(20, 6))
    rows = RNG.normal(size=(5, 6))
    ours = ks.explain(nonlinear_model, rows, background)
    theirs, expected = reference(nonlinear_model, rows, background)
    assert ours.exact and ours.n_coalitions == 2**6 - 2
    assert ours.values.shape == theirs.shape == (5, 6, 3)
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.expected_value, expected, rtol=0, atol=1e-12)


def test_random_forest_on_wine_like_data_equals_shap(wine_csv):
    from app import etl, model

    split = model.split_data(etl.load_dataset(str(wine_csv)))
    forest = model.train_forest(split, n_estimators=5).model
    data = model.get_data_to_explain(split, rows=2, background=20)
    ours = ks.explain(forest.predict_proba, data.rows, data.background, dtype=model.input_dtype(forest))
    theirs, _ = reference(forest.predict_proba, data.rows, data.background)
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-9)


def test_linear_model_gives_closed_form_values():
    weights = RNG.normal(size=(7, 2))
    bias = np.array([0.5, -1.0])
    background = RNG.normal(size=(30, 7))
    rows = RNG.normal(size=(4, 7))
    ours = ks.explain(lambda x: x @ weights + bias, rows, background)
    closed = weights[None, :, :] * (rows - background.mean(axis=0))[:, :, None]
    np.testing.assert_allclose(ours.values, closed, rtol=0, atol=1e-10)


def test_values_add_up_to_the_model_output():
    background = RNG.normal(size=(15, 8))
    rows = RNG.normal(size=(6, 8))
    for nsamples in (None, 60):  # exact, and sampled: additivity holds by construction
        ours = ks.explain(nonlinear_model, rows, background, nsamples=nsamples)
        total = ours.values.sum(axis=1) + ours.expected_value
        np.testing.assert_allclose(total, nonlinear_model(rows), rtol=0, atol=1e-10)


def test_sampling_converges_to_the_exact_values():
    m = 12  # 4094 coalitions: shap's default budget (2072) samples
    background = RNG.normal(size=(10, m))
    rows = RNG.normal(size=(3, m))
    exact = ks.explain(nonlinear_model, rows, background, nsamples=ks.exact_nsamples(m))
    assert exact.exact
    errors = []
    for nsamples in (100, 500, 2500):
        runs = [
            ks.explain(nonlinear_model, rows, background, nsamples=nsamples, seed=seed) for seed in range(4)
        ]
        assert not any(run.exact for run in runs)
        errors.append(np.mean([np.abs(run.values - exact.values).max() for run in runs]))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < errors[0] / 5, errors


def test_sampling_mode_uses_shap_budget_and_pairs_complements():
    plan = ks.build_plan(np.arange(12), 12, nsamples=None, seed=0)
    assert not plan.exact
    assert plan.n_coalitions == ks.default_nsamples(12)
    masks = {m.tobytes() for m in plan.masks}
    assert len(masks) == plan.n_coalitions  # duplicates add weight, not rows
    # Every coalition except those of the middle size (6 of 12, self-complementary in size)
    # comes with its complement, as in shap.
    for mask in plan.masks:
        if mask.sum() != 6:
            assert (~mask).tobytes() in masks
    np.testing.assert_allclose(plan.weights.sum(), 1.0)


def test_sampled_values_match_shap_in_distribution():
    """Different random draws, same estimator: both land near the exact values."""
    m = 10
    background = RNG.normal(size=(8, m))
    rows = RNG.normal(size=(2, m))
    exact = ks.explain(nonlinear_model, rows, background).values
    ours = ks.explain(nonlinear_model, rows, background, nsamples=400, seed=1).values
    np.random.seed(1)
    theirs, _ = reference(nonlinear_model, rows, background, nsamples=400)
    ours_error = np.abs(ours - exact).max()
    theirs_error = np.abs(theirs - exact).max()
    assert ours_error < 3 * theirs_error + 1e-3


def test_non_varying_features_get_zero_like_shap():
    background = RNG.normal(size=(12, 5))
    background[:, 2] = 1.5  # constant column
    rows = RNG.normal(size=(3, 5))
    rows[0, 2] = 1.5  # row 0: feature 2 equals every background value -> not varying
    rows[1, [0, 2, 3, 4]] = background[0, [0, 2, 3, 4]]  # row 1 differs from row 0's varying set
    background[:, [0, 3, 4]] = background[0, [0, 3, 4]]  # ... and those are constant too
    ours = ks.explain(nonlinear_model, rows, background)
    theirs, _ = reference(nonlinear_model, rows, background)
    assert np.all(ours.values[0, 2] == 0)
    assert np.count_nonzero(np.abs(ours.values[1]).sum(axis=1)) == 1  # one varying feature
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-9)


def test_logit_link_matches_shap():
    background = RNG.normal(size=(10, 5))
    rows = RNG.normal(size=(3, 5))
    ours = ks.explain(probability_model, rows, background, link=ks.Link.LOGIT)
    theirs, expected = reference(probability_model, rows, background, link="logit")
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.expected_value, expected, rtol=0, atol=1e-12)


def test_single_output_model_keeps_one_output_column():
    background = RNG.normal(size=(10, 5))
    rows = RNG.normal(size=(2, 5))
    ours = ks.explain(lambda x: nonlinear_model(x)[:, 0], rows, background)
    theirs, _ = reference(lambda x: nonlinear_model(x)[:, 0], rows, background)
    assert ours.values.shape == (2, 5, 1)
    np.testing.assert_allclose(ours.values[:, :, 0], theirs, rtol=0, atol=1e-9)


def test_blocks_of_rows_and_coalitions_give_the_same_expectations():
    background = RNG.normal(size=(9, 6))
    rows = RNG.normal(size=(5, 6))
    plan = ks.build_plan(np.arange(6), 6)
    whole = ks.evaluate_coalitions(nonlinear_model, rows, background, plan.masks)
    tiny_chunks = ks.evaluate_coalitions(
        nonlinear_model, rows, background, plan.masks, max_rows_per_predict=20
    )
    np.testing.assert_array_equal(whole, tiny_chunks)
    assembled = np.zeros_like(whole)
    for block in ks.split_work(5, plan.n_coalitions, 9, workers=3, batch_size=2):
        assembled[block.rows, block.coalitions] = ks.evaluate_coalitions(
            nonlinear_model, rows[block.rows], background, plan.masks[block.coalitions]
        )
    np.testing.assert_array_equal(whole, assembled)


@pytest.mark.parametrize(
    ("rows", "coalitions", "background", "workers", "batch_size"),
    [
        (16, 2046, 100, 2, None),
        (1, 2046, 100, 8, None),
        (1000, 30, 50, 4, None),
        (7, 62, 10, 3, 2),
        (3, 5, 1, 1, 10),
    ],
)
def test_split_work_covers_every_pair_once(rows, coalitions, background, workers, batch_size):
    blocks = ks.split_work(rows, coalitions, background, workers, batch_size)
    seen = np.zeros((rows, coalitions), dtype=int)
    for block in blocks:
        seen[block.rows, block.coalitions] += 1
        if batch_size:
            assert block.rows.stop - block.rows.start <= batch_size
    assert np.all(seen == 1)
    assert len(blocks) <= ks.TASKS_PER_WORKER * workers or batch_size


def test_split_work_balances_the_benchmark_workload():
    blocks = ks.split_work(16, 2046, 100, workers=2)
    assert len(blocks) == 8
    assert len({b.units for b in blocks}) == 1


def test_split_work_keeps_tiny_jobs_in_one_task():
    assert len(ks.split_work(2, 14, 5, workers=8)) == 1


def test_exact_plan_enumerates_every_coalition_once():
    m = 7
    plan = ks.build_plan(np.arange(m), m)
    coalitions = {tuple(mask) for mask in plan.masks}
    expected = {c for c in itertools.product([False, True], repeat=m) if 0 < sum(c) < m}
    assert coalitions == expected
    assert plan.n_coalitions == len(expected)


def test_nsamples_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        ks.build_plan(np.arange(5), 5, nsamples=0)
