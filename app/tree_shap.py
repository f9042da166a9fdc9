"""Exact interventional SHAP for tree ensembles, in float64, with each model's own splits. Ray-free.

What it computes: the Shapley values of the game ``v(S) = mean over background rows z of
f(x_S, z_rest)`` -- the interventional ("background") SHAP values, exactly what exact KernelSHAP
(``app.kernel_shap`` with ``nsamples=exact_nsamples(M)``) computes with the same background and
the identity link, but from the trees themselves instead of 2^M model calls per row.

The algorithm (leaf regions, background aggregated per leaf):

* A leaf L is reached by the hybrid row (x_S, z_rest) iff, for every feature f split on along
  its path, the value used for f lies in the leaf's region R_f (all splits on f combined into
  one interval ``lo < value <= hi`` plus where a missing value goes). So only two bits per
  feature and leaf matter: ``a_f = [x_f in R_f]`` and ``b_f = [z_f in R_f]``.
* The leaf is reachable iff every path feature has a_f or b_f. Then its indicator game is
  ``1[A subset of S and B disjoint from S]`` with ``A = {a and not b}`` and ``B = {b and not a}``
  (here B is always ``{not a}``); its Shapley values are closed-form (Lundberg et al. 2020,
  "From local explanations to global understanding with explainable AI for trees", Nature MI;
  the baseline-Shapley weights): ``v_L * (|A|-1)! |B|! / (|A|+|B|)!`` for each feature of A and
  ``-v_L * |A|! (|B|-1)! / (|A|+|B|)!`` for each feature of B.
* The b patterns depend only on the background, so they are computed once per leaf and
  aggregated: equal patterns merge into one with a weight (count / N). For a leaf with at most
  MAX_TABLE_FEATURES (6) path features the coefficients of every possible x-pattern are then
  tabled (2^D x D floats), so an explained row costs D additions per leaf; deeper leaves loop
  over their distinct background patterns per row. Per explained row the cost is
  sum over leaves of (D + [D or the leaf's distinct patterns]), independent of N once the
  background is aggregated -- instead of rows x background x tree walk as in Lundberg et al.'s
  per-pair algorithm (shap's ``feature_perturbation="interventional"``). This is the
  aggregation idea of PLTreeSHAP and WOODELF (cost growing with rows + background, patterns of
  a leaf's path as bits), written here in a plain form that also serves deep unpruned forests
  (wine: ~18 levels, ~280 leaves a tree, ~7 path features a leaf) where 2^depth tables do not
  fit. The region test is vectorised over rows (leaf-major patterns) and the accumulation runs
  leaf by leaf, compiled with numba; everything accumulates in float64.
* Cost, wine forest (100 trees, 18,826 leaves, background 100): ~2 ms a row on one CPU; the
  boosted benchmark model (200 trees of depth 6): ~0.4 ms (benchmarks/tree_shap.py).

Comparison semantics, per model (each checked against the model's own predict in the tests):
scikit-learn trees (forests, GradientBoosting) cast inputs to float32 and go left iff
``x <= threshold`` (float64 threshold); HistGradientBoosting compares float64 inputs with
``x <= threshold`` and sends missing values per node; XGBoost goes left iff ``x < split`` in
float32 (rewritten here as ``x <= previous float32``), missing to the node's default child;
LightGBM compares float64 inputs with ``x <= threshold``, missing per ``missing_type``.

Why shap's interventional TreeExplainer (0.51) is off on the wine data (tree-shap-notes.md):
(1) it compares float64 inputs with the thresholds, where scikit-learn first casts inputs to
float32, so a value such as 0.635 (float32: 0.63499999...) that equals a threshold goes the other
way; (2) its C++ tree node stores each threshold as a C ``float`` (``Node::thres`` in
``shap/cext/tree_shap.h``). scikit-learn's thresholds are float64 midpoints between two
neighbouring float32 data values, usually not float32 numbers themselves; rounded to float32,
about half of them round *up* onto the upper data value, which then goes left in shap and right
in scikit-learn. Deep trees split between close neighbouring values in small nodes all the
time (3,870 of the wine forest's 7,892 non-float32 thresholds round up), so inputs equal to a
training value hit such a split often. Rounding those thresholds down to float32 and casting
inputs to float32 brings shap to 2.4e-9 of brute force on the notes' deep-forest case (the rest
is its float32 accumulation); HistGradientBoosting (float64 inputs and thresholds) is hit
harder: 0.077 on the raw margin in the benchmark.

Conventions: ``M`` features, ``N`` background rows, ``R`` explained rows, ``K`` model outputs,
``L`` leaves of the whole ensemble, ``P`` (leaf, path feature) pairs, ``D`` path features of one
leaf (at most 63).

Raises ``UnsupportedModelError`` for a model (or a split kind, such as categorical splits) that
this module does not cover, and ``ValueError`` for non-finite leaf values or thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from app.errors import UnsupportedModelError

FloatArray = npt.NDArray[np.float64]
MAX_PATH_FEATURES = 63  # leaf patterns are bits of one uint64
# Leaves with at most this many path features get a table of their coefficients for every
# x-pattern (2^D x D floats: 384 at most), built once from the background; a row then costs D
# additions per leaf instead of a pass over the leaf's background patterns.
MAX_TABLE_FEATURES = 6
MASKS_PER_CHUNK = 1 << 22  # (row, leaf) patterns held at once: 32 MB

SUPPORTED = (
    "RandomForestClassifier/Regressor, ExtraTreesClassifier/Regressor, GradientBoostingClassifier/Regressor, "
    "HistGradientBoostingClassifier/Regressor, XGBClassifier/XGBRegressor, LGBMClassifier/LGBMRegressor"
)


@dataclass(frozen=True)
class _Tree:
    """One tree in a common form: node arrays, children -1 at leaves; go left iff x <= threshold."""

    left: npt.NDArray[np.intp]
    right: npt.NDArray[np.intp]
    feature: npt.NDArray[np.intp]
    threshold: FloatArray
    missing_left: npt.NDArray[np.bool_]
    value: FloatArray  # (nodes, K), already scaled (1/trees for a forest, the learning rate...)
    output: int | None = None  # boosted multi-class: the output this tree adds to; None: all


@dataclass(frozen=True)
class TreeEnsemble:
    """Every leaf of the ensemble with its region, flattened; picklable, no model inside."""

    n_features: int
    output: str  # what the values explain: "probability (predict_proba)", "raw margin (...)"
    input_dtype: type[np.floating]  # the model's own input cast before comparing
    leaf_value: FloatArray  # (L, K)
    leaf_start: npt.NDArray[np.int64]  # (L + 1,) CSR into the path arrays
    path_feature: npt.NDArray[np.int64]  # (P,)
    path_lo: FloatArray  # (P,) value in region iff lo < value <= hi
    path_hi: FloatArray  # (P,)
    path_nan: npt.NDArray[np.bool_]  # (P,) a missing value lies in the region

    @property
    def n_outputs(self) -> int:
        return int(self.leaf_value.shape[1])

    def region_masks(self, x: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """(L, R) bit patterns (leaf-major: one leaf's rows are contiguous): bit j of leaf L set iff
        the row lies in L's region for its j-th path feature, the row first cast to the model's
        input dtype."""
        rows = np.asarray(np.asarray(x, dtype=np.float64).astype(self.input_dtype), dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {rows.shape}")
        if np.isinf(rows).any():
            raise ValueError("rows to explain or background contain infinite values")
        masks: npt.NDArray[np.uint64] = _region_masks(
            np.ascontiguousarray(rows.T),
            self.leaf_start,
            self.path_feature,
            self.path_lo,
            self.path_hi,
            self.path_nan,
        )
        return masks

    def predict(self, x: npt.ArrayLike) -> FloatArray:
        """Sum of the leaf values each row reaches, (R, K), without the model's base score."""
        masks = self.region_masks(x)
        return np.asarray((masks == self.full_masks()[:, None]).T.astype(np.float64) @ self.leaf_value)

    def full_masks(self) -> npt.NDArray[np.uint64]:
        depth = np.diff(self.leaf_start).astype(np.uint64)
        return np.asarray((np.uint64(1) << depth) - np.uint64(1), dtype=np.uint64)


@dataclass(frozen=True)
class BackgroundStats:
    """The background aggregated per leaf: distinct patterns and their weights (count / N)."""

    start: npt.NDArray[np.int64]  # (L + 1,) CSR into mask/weight
    mask: npt.NDArray[np.uint64]
    weight: FloatArray
    table_start: npt.NDArray[np.int64]  # (L + 1,) CSR into table; empty for leaves without one
    table: FloatArray  # per leaf with D <= MAX_TABLE_FEATURES: (2^D, D) coefficients, flattened
    expected_value: FloatArray  # (K,) E over the background of the model's output
    n_background: int


@dataclass(frozen=True)
class TreeModel:
    """The ensemble, its base score and the model's own output function (for the checks)."""

    ensemble: TreeEnsemble
    base: FloatArray  # (K,) the model's output minus the trees' sum (init / base score)
    kind: str  # the model's class name


# --------------------------------------------------------------------------- model extraction


def _sklearn_tree(tree: Any, value: FloatArray, output: int | None = None) -> _Tree:
    left = np.asarray(tree.children_left, dtype=np.intp)
    missing = getattr(tree, "missing_go_to_left", None)
    missing_left = np.zeros(len(left), dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    return _Tree(
        left,
        np.asarray(tree.children_right, dtype=np.intp),
        np.asarray(tree.feature, dtype=np.intp),
        np.asarray(tree.threshold, dtype=np.float64),
        missing_left,
        value,
        output,
    )


def _forest_trees(model: Any, classifier: bool) -> list[_Tree]:
    if getattr(model, "n_outputs_", 1) != 1 and classifier:
        raise UnsupportedModelError("multi-output forest classifiers are not supported by --algorithm tree")
    trees = []
    n = len(model.estimators_)
    for estimator in model.estimators_:
        raw = np.asarray(estimator.tree_.value, dtype=np.float64)  # (nodes, outputs, classes)
        # classifiers: the class shares of the leaf, as predict_proba averages them
        value = raw[:, 0, :] / raw[:, 0, :].sum(axis=1, keepdims=True) if classifier else raw[:, :, 0]
        trees.append(_sklearn_tree(estimator.tree_, value / n))
    return trees


def _gradient_boosting_trees(model: Any) -> list[_Tree]:
    stages = model.estimators_  # (stages, K) DecisionTreeRegressor, scaled by the learning rate
    k = stages.shape[1]
    return [
        _sklearn_tree(
            est.tree_,
            np.asarray(est.tree_.value, dtype=np.float64)[:, 0, :1] * model.learning_rate,
            j if k > 1 else None,
        )
        for stage in stages
        for j, est in enumerate(stage)
    ]


def _hist_gradient_boosting_trees(model: Any) -> list[_Tree]:
    if getattr(model, "is_categorical_", None) is not None and np.any(model.is_categorical_):
        raise UnsupportedModelError(
            "HistGradientBoosting with categorical features is not supported by --algorithm tree "
            "(its categorical splits are sets, not thresholds); use --algorithm kernel"
        )
    trees = []
    for stage in model._predictors:
        for j, predictor in enumerate(stage):
            nodes = predictor.nodes
            if np.any(nodes["is_categorical"]):
                raise UnsupportedModelError("HistGradientBoosting categorical splits are not supported")
            leaf = nodes["is_leaf"].astype(bool)
            left = np.where(leaf, -1, nodes["left"].astype(np.intp))
            right = np.where(leaf, -1, nodes["right"].astype(np.intp))
            value = np.asarray(nodes["value"], dtype=np.float64)[:, None]
            trees.append(
                _Tree(
                    left,
                    right,
                    np.asarray(nodes["feature_idx"], dtype=np.intp),
                    np.asarray(nodes["num_threshold"], dtype=np.float64),
                    nodes["missing_go_to_left"].astype(bool),
                    value,
                    j if len(stage) > 1 else None,
                )
            )
    return trees


def _xgboost_trees(model: Any) -> list[_Tree]:
    frame = model.get_booster().trees_to_dataframe()
    if "Category" in frame and frame["Category"].notna().any():
        raise UnsupportedModelError("XGBoost categorical splits are not supported by --algorithm tree")
    n_classes = int(getattr(model, "n_classes_", 0) or 0)
    outputs = n_classes if n_classes > 2 else 1
    names = list(model.get_booster().feature_names or [f"f{i}" for i in range(model.n_features_in_)])
    trees = []
    for tree_id, nodes in frame.groupby("Tree", sort=True):
        ids = {node_id: i for i, node_id in enumerate(nodes["ID"])}
        is_leaf = (nodes["Feature"] == "Leaf").to_numpy()
        child = np.vectorize(lambda node_id, ids=ids: ids.get(node_id, -1), otypes=[np.intp])
        left = np.where(is_leaf, -1, child(nodes["Yes"].fillna("").to_numpy()))
        right = np.where(is_leaf, -1, child(nodes["No"].fillna("").to_numpy()))
        missing = child(nodes["Missing"].fillna("").to_numpy())
        feature = np.array(
            [-1 if leaf else names.index(f) for f, leaf in zip(nodes["Feature"], is_leaf, strict=True)]
        )
        split = nodes["Split"].fillna(0.0).to_numpy(dtype=np.float64).astype(np.float32)
        # x < split in float32  <=>  x <= the float32 just below split
        threshold = np.nextafter(split, np.float32(-np.inf)).astype(np.float64)
        value = np.where(is_leaf, nodes["Gain"].to_numpy(dtype=np.float64), 0.0)[:, None]
        value = value.astype(np.float32).astype(np.float64)
        trees.append(
            _Tree(
                left.astype(np.intp),
                right.astype(np.intp),
                feature.astype(np.intp),
                threshold,
                (missing == left) & ~is_leaf,
                value,
                int(tree_id) % outputs if outputs > 1 else None,
            )
        )
    return trees


def _lightgbm_trees(model: Any) -> list[_Tree]:
    dump = model.booster_.dump_model()
    per_iteration = int(dump.get("num_tree_per_iteration", 1))
    trees = []
    for info in dump["tree_info"]:
        nodes: list[dict[str, Any]] = []

        def visit(node: dict[str, Any], nodes: list[dict[str, Any]] = nodes) -> int:
            index = len(nodes)
            nodes.append(node)
            if "leaf_index" in node or ("leaf_value" in node and "split_index" not in node):
                node["_left"] = node["_right"] = -1
                return index
            if node["decision_type"] != "<=":
                raise UnsupportedModelError(
                    "LightGBM categorical splits are not supported by --algorithm tree"
                )
            if node["missing_type"] == "Zero":
                raise UnsupportedModelError(
                    "LightGBM zero-as-missing splits are not supported by --algorithm tree"
                )
            node["_left"] = visit(node["left_child"])
            node["_right"] = visit(node["right_child"])
            return index

        visit(info["tree_structure"])
        leaf = np.array([n["_left"] == -1 for n in nodes])
        threshold = np.array(
            [0.0 if lf else float(n["threshold"]) for n, lf in zip(nodes, leaf, strict=True)]
        )
        # missing_type None: LightGBM turns NaN into 0 before comparing; NaN: the default child
        missing_left = np.array(
            [
                False
                if lf
                else (bool(n["default_left"]) if n["missing_type"] == "NaN" else float(n["threshold"]) >= 0.0)
                for n, lf in zip(nodes, leaf, strict=True)
            ]
        )
        trees.append(
            _Tree(
                np.array([n["_left"] for n in nodes], dtype=np.intp),
                np.array([n["_right"] for n in nodes], dtype=np.intp),
                np.array(
                    [-1 if lf else n["split_feature"] for n, lf in zip(nodes, leaf, strict=True)],
                    dtype=np.intp,
                ),
                threshold,
                missing_left,
                np.array(
                    [n.get("leaf_value", 0.0) if lf else 0.0 for n, lf in zip(nodes, leaf, strict=True)]
                )[:, None],
                info["tree_index"] % per_iteration if per_iteration > 1 else None,
            )
        )
    return trees


def model_output(model: Any) -> tuple[Callable[[Any], Any], str]:
    """The model's own output that the tree path explains, and how to name it.

    Forest classifiers: probabilities of every class (predict_proba); regressors: predict;
    boosted classifiers: the raw margin (decision_function / raw score), not probabilities.
    Raises UnsupportedModelError for any other model.
    """
    kind = type(model).__name__
    module = type(model).__module__
    if kind in ("RandomForestClassifier", "ExtraTreesClassifier"):
        return model.predict_proba, "probability of each class (predict_proba)"
    if kind in ("RandomForestRegressor", "ExtraTreesRegressor"):
        return model.predict, "prediction (predict)"
    if kind in ("GradientBoostingClassifier", "HistGradientBoostingClassifier"):
        return model.decision_function, "raw margin (decision_function), not probability"
    if kind in ("GradientBoostingRegressor", "HistGradientBoostingRegressor"):
        return model.predict, "prediction (predict)"
    if module.startswith("xgboost") and kind in ("XGBClassifier", "XGBRegressor"):
        return (lambda x: model.predict(x, output_margin=True)), "raw margin (output_margin=True)"
    if module.startswith("lightgbm") and kind in ("LGBMClassifier", "LGBMRegressor"):
        return (lambda x: model.predict(x, raw_score=True)), "raw score (raw_score=True)"
    raise UnsupportedModelError(
        f"--algorithm tree does not support {kind}; it supports {SUPPORTED}. Use --algorithm kernel."
    )


def is_supported(model: Any) -> bool:
    """True if ``extract`` covers this model (what ``--algorithm auto`` asks)."""
    try:
        model_output(model)
    except UnsupportedModelError:
        return False
    return True


def _trees_of(model: Any) -> tuple[list[_Tree], type[np.floating]]:
    kind = type(model).__name__
    if kind in ("RandomForestClassifier", "ExtraTreesClassifier"):
        return _forest_trees(model, classifier=True), np.float32
    if kind in ("RandomForestRegressor", "ExtraTreesRegressor"):
        return _forest_trees(model, classifier=False), np.float32
    if kind in ("GradientBoostingClassifier", "GradientBoostingRegressor"):
        return _gradient_boosting_trees(model), np.float32
    if kind.startswith("HistGradientBoosting"):
        return _hist_gradient_boosting_trees(model), np.float64
    if kind.startswith("XGB"):
        return _xgboost_trees(model), np.float32
    return _lightgbm_trees(model), np.float64


def extract(model: Any, n_outputs: int | None = None) -> TreeEnsemble:
    """Flatten a fitted model's trees into leaf regions. Raises UnsupportedModelError."""
    _, output = model_output(model)
    trees, dtype = _trees_of(model)
    k = n_outputs or max(*(t.value.shape[1] for t in trees), *(1 + (t.output or 0) for t in trees))
    n_features = int(model.n_features_in_)
    values: list[FloatArray] = []
    starts = [0]
    feats: list[int] = []
    los: list[float] = []
    his: list[float] = []
    nans: list[bool] = []
    for tree in trees:
        if not (np.isfinite(tree.value).all() and np.isfinite(tree.threshold[tree.left >= 0]).all()):
            raise ValueError(f"{type(model).__name__} has non-finite leaf values or thresholds")
        # depth-first, carrying the region of every feature seen on the path
        stack: list[tuple[int, dict[int, tuple[float, float, bool]]]] = [(0, {})]
        while stack:
            node, region = stack.pop()
            if tree.left[node] < 0:
                if len(region) > MAX_PATH_FEATURES:
                    raise UnsupportedModelError(
                        f"a leaf's path splits on {len(region)} features; --algorithm tree supports "
                        f"at most {MAX_PATH_FEATURES}"
                    )
                value = np.zeros(k)
                if tree.output is None:
                    value[: tree.value.shape[1]] = tree.value[node]
                else:
                    value[tree.output] = tree.value[node, 0]
                values.append(value)
                for f, (lo, hi, nan) in sorted(region.items()):
                    feats.append(f)
                    los.append(lo)
                    his.append(hi)
                    nans.append(nan)
                starts.append(len(feats))
                continue
            f, t = int(tree.feature[node]), float(tree.threshold[node])
            lo, hi, nan = region.get(f, (-np.inf, np.inf, True))
            go_left = bool(tree.missing_left[node])
            stack.append((int(tree.right[node]), {**region, f: (max(lo, t), hi, nan and not go_left)}))
            stack.append((int(tree.left[node]), {**region, f: (lo, min(hi, t), nan and go_left)}))
    return TreeEnsemble(
        n_features,
        output,
        dtype,
        np.asarray(values, dtype=np.float64).reshape(-1, k),
        np.asarray(starts, dtype=np.int64),
        np.asarray(feats, dtype=np.int64),
        np.asarray(los, dtype=np.float64),
        np.asarray(his, dtype=np.float64),
        np.asarray(nans, dtype=bool),
    )


def prepare_model(model: Any, background: npt.ArrayLike, tolerance: float = 1e-6) -> TreeModel:
    """Extract the trees and find the model's base score; check the trees reproduce its output.

    The base is the model's output minus the trees' sum on the background: it must be the same
    for every row (else the output is not additive in the trees, e.g. an exp link), and so must
    the model's own output. Raises UnsupportedModelError if either check fails.
    """
    predict, _ = model_output(model)
    bg = np.asarray(background, dtype=np.float64)
    out = np.asarray(predict(bg), dtype=np.float64).reshape(len(bg), -1)
    ensemble = extract(model, out.shape[1])
    diff = out - ensemble.predict(bg)
    base = diff.mean(axis=0)
    spread = float(np.abs(diff - base).max())
    if not np.isfinite(spread) or spread > tolerance * (1.0 + float(np.abs(out).max())):
        raise UnsupportedModelError(
            f"{type(model).__name__}'s output is not the sum of its trees plus a constant here (off by "
            f"{spread:.3g}); --algorithm tree cannot explain it. Use --algorithm kernel."
        )
    return TreeModel(ensemble, base, type(model).__name__)


# --------------------------------------------------------------------------- the computation


def background_stats(tree_model: TreeModel, background: npt.ArrayLike) -> BackgroundStats:
    """Aggregate the background per leaf (done once; the explained rows reuse it)."""
    ensemble = tree_model.ensemble
    masks = ensemble.region_masks(background)  # (L, N)
    n = masks.shape[1]
    if n == 0:
        raise ValueError("the background is empty")
    start, mask, count = _aggregate(masks)
    full = ensemble.full_masks()
    reach = (masks == full[:, None]).mean(axis=1)  # share of the background reaching each leaf
    expected = tree_model.base + reach @ ensemble.leaf_value
    weight = count / n
    w_in, w_out = _weight_tables(MAX_PATH_FEATURES)
    t_start, table = _build_tables(ensemble.leaf_start, start, mask, weight, w_in, w_out, MAX_TABLE_FEATURES)
    return BackgroundStats(start, mask, weight, t_start, table, np.asarray(expected), n)


def explain_rows(
    tree_model: TreeModel, stats: BackgroundStats, rows: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Interventional SHAP values (R, M, K) of the rows against the aggregated background, and
    the model's output f(x) (R, K) from the same leaf patterns.

    Rows go through in chunks so the (L, rows) patterns stay near 32 MB whatever R is.
    """
    ensemble = tree_model.ensemble
    x = np.asarray(rows, dtype=np.float64)
    phi = np.zeros((x.shape[0], ensemble.n_features, ensemble.n_outputs))
    fx = np.zeros((x.shape[0], ensemble.n_outputs))
    w_in, w_out = _weight_tables(MAX_PATH_FEATURES)
    chunk = max(1, MASKS_PER_CHUNK // max(1, len(ensemble.leaf_value)))
    for start in range(0, x.shape[0], chunk):
        _accumulate(
            ensemble.region_masks(x[start : start + chunk]),
            ensemble.leaf_start,
            ensemble.path_feature,
            ensemble.leaf_value,
            stats.start,
            stats.mask,
            stats.weight,
            stats.table_start,
            stats.table,
            w_in,
            w_out,
            phi[start : start + chunk],
            fx[start : start + chunk],
        )
    fx += tree_model.base[None, :]
    if not (np.isfinite(phi).all() and np.isfinite(fx).all()):
        raise ValueError("the tree path produced non-finite SHAP values or outputs")
    return phi, fx


def shap_values(tree_model: TreeModel, stats: BackgroundStats, rows: npt.ArrayLike) -> FloatArray:
    """Interventional SHAP values (R, M, K); see explain_rows."""
    return explain_rows(tree_model, stats, rows)[0]


def model_outputs(tree_model: TreeModel, rows: npt.ArrayLike) -> FloatArray:
    """f(x) (R, K) from the trees: the base plus the leaf values each row reaches."""
    return tree_model.base[None, :] + tree_model.ensemble.predict(rows)


@dataclass(frozen=True)
class TreeExplanation:
    values: FloatArray  # (R, M, K)
    expected_value: FloatArray  # (K,)
    outputs: FloatArray  # (R, K) f(x) from the trees
    output: str  # what is explained, e.g. "raw margin (decision_function), not probability"


def explain(model: Any, rows: npt.ArrayLike, background: npt.ArrayLike) -> TreeExplanation:
    """Explain rows in this process; the Ray DAG runs the same steps in blocks of rows."""
    tree_model = prepare_model(model, background)
    stats = background_stats(tree_model, background)
    values, outputs = explain_rows(tree_model, stats, rows)
    return TreeExplanation(values, stats.expected_value, outputs, tree_model.ensemble.output)


def _weight_tables(d: int) -> tuple[FloatArray, FloatArray]:
    """w_in[k, m] = (k-1)! m! / (k+m)! and w_out[k, m] = k! (m-1)! / (k+m)!, exact to rounding."""
    w_in = np.zeros((d + 1, d + 1))
    w_out = np.zeros((d + 1, d + 1))
    for k in range(d + 1):
        for m in range(d + 1):
            if k + m == 0:
                continue
            if k > 0:
                w_in[k, m] = 1.0 / (k * math.comb(k + m, k))
            if m > 0:
                w_out[k, m] = 1.0 / (m * math.comb(k + m, m))
    return w_in, w_out


@numba.njit(cache=True, nogil=True)
def _region_masks(columns, leaf_start, path_feature, lo, hi, nan_ok):  # type: ignore[no-untyped-def]
    n_rows = columns.shape[1]
    n_leaves = leaf_start.shape[0] - 1
    out = np.zeros((n_leaves, n_rows), dtype=np.uint64)
    for leaf in range(n_leaves):
        s = leaf_start[leaf]
        for j in range(s, leaf_start[leaf + 1]):
            values = columns[path_feature[j]]
            low, high, nan, bit = lo[j], hi[j], nan_ok[j], np.uint64(1) << np.uint64(j - s)
            for r in range(n_rows):  # contiguous in r: the compiler vectorises this loop
                v = values[r]
                inside = (low < v) & (v <= high) | (nan & np.isnan(v))
                out[leaf, r] |= bit * np.uint64(inside)
    return out


@numba.njit(cache=True, nogil=True)
def _aggregate(masks):  # type: ignore[no-untyped-def]
    n_leaves, n = masks.shape
    start = np.zeros(n_leaves + 1, dtype=np.int64)
    mask = np.empty(n * n_leaves, dtype=np.uint64)
    count = np.empty(n * n_leaves, dtype=np.float64)
    used = 0
    for leaf in range(n_leaves):
        column = np.sort(masks[leaf])
        i = 0
        while i < n:
            j = i
            while j < n and column[j] == column[i]:
                j += 1
            mask[used] = column[i]
            count[used] = j - i
            used += 1
            i = j
        start[leaf + 1] = used
    return start, mask[:used].copy(), count[:used].copy()


@numba.njit(cache=True, nogil=True, inline="always")
def _popcount(x):  # type: ignore[no-untyped-def]
    n = 0
    while x:
        x &= x - np.uint64(1)
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _leaf_coefficients(a, d, lo, hi, bg_mask, bg_weight, w_in, w_out, coef):  # type: ignore[no-untyped-def]
    """Add to coef[:d] the SHAP coefficient of each path feature of one leaf for x-pattern a:
    the background patterns lo..hi that can reach the leaf with x, weighted in closed form."""
    one = np.uint64(1)
    full = (one << np.uint64(d)) - one
    not_a = full & ~a
    m = d - _popcount(a)
    out_sum = 0.0
    for j in range(lo, hi):
        b = bg_mask[j]
        if (b & not_a) != not_a:
            continue  # a feature outside both regions: the leaf is unreachable for this pair
        in_x = a & ~b
        k = _popcount(in_x)
        w = bg_weight[j]
        if m > 0:
            out_sum += w * w_out[k, m]
        if k > 0:
            wk = w * w_in[k, m]
            bits = in_x
            while bits:
                low = bits & (~bits + one)
                coef[_popcount(low - one)] += wk
                bits ^= low
    if out_sum != 0.0:
        bits = not_a
        while bits:
            low = bits & (~bits + one)
            coef[_popcount(low - one)] -= out_sum
            bits ^= low


@numba.njit(cache=True, nogil=True)
def _build_tables(leaf_start, bg_start, bg_mask, bg_weight, w_in, w_out, max_d):  # type: ignore[no-untyped-def]
    """For leaves with at most max_d path features: the coefficients for every x-pattern."""
    n_leaves = leaf_start.shape[0] - 1
    t_start = np.zeros(n_leaves + 1, dtype=np.int64)
    for leaf in range(n_leaves):
        d = leaf_start[leaf + 1] - leaf_start[leaf]
        size = d << d if 0 < d <= max_d else 0
        t_start[leaf + 1] = t_start[leaf] + size
    table = np.zeros(t_start[n_leaves])
    for leaf in range(n_leaves):
        d = leaf_start[leaf + 1] - leaf_start[leaf]
        if t_start[leaf + 1] == t_start[leaf]:
            continue
        for a in range(1 << d):
            base = t_start[leaf] + a * d
            _leaf_coefficients(
                np.uint64(a),
                d,
                bg_start[leaf],
                bg_start[leaf + 1],
                bg_mask,
                bg_weight,
                w_in,
                w_out,
                table[base : base + d],
            )
    return t_start, table


@numba.njit(cache=True, nogil=True)
def _accumulate(  # type: ignore[no-untyped-def]
    masks,
    leaf_start,
    path_feature,
    leaf_value,
    bg_start,
    bg_mask,
    bg_weight,
    t_start,
    table,
    w_in,
    w_out,
    phi,
    fx,
):
    """Leaf by leaf (its table and patterns stay in cache), every row: phi (R, M, K) and the
    trees' sum fx (R, K) grow in place."""
    n_leaves, n_rows = masks.shape
    n_out = leaf_value.shape[1]
    coef = np.zeros(MAX_PATH_FEATURES + 1)
    one = np.uint64(1)
    for leaf in range(n_leaves):
        s = leaf_start[leaf]
        d = leaf_start[leaf + 1] - s
        full = (one << np.uint64(d)) - one
        tabled = t_start[leaf + 1] > t_start[leaf]
        for r in range(n_rows):
            a = masks[leaf, r]
            if a == full:
                for o in range(n_out):
                    fx[r, o] += leaf_value[leaf, o]
            if d == 0:
                continue
            if tabled:
                base = t_start[leaf] + np.int64(a) * d
                row = table[base : base + d]
            else:
                coef[:d] = 0.0
                _leaf_coefficients(
                    a, d, bg_start[leaf], bg_start[leaf + 1], bg_mask, bg_weight, w_in, w_out, coef
                )
                row = coef[:d]
            for j in range(d):
                c = row[j]
                if c != 0.0:
                    f = path_feature[s + j]
                    for o in range(n_out):
                        phi[r, f, o] += c * leaf_value[leaf, o]
    return phi


MIN_ROWS_PER_TASK = 64  # below this a Ray task's overhead (ms) is no longer small next to its work
MAX_ROWS_PER_TASK = 50_000  # keeps a task's result (rows x M x K float64) to tens of MB
TASKS_PER_WORKER = 4


def row_blocks(n_rows: int, workers: int, batch_size: int | None = None) -> list[slice]:
    """Blocks of rows for the Ray tasks: ``batch_size`` rows each, or about TASKS_PER_WORKER per
    worker, never fewer than MIN_ROWS_PER_TASK nor more than MAX_ROWS_PER_TASK rows."""
    if n_rows == 0:
        return []
    if batch_size is None:
        batch_size = math.ceil(n_rows / (TASKS_PER_WORKER * max(1, workers)))
        batch_size = min(max(batch_size, MIN_ROWS_PER_TASK), MAX_ROWS_PER_TASK)
    return [slice(start, min(start + batch_size, n_rows)) for start in range(0, n_rows, batch_size)]


def choose_algorithm(requested: str, model: Any) -> tuple[str, str]:
    """The algorithm that will run for ``--algorithm requested`` and why (for summary.json).

    ``auto``: ``tree`` when this module covers the model, else ``kernel``. ``tree`` and
    ``tree-path-dependent`` on a model it does not cover raise UnsupportedModelError.
    """
    # the job's --model comes wrapped (app.tabular.ModelFunction): name what the user gave
    kind = type(
        getattr(model, "estimator", model) if type(model).__name__ == "ModelFunction" else model
    ).__name__
    if requested == "auto":
        if is_supported(model):
            return "tree", f"auto: {kind} is a supported tree ensemble, so the exact tree path runs"
        return "kernel", f"auto: {kind} is not a supported tree ensemble, so exact KernelSHAP runs"
    if requested in ("tree", "tree-path-dependent"):
        model_output(model)  # raises UnsupportedModelError with the list of supported models
    return requested, f"requested with --algorithm {requested}"
