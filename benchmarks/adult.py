"""The published distributed-KernelSHAP workload (UCI Adult), ours vs shap vs alibi, side by side.

Workload (issue 9, as in Seldon's alibi-on-Ray write-up): a LogisticRegression on Adult's 12
columns, categoricals one-hot encoded and each column one player (12 groups, see
``adult_data.py``), background 100 training rows, logit link, the first rows of adult.test.
Three systems on the same rows, background and CPUs, one after the other in this process tree:

* **ours**: ``app.dag.run_distributed_shap(..., groups=..., link=Link.LOGIT)`` on a local Ray
  instance with ``--cpus`` CPUs; its worker processes are warmed first (``warm_up_workers``,
  reported as ``warm_up_seconds``, not in the explain time);
* **shap**: ``shap.KernelExplainer`` (shap 0.51, this venv) with the grouped background
  ``shap.utils._legacy.DenseData(background, group_names, groups)``, ``l1_reg=False``, in this
  one process (numpy may use more than one thread for the model);
* **alibi**: alibi 0.9.6 ``KernelShap`` with ``distributed_opts`` (Ray actors), installed by
  this script into its own venv outside the repo (``--cache-dir``, keyed by the requirement) and
  run in a subprocess of it (``adult_alibi_runner.py``) on the same rows and background, passed
  as .npy files. If it cannot be installed, the JSON says so and the rest still runs.

Sampled mode uses shap's default for 12 players (2 * 12 + 2048 = 2072 samples); exact mode
enumerates all 4094 coalitions (ours and shap). Reported: rows per second of each system (rows
/ seconds of the explain call alone), the ratios ours / alibi and ours / shap, max |ours - shap|
in exact mode, and in sampled mode how the differences compare with our standard errors
(``Explanation.standard_errors``): the share of values whose |ours - shap| lies within 1, 2 and 3
combined errors sqrt(2) * se (shap's estimate has an error of its own, about as large as ours;
shap does not report it), to read against the normal 68 / 95 / 99.7 %.

Ours explains ``--rows`` rows (default 2560, the write-up's count); shap and alibi explain the
first ``--reference-rows`` of them (default 256): the comparisons use those shared rows.

Run: ``.venv/bin/python benchmarks/adult.py [--rows 2560] [--reference-rows 256] [--cpus N]
[--skip-alibi] [--skip-shap]``. Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adult_data import AdultWorkload, prepare  # a sibling file, not a package

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_CACHE = Path("/var/cache/shapcluster-bench")
ALIBI_REQUIREMENT = "alibi[shap,ray]==0.9.6"
RUNNER = Path(__file__).resolve().parent / "adult_alibi_runner.py"
N_PLAYERS = 12
SAMPLED = 2 * N_PLAYERS + 2048  # shap's "auto" for 12 players
EXACT = (1 << N_PLAYERS) - 2  # every coalition but the empty and the full one


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- alibi in its own venv ---------------------------------------------------------------------


def alibi_venv_dir(cache: Path, requirement: str = ALIBI_REQUIREMENT) -> Path:
    """Where the venv for ``requirement`` lives: keyed by it and by this Python's version."""
    key = f"{requirement} python{sys.version_info.major}.{sys.version_info.minor}"
    return cache / f"alibi-venv-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_alibi(cache: Path, requirement: str = ALIBI_REQUIREMENT) -> tuple[Path | None, str]:
    """The Python of a venv holding ``requirement`` (made once), or None and why it could not be.

    A venv is only used once its ``.ready`` marker exists (written after pip succeeded), so an
    interrupted install is redone, never half-used.
    """
    venv = alibi_venv_dir(cache, requirement)
    python = venv / "bin" / "python"
    if (venv / ".ready").is_file():
        return python, f"cached venv {venv}"
    shutil.rmtree(venv, ignore_errors=True)
    _progress(f"Installing {requirement} into {venv} (once; a few minutes)...")
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", requirement],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        shutil.rmtree(venv, ignore_errors=True)
        return None, f"cannot install {requirement}: {detail.strip().splitlines()[-1] if detail else err}"
    (venv / ".ready").write_text(requirement + "\n")
    return python, f"installed into {venv}"


