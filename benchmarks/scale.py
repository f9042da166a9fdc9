"""Streaming at scale: 10k, 100k and 1M rows of a cheap model through the job on local Ray.

The workload: a numeric table of ``--features`` (default 4) standard-normal columns and a model
fitted on 2,000 rows of it, saved with skops, explained (``--trust-model``: skops does not trust
scikit-learn's Tree type) on ``--explain`` Parquet files of each
size (row groups of 50,000), background 10. ``--workload tree`` (default): a shallow
``RandomForestClassifier`` (20 trees, depth 4) on the exact tree path (``--algorithm tree``).
``--workload kernel``: a ``LogisticRegression`` with our exact KernelSHAP (2^4 - 2 = 14
coalitions: 140 model rows a row); the kernel calls the model once per explained row, so a cheap
model's per-call overhead (scikit-learn's input checks, ~4 ms) sets its speed, about 150 rows/s
per CPU. Every size streams (the benchmark lowers the job's switch, stream.STREAM_MIN_ROWS, to 0,
so 10k streams too) and shap's reference is off (``--no-reference``): the figures are ours alone.

Each size runs the job in a fresh Python process (``--one``), in-process there: that process is
the Ray driver, so its peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
which Ray's own processes do not count in) is the driver's. Rows per second per CPU: the rows
over the wall time of the streamed explanation step (``distributed KernelSHAP`` in
summary.json's wall_seconds, actor start-up included) over the CPUs.

The generated data (table, model, explain files) is kept outside the repo in
``--cache-dir``/scale-<hash of its recipe> and reused. Prints one JSON object.

Run: ``.venv/bin/python benchmarks/scale.py`` (``--sizes 10000,100000,1000000``, ``--cpus``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path("/var/cache/shapcluster-bench")
OURS_STEP = "distributed KernelSHAP"  # app.dag.OURS (importing app.dag imports Ray)
TREE_STEP = "exact tree SHAP"  # app.dag.TREE
TRAIN_ROWS = 2_000
ROW_GROUP = 50_000


def recipe(features: int, seed: int, workload: str) -> dict[str, Any]:
    return {
        "features": features,
        "seed": seed,
        "train_rows": TRAIN_ROWS,
        "row_group": ROW_GROUP,
        "workload": workload,
        "v": 1,
    }


def cache_dir(cache: Path, features: int, seed: int, workload: str) -> Path:
    key = json.dumps(recipe(features, seed, workload), sort_keys=True)
    return cache / f"scale-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def make_data(where: Path, sizes: list[int], features: int, seed: int, workload: str) -> None:
    """The table, the model and an explain file per size (only what is missing)."""
    import numpy as np
    import pandas as pd

    where.mkdir(parents=True, exist_ok=True)
    names = [f"x{j}" for j in range(features)]
    table, model = where / "train.csv", where / "model.skops"
    if not table.exists() or not model.exists():
        import skops.io as sio
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(seed)
        x = rng.normal(size=(TRAIN_ROWS, features))
        y = (x @ np.linspace(1.0, -1.0, features) + rng.normal(scale=0.5, size=TRAIN_ROWS) > 0).astype(int)
        frame = pd.DataFrame(x, columns=names)
        frame["y"] = y
        frame.to_csv(table, index=False)
        estimator = (
            RandomForestClassifier(n_estimators=20, max_depth=4, random_state=seed, n_jobs=1)
            if workload == "tree"
            else LogisticRegression()
        )
        sio.dump(estimator.fit(frame[names], frame["y"]), model)
    for n in sizes:
        path = where / f"explain-{n}.parquet"
        if path.exists():
            continue
        import pyarrow as pa
        import pyarrow.parquet as pq

        rng = np.random.default_rng([seed, n])
        tmp = path.with_suffix(".tmp")
        with pq.ParquetWriter(tmp, pa.schema([(c, pa.float64()) for c in names])) as writer:
            for start in range(0, n, ROW_GROUP):
                block = rng.normal(size=(min(ROW_GROUP, n - start), features))
                writer.write_table(pa.Table.from_pandas(pd.DataFrame(block, columns=names)))
        os.replace(tmp, path)


def run_one(where: Path, n: int, cpus: int, block_rows: int, workload: str) -> dict[str, Any]:
    """One size in this process (the Ray driver); returns its figures."""
    from app import stream
    from app.config import parse_args
    from app.dag import run_job
    from app.report import Reporter

    stream.STREAM_MIN_ROWS = 0
    with tempfile.TemporaryDirectory() as out:
        argv = ["--data", str(where / "train.csv"), "--label", "y", "--model", str(where / "model.skops")]
        argv += ["--explain", str(where / f"explain-{n}.parquet"), "--rows", "all", "--background", "10"]
        argv += ["--no-reference", "--cpus", str(cpus), "--batch-size", str(block_rows), "--trust-model"]
        argv += ["--algorithm", "tree" if workload == "tree" else "kernel"]
        argv += ["--output-dir", out, "--run-id", "scale"]
        from rich.console import Console

        start = time.perf_counter()
        summary = run_job(parse_args(argv), Reporter(Console(file=sys.stderr, highlight=False)))
        total = time.perf_counter() - start
    seconds = summary["wall_seconds"][TREE_STEP if workload == "tree" else OURS_STEP]
    return {
        "rows": n,
        "cpus": cpus,
        "rows_per_part": summary["streamed"]["rows_per_part"],
        "parts": summary["streamed"]["parts"],
        "explain_seconds": seconds,
        "job_seconds": total,
        "rows_per_second": n / seconds,
        "rows_per_second_per_cpu": n / seconds / cpus,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "additivity_error": summary["additivity_error_all_rows"],
        "check_max_abs_diff": summary["comparison"].get("max_abs_diff"),
        "exact": summary.get("exact", summary["algorithm"] == "tree"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--block-rows", type=int, default=5_000, help="rows per part (the job's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workload", choices=("tree", "kernel"), default="tree")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size in this process
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    where = cache_dir(args.cache_dir, args.features, args.seed, args.workload)
    if args.one is not None:
        print(json.dumps(run_one(where, args.one, args.cpus, args.block_rows, args.workload)))
        return 0
    make_data(where, sizes, args.features, args.seed, args.workload)
    runs = []
    for n in sizes:
        command = [sys.executable, __file__, "--one", str(n), "--cpus", str(args.cpus)]
        command += ["--features", str(args.features), "--seed", str(args.seed), "--workload", args.workload]
        command += ["--block-rows", str(args.block_rows), "--cache-dir", str(args.cache_dir)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the run of {n} rows failed (exit {done.returncode})")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr)
    smallest = runs[0]["driver_peak_rss_mb"]
    result = {
        "workload": (
            f"RandomForestClassifier (20 trees, depth 4), {args.features} features, exact tree path"
            if args.workload == "tree"
            else f"LogisticRegression, {args.features} features, exact KernelSHAP"
        )
        + ", background 10, every size streamed",
        "data": str(where),
        "cpus": args.cpus,
        "runs": runs,
        "driver_peak_rss_ratio_to_smallest": [r["driver_peak_rss_mb"] / smallest for r in runs],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
