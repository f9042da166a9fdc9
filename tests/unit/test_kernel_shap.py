"""Our KernelSHAP against shap.KernelExplainer, closed forms and its own invariants."""

from __future__ import annotations

import itertools
import time
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


def naive_expectations(predict, rows, background, masks, weights) -> np.ndarray:
    """ey (R, S, K) straight from the definition: every background row, one call per coalition."""
    return np.stack(
        [np.stack([weights @ predict(np.where(mask, x, background)) for mask in masks]) for x in rows]
    )


def one_hot_workload(n_rows: int = 4, n_background: int = 30):
    """Rows and background of 2 numeric columns and two one-hot groups (3 and 4 columns) whose
    background repeats values, so many background rows coincide outside a coalition."""
    rng = np.random.default_rng(7)

    def table(n: int) -> np.ndarray:
        numeric = rng.choice([-1.0, 0.5, 2.0], size=(n, 2))
        colour = np.eye(3)[rng.integers(0, 3, n)]
        size = np.eye(4)[rng.integers(0, 4, n)]
        return np.hstack([numeric, colour, size])

    groups = [[0], [1], [2, 3, 4], [5, 6, 7, 8]]
    return table(n_rows), table(n_background), groups


def one_hot_model(x: np.ndarray) -> np.ndarray:
    z = np.sin(x[:, 0]) * x[:, 3] + x[:, 1] * x[:, 6] - x[:, 8] + 0.2 * x[:, 2] * x[:, 0] ** 2
    p = 1 / (1 + np.exp(-z))
    return np.stack([1 - p, p], axis=1)


