"""Our exact tree path vs our exact kernel path vs shap.TreeExplainer vs WOODELF, in one run.

Two models on the wine file (label quality >= 6, 80/20 split, random_state 0), background the
first ``--background`` training rows, explained rows the first test rows:

* ``forest``: RandomForestClassifier(100 trees, full depth) -- deep, ~280 leaves a tree;
* ``boosted``: HistGradientBoostingClassifier(200 iterations, max_depth 6), raw margin.

Every explainer runs in this one process on one CPU (BLAS/OpenMP limited to one thread), one
after the other, so seconds per row are seconds per row per CPU and the ratios compare like with
like. Our tree path's one-off preparation (trees flattened, background aggregated per leaf) is
timed apart and also counted in ``tree_s_per_row_incl_prepare``. The kernel path is exact
(2^11 - 2 coalitions) and slow, so it explains only ``--kernel-rows`` rows; every other
explainer's largest difference to it is taken on those rows.

``--scale-rows N`` adds the scale run: N rows (drawn with replacement from the wine file) of the
boosted model through ``app.dag.run_tree_shap`` on a local Ray instance with ``--cpus`` CPUs.

Run: ``python benchmarks/tree_shap.py [--rows 200] [--kernel-rows 2] [--scale-rows 1000000]``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shap
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from app import kernel_shap, tree_shap

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "winequality-red.csv"


def _timed(run: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def _as_rmk(values: Any, n_rows: int, n_features: int) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(n_rows, n_features, -1)


def _woodelf(fitted: Any, rows: np.ndarray, background: np.ndarray, names: list[str]) -> np.ndarray:
    from woodelf.explainer import WoodelfExplainer

    explainer = WoodelfExplainer(fitted, pd.DataFrame(background, columns=names))
    values = explainer.shap_values(pd.DataFrame(rows, columns=names), verbose=False)
    return _as_rmk(values, len(rows), len(names))


def bench_model(
    name: str, fitted: Any, rows: np.ndarray, background: np.ndarray, kernel_rows: int, names: list[str]
) -> dict[str, Any]:
    n, m = rows.shape
    predict, output = tree_shap.model_output(fitted)
    tree_shap.explain(fitted, rows[:1], background)  # compile numba (cached after the first run)
    (tree_model, prep_s) = _timed(lambda: tree_shap.prepare_model(fitted, background))
    stats, stats_s = _timed(lambda: tree_shap.background_stats(tree_model, background))
    ours, tree_s = _timed(lambda: tree_shap.shap_values(tree_model, stats, rows))
    kernel, kernel_s = _timed(
        lambda: (
            kernel_shap.explain(
                predict, rows[:kernel_rows], background, nsamples=kernel_shap.exact_nsamples(m)
            ).values
        )
    )
    x32 = rows.astype(np.float32)  # shap gets the model's own input dtype (scikit-learn trees)
    explainer = shap.TreeExplainer(fitted, data=background, feature_perturbation="interventional")
    x_shap = x32 if name == "forest" else rows
    theirs, shap_s = _timed(lambda: explainer.shap_values(x_shap, check_additivity=False))
    theirs = _as_rmk(theirs, n, m)
    if name != "forest":  # shap returns one output for a binary boosted margin
        theirs = theirs[:, :, -1:]
    if theirs.shape[2] != ours.shape[2]:
        theirs = theirs[:, :, -ours.shape[2] :]
    leaves = tree_model.ensemble.leaf_value.shape[0]
    result: dict[str, Any] = {
        "explains": output,
        "rows": n,
        "kernel_rows": kernel_rows,
        "leaves": leaves,
        "mean_path_features": float(np.diff(tree_model.ensemble.leaf_start).mean()),
        "background_patterns_per_leaf": float(len(stats.mask) / leaves),
        "tree_prepare_s": prep_s + stats_s,
        "tree_s_per_row": tree_s / n,
        "tree_s_per_row_incl_prepare": (tree_s + prep_s + stats_s) / n,
        "kernel_s_per_row": kernel_s / kernel_rows,
        "shap_tree_s_per_row": shap_s / n,
        "kernel_over_tree": (kernel_s / kernel_rows) / (tree_s / n),
        "shap_over_tree": (shap_s / n) / (tree_s / n),
        "max_diff_to_kernel": {
            "tree": float(np.abs(ours[:kernel_rows] - kernel).max()),
            "shap_tree": float(np.abs(theirs[:kernel_rows] - kernel[:, :, -theirs.shape[2] :]).max()),
        },
        "additivity_error_tree": float(
            np.abs(ours.sum(axis=1) + stats.expected_value - tree_shap.model_outputs(tree_model, rows)).max()
        ),
    }
    try:
        _woodelf(fitted, rows[:2], background, names)  # warm-up
        wood, wood_s = _timed(lambda: _woodelf(fitted, rows, background, names))
        result["woodelf_s_per_row"] = wood_s / n
        result["woodelf_over_tree"] = (wood_s / n) / (tree_s / n)
        # woodelf gives one output; a binary forest's is the probability of class 0, a boosted
        # model's the margin: compare it with the kernel's output it is closest to
        diffs = [
            float(np.abs(wood[:kernel_rows, :, 0] - kernel[:, :, c]).max()) for c in range(kernel.shape[2])
        ]
        result["woodelf_output_index"] = int(np.argmin(diffs))
        result["max_diff_to_kernel"]["woodelf"] = min(diffs)
    except Exception as err:  # report, do not hide: woodelf may not support this model
        result["woodelf"] = f"failed: {type(err).__name__}: {str(err)[:200]}"
    return result


def scale_run(
    fitted: Any, x_all: np.ndarray, background: np.ndarray, n_rows: int, cpus: int
) -> dict[str, Any]:
    import ray

    from app.dag import run_tree_shap

    rows = x_all[np.random.default_rng(0).integers(0, len(x_all), size=n_rows)]
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    try:
        model_ref = ray.put(fitted)
        run_tree_shap(model_ref, rows[:500], background)  # warm the workers (imports, numba cache)
        (explanation, branch), seconds = _timed(lambda: run_tree_shap(model_ref, rows, background))
    finally:
        ray.shutdown()
    additivity = np.abs(
        explanation.values.sum(axis=1) + explanation.expected_value - explanation.outputs
    ).max()
    return {
        "rows": n_rows,
        "cpus": cpus,
        "tasks": len(branch.done),
        "wall_s": seconds,
        "task_cpu_s": branch.cpu_seconds,
        "rows_per_s": n_rows / seconds,
        "rows_per_s_per_cpu": n_rows / seconds / cpus,
        "additivity_error": float(additivity),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--kernel-rows", type=int, default=2)
    parser.add_argument("--background", type=int, default=100)
    parser.add_argument("--scale-rows", type=int, default=0, help="rows of the scale run (0: skip it)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--models", default="forest,boosted")
    args = parser.parse_args()

    frame = pd.read_csv(args.data, sep=";")
    names = [c for c in frame.columns if c != "quality"]
    x = frame[names].to_numpy(np.float64)
    y = (frame["quality"] >= 6).to_numpy(np.int64)
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0)
    background, rows = x_train[: args.background], x_test[: args.rows]
    models = {
        "forest": RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1),
        "boosted": HistGradientBoostingClassifier(max_iter=200, max_depth=6, random_state=0),
    }
    report: dict[str, Any] = {"machine_cpus": os.cpu_count(), "background": args.background}
    with threadpool_limits(limits=1):
        fitted = {name: models[name].fit(x_train, y_train) for name in args.models.split(",")}
        for name, model in fitted.items():
            report[name] = bench_model(name, model, rows, background, args.kernel_rows, names)
            print(json.dumps({name: report[name]}), flush=True)
    if args.scale_rows and "boosted" in fitted:
        report["scale"] = scale_run(fitted["boosted"], x, background, args.scale_rows, args.cpus)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
