"""alibi 0.9.6 distributed KernelShap on the rows benchmarks/adult.py wrote; run in alibi's own venv.

Not part of the package: ``benchmarks/adult.py`` runs it with the Python of a venv holding
``alibi[shap,ray]==0.9.6`` (shap 0.43, numpy 1.x), so nothing here may import our code.

Reads from ``--dir``: ``rows.npy`` (R, D), ``background.npy`` (N, D), ``coef.npy`` (1, D) and
``intercept.npy`` (1,) of the fitted binary LogisticRegression, and ``groups.json`` (group names
and the encoded column indices of each). Rebuilds the same LogisticRegression from its fitted
parameters (scikit-learn's own ``predict_proba``, not a copy of its formula), starts a local Ray
instance with ``--cpus`` CPUs, and explains the rows with ``KernelShap(link="logit",
distributed_opts={"n_cpus": cpus, "batch_size": ...})``, groups as players, ``l1_reg=False``.
Writes ``alibi_values.npy`` (R, G, K) and ``alibi_expected.npy`` (K,) and prints one JSON line:
seconds for ``ray.init``, ``fit`` and ``explain`` (the explain call alone is what rows per
second are computed from), and the versions used.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--cpus", type=int, required=True)
    parser.add_argument("--nsamples", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=1, help="rows per actor call (alibi's default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import alibi
    import ray
    import shap
    import sklearn
    from alibi.explainers import KernelShap
    from sklearn.linear_model import LogisticRegression

    rows = np.load(args.dir / "rows.npy")
    background = np.load(args.dir / "background.npy")
    spec = json.loads((args.dir / "groups.json").read_text())
    model = LogisticRegression()
    model.coef_ = np.load(args.dir / "coef.npy")
    model.intercept_ = np.load(args.dir / "intercept.npy")
    model.classes_ = np.array([0, 1])
    model.n_features_in_ = rows.shape[1]

    start = time.perf_counter()
    # address="local": a Ray instance of our own, never a cluster someone else started here.
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    init_seconds = time.perf_counter() - start
    try:
        explainer = KernelShap(
            model.predict_proba,
            link="logit",
            feature_names=spec["group_names"],
            task="classification",
            seed=args.seed,
            distributed_opts={"n_cpus": args.cpus, "batch_size": args.batch_size, "actor_cpu_fraction": 1.0},
        )
        start = time.perf_counter()
        explainer.fit(background, group_names=spec["group_names"], groups=spec["groups"])
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        explanation = explainer.explain(rows, nsamples=args.nsamples, l1_reg=False, silent=True)
        explain_seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    values = np.stack([np.asarray(v) for v in explanation.shap_values], axis=-1)  # (R, G, K)
    np.save(args.dir / "alibi_values.npy", values)
    np.save(args.dir / "alibi_expected.npy", np.asarray(explanation.expected_value, dtype=np.float64))
    report = {
        "ray_init_seconds": init_seconds,
        "fit_seconds": fit_seconds,
        "explain_seconds": explain_seconds,
        "rows": int(rows.shape[0]),
        "batch_size": args.batch_size,
        "versions": {
            "alibi": alibi.__version__,
            "shap": shap.__version__,
            "ray": ray.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