def test_merged_background_per_coalition_equals_the_definition_with_fewer_model_rows():
    rows, background, groups = one_hot_workload()
    players = ks.player_matrix(groups, rows.shape[1])
    plan = ks.build_plan(np.arange(4), rows.shape[1], players=players)
    weights = np.random.default_rng(3).uniform(0.5, 2.0, len(background))
    weights /= weights.sum()
    seen: list[int] = []

    def counting(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return one_hot_model(x)

    ours = ks.evaluate_coalitions(counting, rows, background, plan.masks, weights=weights)
    naive = naive_expectations(one_hot_model, rows, background, plan.masks, weights)
    np.testing.assert_allclose(ours, naive, rtol=0, atol=1e-12)
    pairs = ks.merge_outside(plan.masks, background, weights)
    # Closed form of the merge: per coalition, the distinct background rows outside it.
    distinct = [len({row[~mask].tobytes() for row in background}) for mask in plan.masks]
    np.testing.assert_array_equal(np.diff(pairs.starts), distinct)
    np.testing.assert_allclose(np.add.reduceat(pairs.weight, pairs.starts[:-1]), 1.0, rtol=0, atol=1e-15)
    assert sum(seen) == len(rows) * pairs.n_pairs < len(rows) * plan.n_coalitions * len(background) / 2


def test_merging_changes_no_bit_of_the_expectations():
    """Merged background rows are expanded back before the mean, which runs over every
    background row in its own order like the unmerged computation: the same bits, so a logit of
    probabilities within 1e-13 of 0 or 1 (Adult has such rows) stays as close to shap's."""
    rows, background, groups = one_hot_workload(n_rows=3)
    plan = ks.build_plan(np.arange(4), rows.shape[1], players=ks.player_matrix(groups, rows.shape[1]))
    weights = np.random.default_rng(4).uniform(0.5, 2.0, len(background))
    weights /= weights.sum()
    assert ks.merge_outside(plan.masks, background, weights).n_pairs < plan.n_coalitions * len(background)
    for w in (weights, None):
        ours = ks.evaluate_coalitions(one_hot_model, rows, background, plan.masks, weights=w)
        for r, x in enumerate(rows):
            synth = np.where(plan.masks[:, None, :], x[None, None, :], background[None, :, :])
            per_bg = one_hot_model(synth.reshape(-1, rows.shape[1])).reshape(
                plan.n_coalitions, len(background), -1
            )
            unmerged = per_bg.mean(axis=1) if w is None else np.einsum("snk,n->sk", per_bg, w)
            np.testing.assert_array_equal(ours[r], unmerged)


@pytest.mark.parametrize("values", [3, 40, None])
def test_merge_outside_counts_the_distinct_background_rows_outside_each_coalition(values):
    """Many columns (keys that overflow and are re-ranked, or all distinct early): per coalition,
    the pairs are the distinct background rows outside it, weights summed, values exact."""
    rng = np.random.default_rng(values or 0)
    shape = (40, 12)
    background = rng.normal(size=shape) if values is None else rng.integers(0, values, shape).astype(float)
    rows = rng.normal(size=(2, 12))
    plan = ks.build_plan(np.arange(12), 12, nsamples=600, seed=1)
    weights = rng.uniform(0.5, 2.0, 40)
    weights /= weights.sum()
    pairs = ks.merge_outside(plan.masks, background, weights)
    for s, mask in enumerate(plan.masks):
        outside = {row[~mask].tobytes() for row in background}
        members = pairs.background[pairs.starts[s] : pairs.starts[s + 1]]
        assert len(members) == len(outside) == len({background[n][~mask].tobytes() for n in members})
        for n, w in zip(members, pairs.weight[pairs.starts[s] : pairs.starts[s + 1]], strict=True):
            same = (background[:, ~mask] == background[n, ~mask]).all(axis=1)
            assert w == pytest.approx(weights[same].sum(), rel=1e-13)
    ours = ks.evaluate_coalitions(nonlinear_model, rows, background, plan.masks, weights=weights)
    naive = naive_expectations(nonlinear_model, rows, background, plan.masks, weights)
    np.testing.assert_allclose(ours, naive, rtol=1e-13, atol=1e-12)  # outputs up to 1e12


def test_merged_pairs_are_computed_once_per_process_for_the_same_coalitions(monkeypatch):
    """Ray tasks that split rows share their coalitions: the merge runs once, values unchanged."""
    calls = []
    merge = ks.merge_outside
    monkeypatch.setattr(ks, "merge_outside", lambda *a: calls.append(1) or merge(*a))
    monkeypatch.setattr(ks, "_PAIRS_CACHE", {})
    background = RNG.normal(size=(20, 5)).round(0)  # repeated values: some merging
    rows = RNG.normal(size=(4, 5))
    plan = ks.build_plan(np.arange(5), 5)
    first = ks.evaluate_coalitions(nonlinear_model, rows[:2], background, plan.masks)
    second = ks.evaluate_coalitions(nonlinear_model, rows[2:], background, plan.masks)
    assert len(calls) == 1
    other = background.copy()
    other[0, 0] += 1.0
    ks.evaluate_coalitions(nonlinear_model, rows[:2], other, plan.masks)
    assert len(calls) == 2
    weights = np.full(20, 1 / 20)
    naive = naive_expectations(nonlinear_model, rows, background, plan.masks, weights)
    np.testing.assert_allclose(np.concatenate([first, second]), naive, rtol=1e-13, atol=1e-13)


def test_rows_reusing_one_block_buffer_each_get_their_own_values():
    """The background side of a block is written once and each row overwrites its coalition's
    cells: a row must never see the previous row's values (several rows, several blocks)."""
    background = RNG.normal(size=(40, 6))
    rows = RNG.normal(size=(5, 6))
    plan = ks.build_plan(np.arange(6), 6)
    weights = np.full(40, 1 / 40)
    naive = naive_expectations(nonlinear_model, rows, background, plan.masks, weights)
    for per_call in (40, 100, 10_000):
        ours = ks.evaluate_coalitions(
            nonlinear_model, rows, background, plan.masks, max_rows_per_predict=per_call
        )
        np.testing.assert_allclose(ours, naive, rtol=0, atol=1e-12)


def test_model_calls_are_cache_sized_blocks_without_the_finiteness_scan():
    import sklearn

    background = RNG.normal(size=(100, 8))
    rows = RNG.normal(size=(2, 8))
    plan = ks.build_plan(np.arange(8), 8)
    calls: list[tuple[int, bool]] = []

    def recording(x: np.ndarray) -> np.ndarray:
        calls.append((len(x), sklearn.get_config()["assume_finite"]))
        return nonlinear_model(x)

    ks.evaluate_coalitions(recording, rows, background, plan.masks)
    per_call = max(ks.MIN_ROWS_PER_PREDICT, ks.BLOCK_BYTES // (8 * 8))
    assert max(n for n, _ in calls) <= per_call
    assert sum(n for n, _ in calls) == 2 * plan.n_coalitions * 100  # no two background rows coincide
    assert all(finite for _, finite in calls)
    assert not sklearn.get_config()["assume_finite"]  # restored afterwards


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


@pytest.mark.parametrize(
    ("rows", "workers", "batch_size", "tasks", "coalition_blocks"),
    [
        (8, 2, 2, 4, 1),  # the scaling benchmark's batch 2: rows alone give 2 tasks per worker
        (8, 1, 2, 4, 1),
        (2, 2, 1, 4, 2),  # 2 row blocks on 2 workers: halves, for 2 tasks each
        (10, 8, 5, 16, 8),  # 2 row blocks on 8 workers: 2 tasks each, not TASKS_PER_WORKER
        (3, 2, 1, 6, 2),  # 3 row blocks cannot share 2 workers evenly: halves make 6
    ],
)
def test_split_work_with_a_batch_size_splits_coalitions_only_to_balance(
    rows, workers, batch_size, tasks, coalition_blocks
):
    blocks = ks.split_work(rows, 2046, 100, workers, batch_size)
    assert len(blocks) == tasks
    assert len({(b.coalitions.start, b.coalitions.stop) for b in blocks}) == coalition_blocks


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


# --- issue 9 ----------------------------------------------------------------------------------


def test_logit_link_on_a_forest_with_probabilities_0_and_1_is_finite_and_equals_shap(wine_csv):
    """Fault 1: a forest predicts probabilities of exactly 0 and 1; shap clips before the logit."""
    from app import etl, model

    split = model.split_data(etl.load_dataset(str(wine_csv)))
    forest = model.train_forest(split, n_estimators=5).model
    data = model.get_data_to_explain(split, rows=2, background=20)
    assert np.any(forest.predict_proba(data.rows) == 0)  # log(0): NaN values before the fix
    ours = ks.explain(forest.predict_proba, data.rows, data.background, link=ks.Link.LOGIT)
    theirs, expected = reference(forest.predict_proba, data.rows, data.background, link="logit")
    assert np.isfinite(ours.values).all() and np.isfinite(ours.expected_value).all()
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.expected_value, expected, rtol=0, atol=1e-12)


def test_logit_link_clips_like_shap():
    from shap.utils._legacy import LogitLink

    p = np.array([0.0, 1.0, 0.5, 1e-20, 0.3])
    np.testing.assert_array_equal(ks.Link.LOGIT.apply(p), LogitLink.f(p))
    assert np.isfinite(ks.Link.LOGIT.apply(p)).all()


def timestamp_data(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    t = 1.7e9 + rng.uniform(0, 5000, n)
    return np.column_stack([t, rng.normal(size=n), rng.normal(size=n)]), t


def threshold_model(x: np.ndarray) -> np.ndarray:
    p = (x[:, 0] > 1.7e9 + 2500).astype(np.float64)
    return np.stack([1 - p, p], axis=1)


def test_a_timestamp_that_varies_carries_the_whole_effect():
    """Fault 2: t = 1.7e9 + uniform(0, 5000) is within np.allclose of every background value,
    so shap zeroes it; ours gives t all of f(x) - E f (the model depends on t alone)."""
    x, _ = timestamp_data()
    background, rows = x[:40], x[40:46]
    ours = ks.explain(threshold_model, rows, background)
    closed = threshold_model(rows) - threshold_model(background).mean(axis=0)
    np.testing.assert_allclose(ours.values[:, 0, :], closed, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.values[:, 1:, :], 0.0, rtol=0, atol=1e-12)
    assert np.abs(closed).max() > 0.4  # the effect is real and large
    # shap's rule calls t constant in every row; the disagreement is found and named.
    assert ks.reference_constant_players(rows, background) == {0: list(range(6))}
    theirs, _ = reference(threshold_model, rows, background)
    assert np.all(theirs[:, 0, :] == 0)


def test_varying_rule_is_exact_inequality_with_nan_equal_to_nan():
    background = np.array([[1.0, np.nan, 3.0], [1.0, np.nan, 3.0 + 1e-12]])
    rows = np.array([[1.0, np.nan, 3.0], [1.0 + 1e-12, 2.0, 3.0]])
    np.testing.assert_array_equal(
        ks.varying_features(rows, background), [[False, False, True], [True, True, True]]
    )
    players = ks.player_matrix([[0, 1], [2]], 3)
    np.testing.assert_array_equal(ks.varying_features(rows[:1], background[:1], players), [[False, False]])


def test_exact_enumeration_that_cannot_fit_is_refused_without_allocating():
    """Fault 3 in the core: sized before it is built, refused with what to pass instead."""
    start = time.perf_counter()
    with pytest.raises(ks.PlanTooLargeError) as caught:
        ks.resolve_nsamples("exact", 40, 1, 5, 2)
    assert time.perf_counter() - start < 0.1
    message = str(caught.value)
    assert f"{ks.exact_nsamples(40):,} coalitions" in message
    assert "PB of memory" in message and "budget" in message and "--nsamples 2128" in message


def test_default_is_exact_when_affordable_and_sampled_otherwise():
    assert ks.resolve_nsamples(None, 12, 16, 100) == ks.exact_nsamples(12)  # 4094 x 1600 rows: cheap
    assert ks.resolve_nsamples(None, 12, 2560, 100) is None  # 1e9 model rows: shap's default
    assert ks.resolve_nsamples(None, 25, 1, 10) is None  # a 25-player exact plan needs ~20 GB
    assert ks.resolve_nsamples(None, 5, 100_000, 1000) == ks.exact_nsamples(5)  # never above 2M+2048
    assert ks.resolve_nsamples(300, 40, 1, 5) == 300
    with pytest.raises(ks.PlanTooLargeError):
        ks.resolve_nsamples(10**9, 40, 16, 100)


def test_a_budget_too_small_for_the_regression_is_refused_with_what_to_pass():
    """--nsamples 1 over 40 players would end in a singular regression and a NaN verdict."""
    with pytest.raises(ks.PlanTooSmallError, match="pass at least 80"):
        ks.resolve_nsamples(1, 40, 2, 20)
    assert ks.resolve_nsamples(80, 40, 2, 20) == 80
    assert ks.resolve_nsamples(2, 2, 2, 20) == 2  # 2 players: exact enumeration is 2 coalitions


def test_standard_errors_are_calibrated_against_the_exact_values():
    """Fault 5: (sampled - exact) / se behaves like a standard normal across seeds."""
    m = 12
    background = RNG.normal(size=(8, m))
    rows = RNG.normal(size=(2, m))
    exact = ks.explain(nonlinear_model, rows, background, nsamples="exact")
    assert exact.exact and exact.standard_errors is None
    z = []
    for seed in range(30):
        run = ks.explain(nonlinear_model, rows, background, nsamples=500, seed=seed)
        assert run.standard_errors is not None and run.standard_errors.shape == run.values.shape
        z.append((run.values - exact.values) / run.standard_errors)
    mean_square = float(np.mean(np.square(z)))
    assert 0.7 < mean_square < 1.4, mean_square
    assert np.mean(np.abs(z) > 3) < 0.01


def test_standard_errors_equal_the_sandwich_definition_draw_by_draw():
    """The matrix-product form of standard_errors equals Var = n Cov_draws(T_u) computed one draw
    at a time (T_u = sum over the draw's coalitions of solver[:, s] residual[s] / count_u; the
    last player's term minus the others'), with pairs, repeated draws and the logit link."""
    from app.contract import Link

    m = 7
    background = RNG.normal(size=(6, m))
    rows = RNG.normal(size=(3, m))
    plan = ks.build_plan(np.arange(m), m, nsamples=60, seed=5)
    assert not plan.exact and plan.counts is not None and plan.units is not None
    assert (plan.counts > 1).any() and np.bincount(plan.units[plan.units >= 0]).max() == 2
    outputs = lambda x: 1 / (1 + np.exp(-nonlinear_model(x)[:, :2]))  # noqa: E731
    ey = ks.evaluate_coalitions(outputs, rows, background, plan.masks)
    fx, fnull = outputs(rows), outputs(background).mean(axis=0)
    ours = ks.standard_errors(plan, ey, fx, fnull, Link.LOGIT)

    lfnull = Link.LOGIT.apply(fnull)
    delta = Link.LOGIT.apply(fx) - lfnull
    z = plan.small.astype(float)
    design = z[:, :-1] - z[:, -1:]
    expected = np.zeros_like(ours)
    for r in range(len(rows)):
        for k in range(fx.shape[1]):
            y = Link.LOGIT.apply(ey[r, :, k]) - lfnull[k] - z[:, -1] * delta[r, k]
            residual = y - design @ (plan.solver @ y)
            terms, weights = [], []
            for unit in np.unique(plan.units[plan.units >= 0]):
                members = np.flatnonzero(plan.units == unit)
                count = plan.counts[members[0]]
                head = sum(plan.solver[:, s] * residual[s] / count for s in members)
                terms.append(np.r_[head, -head.sum()])
                weights.append(count)
            t, w = np.array(terms), np.array(weights)
            n = w.sum()
            mean = (w[:, None] * t).sum(axis=0) / n
            expected[r, :, k] = np.sqrt(n * (w[:, None] * (t - mean) ** 2).sum(axis=0) / (n - 1))
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=0)


def test_tol_adds_coalitions_until_the_largest_standard_error_is_below_it():
    m = 12
    background = RNG.normal(size=(6, m))
    rows = RNG.normal(size=(2, m))
    first = ks.explain(nonlinear_model, rows, background, nsamples=200)
    assert first.standard_errors is not None
    tol = float(first.standard_errors.max()) / 3
    converged = ks.explain(nonlinear_model, rows, background, nsamples=200, tol=tol)
    assert converged.n_coalitions > 4 * first.n_coalitions
    assert converged.standard_errors is None or converged.standard_errors.max() <= tol
    again = ks.explain(nonlinear_model, rows, background, nsamples=200, tol=tol)
    np.testing.assert_array_equal(again.values, converged.values)  # seeded: reproducible


def test_groups_equal_shaps_grouped_kernel_explainer_to_1e9():
    from shap.utils._legacy import DenseData

    background = RNG.normal(size=(15, 8))
    rows = RNG.normal(size=(3, 8))
    groups = [[0, 3], [1], [2, 4, 5], [6, 7]]
    ours = ks.explain(nonlinear_model, rows, background, groups=groups)
    data = DenseData(background, ["a", "b", "c", "d"], [np.array(g) for g in groups])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.KernelExplainer(nonlinear_model, data)
        theirs = np.asarray(explainer.shap_values(rows, l1_reg=False, silent=True))
    assert ours.exact and ours.values.shape == theirs.shape == (3, 4, 3)
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-9)
    total = ours.values.sum(axis=1) + ours.expected_value
    np.testing.assert_allclose(total, nonlinear_model(rows), rtol=0, atol=1e-10)


