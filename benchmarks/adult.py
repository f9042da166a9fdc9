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
from adult_data import AdultWorkload, prepare  # noqa: E402  (a sibling file, not a package)

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

    from app import dag, kernel_shap, model

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
        link=kernel_shap.Link.LOGIT,
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


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    sys.path.insert(0, str(REPO))
    work = prepare(args.data_dir, args.seed)
    rows, shared = work.x_test[: args.rows], work.x_test[: args.reference_rows]
    background = work.background(args.background, args.seed)
    report: dict[str, Any] = {
        "workload": {
            "data": str(args.data_dir),
            "model": "LogisticRegression on one-hot categoricals + standardised numerics",
            "test_accuracy": work.test_accuracy,
            "encoded_columns": int(rows.shape[1]),
            "players": list(work.group_names),
            "background": args.background,
            "link": "logit",
            "rows_ours": int(len(rows)),
            "rows_reference": int(len(shared)),
            "nsamples_sampled": SAMPLED,
            "coalitions_exact": EXACT,
            "cpus": args.cpus,
            "load_average_at_start": os.getloadavg(),
        },
        "rows_per_second": {},
        "seconds": {},
    }
    rates, seconds = report["rows_per_second"], report["seconds"]

    shap_runs: dict[str, dict[str, Any]] = {}
    if not args.skip_shap:
        for mode, n in (("sampled", SAMPLED), ("exact", EXACT)):
            if mode == "exact" and args.skip_exact:
                continue
            _progress(f"shap.KernelExplainer, {mode}, {len(shared)} rows ...")
            shap_runs[mode] = run_shap(work, shared, background, n, args.seed)
            seconds[f"shap_{mode}"] = shap_runs[mode]["seconds"]
            rates[f"shap_{mode}"] = _rate(len(shared), shap_runs[mode]["seconds"])

    import ray

    ours_runs: dict[str, dict[str, Any]] = {}
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    try:
        for mode, n in (("sampled", SAMPLED), ("exact", "exact")):
            if mode == "exact" and args.skip_exact:
                continue
            _progress(f"ours, {mode}, {len(rows)} rows on {args.cpus} CPUs ...")
            ours_runs[mode] = run_ours(work, rows, background, n, args.cpus, args.seed)
            seconds[f"ours_{mode}"] = ours_runs[mode]["seconds"]
            seconds[f"ours_{mode}_warm_up"] = ours_runs[mode]["warm_up_seconds"]
            rates[f"ours_{mode}"] = _rate(len(rows), ours_runs[mode]["seconds"])
    finally:
        ray.shutdown()

    alibi: dict[str, Any] | None = None
    if args.skip_alibi:
        report["alibi"] = {"skipped": "--skip-alibi"}
    else:
        python, how = ensure_alibi(args.cache_dir)
        report["alibi"] = {"requirement": ALIBI_REQUIREMENT, "venv": how}
        if python is None:
            report["alibi"]["error"] = how
        else:
            _progress(f"alibi KernelShap (distributed, {args.cpus} CPUs), sampled, {len(shared)} rows ...")
            try:
                alibi = run_alibi(
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
                report["alibi"]["error"] = str(err)
            else:
                report["alibi"].update({k: v for k, v in alibi.items() if k not in {"values", "expected_value"}})
                seconds["alibi_sampled"] = alibi["explain_seconds"]
                rates["alibi_sampled"] = _rate(len(shared), alibi["explain_seconds"])

    ratios: dict[str, float] = {}
    if "ours_sampled" in rates:
        for other in ("alibi_sampled", "shap_sampled"):
            if other in rates:
                ratios[f"ours_over_{other.removesuffix('_sampled')}_sampled"] = (
                    rates["ours_sampled"] / rates[other]
                )
    if "ours_exact" in rates and "shap_exact" in rates:
        ratios["ours_over_shap_exact"] = rates["ours_exact"] / rates["shap_exact"]
    report["ratios"] = ratios

    k = len(shared)
    agreement: dict[str, Any] = {}
    if "exact" in ours_runs and "exact" in shap_runs:
        ours_exact = ours_runs["exact"]
        agreement["exact_max_abs_diff_ours_shap"] = float(
            np.abs(ours_exact["values"][:k] - shap_runs["exact"]["values"]).max()
        )
        agreement["exact_expected_value_diff"] = float(
            np.abs(ours_exact["expected_value"] - np.asarray(shap_runs["exact"]["expected_value"])).max()
        )
        agreement["ours_exact_is_exact"] = bool(ours_exact["exact"]) and ours_exact["n_coalitions"] == EXACT
    if "sampled" in ours_runs:
        ours_sampled = ours_runs["sampled"]
        errors = ours_sampled["standard_errors"]
        agreement["ours_sampled_coalitions"] = ours_sampled["n_coalitions"]
        if "sampled" in shap_runs:
            agreement["sampled_ours_vs_shap"] = within_errors(
                ours_sampled["values"][:k], None if errors is None else errors[:k], shap_runs["sampled"]["values"]
            )
        if alibi is not None:
            agreement["sampled_ours_vs_alibi"] = within_errors(
                ours_sampled["values"][:k], None if errors is None else errors[:k], alibi["values"]
            )
        if "exact" in ours_runs:
            agreement["sampled_ours_vs_exact_ours"] = within_errors(
                ours_sampled["values"], None if errors is None else errors / np.sqrt(2.0), ours_runs["exact"]["values"]
            )
    report["agreement"] = agreement
    report["load_average_at_end"] = os.getloadavg()
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