def run_alibi(
    python: Path,
    work: AdultWorkload,
    rows: np.ndarray,
    background: np.ndarray,
    *,
    cpus: int,
    nsamples: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """alibi's distributed KernelShap in a subprocess of its venv; its timings and values."""
    with tempfile.TemporaryDirectory(prefix="adult-alibi-") as folder:
        where = Path(folder)
        np.save(where / "rows.npy", rows)
        np.save(where / "background.npy", background)
        np.save(where / "coef.npy", work.model.coef_)
        np.save(where / "intercept.npy", work.model.intercept_)
        spec = {"group_names": list(work.group_names), "groups": [list(g) for g in work.groups]}
        (where / "groups.json").write_text(json.dumps(spec))
        env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
        command = [str(python), str(RUNNER), "--dir", folder, "--cpus", str(cpus)]
        command += ["--nsamples", str(nsamples), "--batch-size", str(batch_size), "--seed", str(seed)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"alibi runner failed with exit status {done.returncode}:\n{tail}")
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        report["values"] = np.load(where / "alibi_values.npy")
        report["expected_value"] = np.load(where / "alibi_expected.npy")
    return report


# ---- shap and ours ------------------------------------------------------------------------------


def run_shap(
    work: AdultWorkload, rows: np.ndarray, background: np.ndarray, nsamples: int, seed: int
) -> dict[str, Any]:
    """shap.KernelExplainer with the grouped background, in this process: values (R, G, K)."""
    import shap
    from shap.utils._legacy import DenseData

    np.random.seed(seed)  # shap samples coalitions from numpy's global generator
    grouped = DenseData(background, list(work.group_names), [list(g) for g in work.groups])
    explainer = shap.KernelExplainer(work.model.predict_proba, grouped, link="logit")
    start = time.perf_counter()
    values = explainer.shap_values(rows, nsamples=nsamples, l1_reg=False, silent=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "values": np.asarray(values), "expected_value": explainer.expected_value}


def run_ours(
    work: AdultWorkload, rows: np.ndarray, background: np.ndarray, nsamples: int | str, cpus: int, seed: int
) -> dict[str, Any]:
    """Our distributed KernelSHAP on the running Ray instance; warm-up timed on its own."""
    import ray

    from app import dag, model
    from app.contract import Link

    data = model.ExplainData(rows, np.arange(len(rows)), background)
    model_ref = ray.put(work.model)
    start = time.perf_counter()
    dag.warm_up_workers([model_ref], data, cpus)
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    explanation = dag.run_distributed_shap(
        model_ref,
        data,
        nsamples=nsamples,
        link=Link.LOGIT,
        seed=seed,
        workers=cpus,
        groups=[list(g) for g in work.groups],
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "warm_up_seconds": warm_up,
        "values": explanation.values,
        "standard_errors": explanation.standard_errors,
        "expected_value": explanation.expected_value,
        "exact": explanation.exact,
        "n_coalitions": explanation.n_coalitions,
    }


# ---- comparisons ---------------------------------------------------------------------------------


def within_errors(ours: np.ndarray, errors: np.ndarray | None, theirs: np.ndarray) -> dict[str, Any]:
    """How |ours - theirs| compares with the combined error sqrt(2) * se of two estimates.

    Shares within 1, 2 and 3 combined errors (normal: 0.683, 0.954, 0.997) and the largest
    ratio. Values whose error is 0 (players that do not vary) must agree to 1e-9.
    """
    diff = np.abs(ours - theirs)
    if errors is None:
        return {"standard_errors": None, "max_abs_diff": float(diff.max())}
    combined = np.sqrt(2.0) * errors
    zero = combined == 0
    ratio = diff[~zero] / combined[~zero]
    return {
        "values": int(diff.size),
        "max_abs_diff": float(diff.max()),
        "median_standard_error": float(np.median(errors[~zero])) if (~zero).any() else 0.0,
        "within_1": float(np.mean(ratio <= 1)),
        "within_2": float(np.mean(ratio <= 2)),
        "within_3": float(np.mean(ratio <= 3)),
        "max_ratio": float(ratio.max()) if ratio.size else 0.0,
        "zero_error_values_max_abs_diff": float(diff[zero].max()) if zero.any() else 0.0,
        "normal_reference": {"within_1": 0.683, "within_2": 0.954, "within_3": 0.997},
    }


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("inf")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder with adult.data/.test")
    parser.add_argument("--rows", type=int, default=2560, help="test rows ours explains [2560]")
    parser.add_argument(
        "--reference-rows", type=int, default=256, help="first rows shap and alibi explain [256]"
    )
    parser.add_argument("--background", type=int, default=100)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alibi-batch-size", type=int, default=1, help="alibi's rows per actor call [1]")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where alibi's venv is kept")
    parser.add_argument("--skip-alibi", action="store_true")
    parser.add_argument("--skip-shap", action="store_true")
    parser.add_argument("--skip-exact", action="store_true", help="leave out the exact-mode comparison")
    args = parser.parse_args(argv)
    if not 1 <= args.reference_rows <= args.rows:
        parser.error("--reference-rows must be between 1 and --rows")
    return args


def _workload_report(
    args: argparse.Namespace, work: AdultWorkload, n_rows: int, n_shared: int
) -> dict[str, Any]:
    return {
        "data": str(args.data_dir),
        "model": "LogisticRegression on one-hot categoricals + standardised numerics",
        "test_accuracy": work.test_accuracy,
        "encoded_columns": int(work.x_test.shape[1]),
        "players": list(work.group_names),
        "background": args.background,
        "link": "logit",
        "rows_ours": n_rows,
        "rows_reference": n_shared,
        "nsamples_sampled": SAMPLED,
        "coalitions_exact": EXACT,
        "cpus": args.cpus,
    }


def _modes(args: argparse.Namespace, exact: int | str) -> list[tuple[str, int | str]]:
    return [("sampled", SAMPLED)] + ([] if args.skip_exact else [("exact", exact)])


def _run_shap_side(
    args: argparse.Namespace, work: AdultWorkload, shared: np.ndarray, background: np.ndarray
) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    if args.skip_shap:
        return runs
    for mode, n in _modes(args, EXACT):
        _progress(f"shap.KernelExplainer, {mode}, {len(shared)} rows ...")
        runs[mode] = run_shap(work, shared, background, int(n), args.seed)
    return runs


def _run_ours_side(
    args: argparse.Namespace, work: AdultWorkload, rows: np.ndarray, background: np.ndarray
) -> dict[str, dict[str, Any]]:
    import ray

    runs: dict[str, dict[str, Any]] = {}
    # address="local": an instance of our own, never a cluster someone else started here.
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    try:
        for mode, n in _modes(args, "exact"):
            _progress(f"ours, {mode}, {len(rows)} rows on {args.cpus} CPUs ...")
            runs[mode] = run_ours(work, rows, background, n, args.cpus, args.seed)
    finally:
        ray.shutdown()
    return runs


def _run_alibi_side(
    args: argparse.Namespace, work: AdultWorkload, shared: np.ndarray, background: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """alibi's part of the report, and its run (None when skipped or impossible)."""
    if args.skip_alibi:
        return {"skipped": "--skip-alibi"}, None
    python, how = ensure_alibi(args.cache_dir)
    report: dict[str, Any] = {"requirement": ALIBI_REQUIREMENT, "venv": how}
    if python is None:
        report["error"] = how
        return report, None
    _progress(f"alibi KernelShap (distributed, {args.cpus} CPUs), sampled, {len(shared)} rows ...")
    try:
        run = run_alibi(
            python,
            work,
            shared,
            background,
            cpus=args.cpus,
            nsamples=SAMPLED,
            batch_size=args.alibi_batch_size,
            seed=args.seed,
        )
    except RuntimeError as err:
        report["error"] = str(err)
        return report, None
    report.update({k: v for k, v in run.items() if k not in {"values", "expected_value"}})
    return report, run


def _agreement(
    ours: dict[str, dict[str, Any]],
    shap_runs: dict[str, dict[str, Any]],
    alibi: dict[str, Any] | None,
    k: int,
) -> dict[str, Any]:
    """Exact: max |ours - shap|. Sampled: differences against our standard errors."""
    agreement: dict[str, Any] = {}
    if "exact" in ours and "exact" in shap_runs:
        exact, reference = ours["exact"], shap_runs["exact"]
        agreement["exact_max_abs_diff_ours_shap"] = float(
            np.abs(exact["values"][:k] - reference["values"]).max()
        )
        agreement["exact_expected_value_diff"] = float(
            np.abs(exact["expected_value"] - np.asarray(reference["expected_value"])).max()
        )
        agreement["ours_exact_is_exact"] = bool(exact["exact"]) and exact["n_coalitions"] == EXACT
    if "sampled" not in ours:
        return agreement
    sampled = ours["sampled"]
    values, errors = sampled["values"], sampled["standard_errors"]
    shared_errors = None if errors is None else errors[:k]
    agreement["ours_sampled_coalitions"] = sampled["n_coalitions"]
    if "sampled" in shap_runs:
        agreement["sampled_ours_vs_shap"] = within_errors(
            values[:k], shared_errors, shap_runs["sampled"]["values"]
        )
    if alibi is not None:
        agreement["sampled_ours_vs_alibi"] = within_errors(values[:k], shared_errors, alibi["values"])
    if "exact" in ours:
        # Against the exact values only our own error counts: se, passed as se / sqrt(2).
        own = None if errors is None else errors / np.sqrt(2.0)
        agreement["sampled_ours_vs_exact_ours"] = within_errors(values, own, ours["exact"]["values"])
    return agreement


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    sys.path.insert(0, str(REPO))
    work = prepare(args.data_dir, args.seed)
    rows, shared = work.x_test[: args.rows], work.x_test[: args.reference_rows]
    background = work.background(args.background, args.seed)
    load_start = os.getloadavg()

    shap_runs = _run_shap_side(args, work, shared, background)
    ours = _run_ours_side(args, work, rows, background)
    alibi_report, alibi = _run_alibi_side(args, work, shared, background)

    seconds: dict[str, float] = {}
    rates: dict[str, float] = {}
    for mode, run in shap_runs.items():
        seconds[f"shap_{mode}"] = run["seconds"]
        rates[f"shap_{mode}"] = _rate(len(shared), run["seconds"])
    for mode, run in ours.items():
        seconds[f"ours_{mode}"] = run["seconds"]
        seconds[f"ours_{mode}_warm_up"] = run["warm_up_seconds"]
        rates[f"ours_{mode}"] = _rate(len(rows), run["seconds"])
    if alibi is not None:
        seconds["alibi_sampled"] = alibi["explain_seconds"]
        rates["alibi_sampled"] = _rate(len(shared), alibi["explain_seconds"])
    ratios = {
        f"ours_over_{name}": rates[f"ours_{name.rsplit('_', 1)[1]}"] / rates[name]
        for name in ("alibi_sampled", "shap_sampled", "shap_exact")
        if name in rates and f"ours_{name.rsplit('_', 1)[1]}" in rates
    }
    report = {
        "workload": _workload_report(args, work, len(rows), len(shared)),
        "rows_per_second": rates,
        "ratios": ratios,
        "seconds": seconds,
        "agreement": _agreement(ours, shap_runs, alibi, len(shared)),
        "alibi": alibi_report,
        "load_average": {"start": load_start, "end": os.getloadavg()},
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