def test_groups_must_partition_the_columns():
    with pytest.raises(ValueError, match="more than one group"):
        ks.player_matrix([[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError, match="in no group"):
        ks.player_matrix([[0, 1]], 3)


def test_weighted_background_equals_the_unweighted_duplicate_rows_to_1e12():
    from shap.utils._legacy import DenseData

    distinct = RNG.normal(size=(6, 5))
    counts = np.array([1, 3, 2, 1, 4, 2])
    duplicated = np.repeat(distinct, counts, axis=0)
    rows = RNG.normal(size=(3, 5))
    plain = ks.explain(nonlinear_model, rows, duplicated)
    weighted = ks.explain(nonlinear_model, rows, distinct, background_weights=counts.astype(float))
    np.testing.assert_allclose(weighted.values, plain.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weighted.expected_value, plain.expected_value, rtol=0, atol=1e-12)
    merged, w = ks.merge_background(duplicated)
    np.testing.assert_array_equal(merged, distinct)
    np.testing.assert_allclose(w, counts / counts.sum(), rtol=0, atol=1e-15)
    # shap's weighted background (DenseData weights) means the same
    data = DenseData(distinct, [str(i) for i in range(5)], None, counts.astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.asarray(
            shap.KernelExplainer(nonlinear_model, data).shap_values(rows, l1_reg=False, silent=True)
        )
    np.testing.assert_allclose(weighted.values, theirs, rtol=0, atol=1e-9)


def test_background_weights_are_checked():
    with pytest.raises(ValueError, match="finite, non-negative"):
        ks.merge_background(np.zeros((2, 3)), [1.0, -1.0])
    with pytest.raises(ValueError, match="shape"):
        ks.merge_background(np.zeros((2, 3)), [1.0])


def test_merged_pairs_follow_the_background_order_within_each_coalition():
    """The model sees each coalition's rows in the background's own order (a forest predicts
    rows in key order ~15% slower): identity when nothing merges, ascending first rows when
    some do."""
    rng = np.random.default_rng(3)
    masks = ks.build_plan(np.arange(5), 5).masks
    distinct = rng.normal(size=(40, 5))
    pairs = ks.merge_outside(masks, distinct, np.full(40, 1 / 40))
    assert pairs.n_pairs == len(masks) * 40
    assert np.array_equal(pairs.background, np.tile(np.arange(40), len(masks)))
    assert np.array_equal(pairs.pair_of, np.arange(len(masks) * 40).reshape(len(masks), 40))

    repeated = rng.integers(0, 2, size=(40, 5)).astype(np.float64)
    pairs = ks.merge_outside(masks, repeated, np.full(40, 1 / 40))
    for s in range(len(masks)):
        firsts = pairs.background[pairs.starts[s] : pairs.starts[s + 1]]
        assert np.all(np.diff(firsts) > 0)
        # each background row's pair is the one headed by the first row equal to it outside s
        outside = ~masks[s]
        heads = pairs.background[pairs.pair_of[s]]
        assert np.array_equal(repeated[heads][:, outside], repeated[:, outside])
        assert np.all(heads <= np.arange(40))
