"""Explanations as a service: throughput and latency of the Serve application against replicas and
request sizes, beside the batch job on the same rows and CPUs.

The same N rows (the first N of the wine data's test split, the job's own split) are explained by
sending them as requests of 1, 5 and 10 rows (``--request-sizes``), ``--concurrency`` requests in
flight at once, to 1..k replicas (``--replicas``), ``--nruns`` times each (interleaved). Per
combination: throughput (rows/s over the whole pass) and the p50/p99 latency of one request.

``--local`` (default): a local Ray instance with max(--replicas) CPUs runs the application
(``app.serve:build_app``) with each replica count in turn, then, with Serve idle, the batch job
(``app.dag.run_job``, ``--explain`` the same rows, ``--max-tasks`` = the replicas, no reference)
on the same instance: the batch throughput is N / its explainer step's wall time, and the
*serving overhead* of a combination is batch throughput / served throughput at the same CPUs.
``--url URL --token-file PATH``: the application ``shapcluster serve up`` printed (its replicas
as deployed); the batch job then runs on a local instance with the same CPUs as replicas, so
the ratio compares a cluster with this machine: read it as a rough guide only.

Every served value must equal the batch job's to 1e-9 (asserted; the benchmark fails otherwise).
The model: the wine forest (``--trees``, seeded) trained on the job's training split, saved with
skops; the background: the job's (``--background`` rows of the training split, ``--seed``).

Writes to ``--out`` (default ``benchmarks/out/serve-<timestamp>/``): ``serve.csv`` (one line per
combination and run), ``serve.png`` (throughput and p50/p99 latency against replicas, one line per
request size; the batch job's throughput as a dashed line), the model and rows. Prints one JSON
object; progress goes to stderr.

Run: ``.venv/bin/python benchmarks/serve.py --rows 40 --replicas 1,2 --nruns 1``
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app import etl, model  # noqa: E402  (the repository's app/, from a checkout)
from app.contract import SERVE_APP_NAME, JobConfig, ServeOptions  # noqa: E402

WINE = REPO.parent / "shared" / "data" / "winequality-red.csv"
TOLERANCE = 1e-9
COLUMNS = (
    "where",
    "replicas",
    "request_rows",
    "run",
    "rows",
    "requests",
    "seconds",
    "rows_per_second",
    "p50_seconds",
    "p99_seconds",
    "batches",
    "batch_rows_per_second",
    "overhead",
    "max_abs_diff",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list such as 1,2") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} needs whole numbers of at least 1")
    return values


def post(url: str, body: Any, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def get(url: str, token: str | None) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def served_values(body: dict[str, Any]) -> np.ndarray:
    """(R, G, K) values of one /explain answer."""
    classes, players = body["classes"], body["players"]
    return np.array(
        [[[row[c]["values"][p] for c in classes] for p in players] for row in body["explanations"]]
    )


def send_all(
    url: str, records: list[dict[str, Any]], size: int, concurrency: int, token: str | None
) -> tuple[float, list[float], np.ndarray]:
    """Send the rows as requests of ``size`` rows, ``concurrency`` at once: (wall seconds,
    latency of each request, (N, G, K) values in the rows' order). Raises RuntimeError on a
    request that is not answered 200."""
    chunks = [records[i : i + size] for i in range(0, len(records), size)]

    def one(chunk: list[dict[str, Any]]) -> tuple[float, np.ndarray]:
        started = time.perf_counter()
        status, body = post(f"{url}/explain", {"rows": chunk}, token)
        if status != 200:
            raise RuntimeError(f"/explain answered {status}: {str(body)[:300]}")
        return time.perf_counter() - started, served_values(body)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, chunks))
    wall = time.perf_counter() - started
    return wall, [latency for latency, _ in answers], np.concatenate([values for _, values in answers])


def prepare(args: argparse.Namespace, out: Path) -> tuple[list[dict[str, Any]], Path, Path, str]:
    """The model (skops), the rows (a CSV for the job's --explain, records for the requests)."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    dataset = etl.load_dataset(str(args.data))
    split = model.split_data(dataset, 0.2, args.seed)
    names = list(split.feature_names)
    forest = RandomForestClassifier(n_estimators=args.trees, random_state=args.seed, n_jobs=1)
    forest.fit(pd.DataFrame(split.x_train, columns=names), split.y_train)
    model_path = out / "wine.skops"
    sio.dump(forest, model_path)
    if args.rows > len(split.x_test):
        raise SystemExit(f"--rows {args.rows}: the test split has only {len(split.x_test)} rows")
    rows = pd.DataFrame(split.x_test[: args.rows], columns=names)
    rows_path = out / "rows.csv"
    rows.to_csv(rows_path, index=False, float_format="%.17g")
    records: list[dict[str, Any]] = rows.to_dict(orient="records")
    return records, model_path, rows_path, str(args.data)


def batch_job(
    args: argparse.Namespace, model_path: Path, rows_path: Path, cpus: int, out: Path
) -> dict[str, Any]:
    """The batch path on the same rows, model and background with ``cpus`` Ray tasks at once:
    its explainer's seconds and values. Kernel: the whole job (``run_job`` with ``--explain``, its
    explainer step's wall time, values from explanation.npz). Tree: the job's tree function
    ``dag.run_tree_shap`` (the job's tree path refuses a ``--model`` file, see the report) on the
    job's background, timed after one warm-up call (numba's compile)."""
    from app.dag import OURS, run_job, run_tree_shap

    if args.algorithm == "tree":
        import ray
        import skops.io as sio

        dataset = etl.load_dataset(str(args.data))
        split = model.split_data(dataset, 0.2, args.seed)
        background = model.get_data_to_explain(split, 1, args.background, args.seed).background
        rows = pd.read_csv(rows_path).to_numpy(dtype=np.float64)
        forest = sio.load(model_path, trusted=sio.get_untrusted_types(file=model_path))
        forest_ref = ray.put(forest)
        # warm-up: tasks of one row on every worker process (numba compiles once per process)
        run_tree_shap(forest_ref, rows[: 4 * cpus], background, workers=cpus, batch_size=1)
        started = time.perf_counter()
        explanation, _ = run_tree_shap(forest_ref, rows, background, workers=cpus)
        seconds = time.perf_counter() - started
        return {
            "cpus": cpus,
            "seconds": seconds,
            "rows_per_second": len(rows) / seconds,
            "values": explanation.values,
        }
    config = JobConfig(
        data=str(args.data),
        model=str(model_path),
        trust_model=True,
        explain=str(rows_path),
        rows=args.rows,
        background=args.background,
        seed=args.seed,
        algorithm=args.algorithm,
        reference=False,
        max_tasks=cpus,
        output_dir=str(out / "job"),
        run_id=f"job-{cpus}cpu",
    )
    with contextlib.redirect_stdout(sys.stderr):  # the job's progress; stdout is the JSON
        summary = run_job(config)
    seconds = float(summary["wall_seconds"][OURS])
    with np.load(out / "job" / f"job-{cpus}cpu" / "explanation.npz") as saved:
        values = np.asarray(saved["values"])
    return {"cpus": cpus, "seconds": seconds, "rows_per_second": args.rows / seconds, "values": values}


def measure(
    args: argparse.Namespace,
    url: str,
    token: str | None,
    records: list[dict[str, Any]],
    where: str,
    replicas: int,
) -> list[dict[str, Any]]:
    """Every request size, --nruns times interleaved, against the application at ``url``."""
    # warm up: every replica gets rows (numba's first compile on the tree path, caches)
    send_all(url, records[: 2 * replicas], 1, 2 * replicas, token)
    lines: list[dict[str, Any]] = []
    for run in range(args.nruns):
        for size in args.request_sizes:
            before = get(f"{url}/stats", token)
            wall, latencies, values = send_all(url, records, size, args.concurrency, token)
            after = get(f"{url}/stats", token)
            log(
                f"  {where} replicas={replicas} request_rows={size} run={run}: "
                f"{len(records) / wall:.1f} rows/s"
            )
            lines.append(
                {
                    "where": where,
                    "replicas": replicas,
                    "request_rows": size,
                    "run": run,
                    "rows": len(records),
                    "requests": len(latencies),
                    "seconds": wall,
                    "rows_per_second": len(records) / wall,
                    "p50_seconds": float(np.percentile(latencies, 50)),
                    "p99_seconds": float(np.percentile(latencies, 99)),
                    "batches": after["batches"] - before["batches"],
                    "values": values,
                }
            )
    return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_local(
    args: argparse.Namespace, records: list[dict[str, Any]], model_path: Path, rows_path: Path, out: Path
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    import ray
    from ray import serve

    from app.serve import build_app

    ray.init(num_cpus=max(args.replicas), include_dashboard=False, logging_level="ERROR")
    lines: list[dict[str, Any]] = []
    jobs: dict[int, dict[str, Any]] = {}
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        for replicas in args.replicas:
            options = ServeOptions(
                model=str(model_path),
                trust_model=True,
                data=str(args.data),
                background=args.background,
                seed=args.seed,
                algorithm=args.algorithm,
                replicas=replicas,
                max_batch_size=args.max_batch_size,
                batch_wait_ms=args.batch_wait_ms,
                max_rows_per_request=max(args.request_sizes),
            )
            log(f"deploying {replicas} replica(s)...")
            serve.run(build_app(options.to_args()), name=SERVE_APP_NAME, route_prefix="/")
            lines += measure(args, url, None, records, "local", replicas)
            serve.delete(SERVE_APP_NAME)  # the batch job gets the CPUs to itself
            log(f"batch job with {replicas} task(s) at once...")
            jobs[replicas] = batch_job(args, model_path, rows_path, replicas, out)
    finally:
        serve.shutdown()
        ray.shutdown()
    return lines, jobs


def run_remote(
    args: argparse.Namespace, records: list[dict[str, Any]], model_path: Path, rows_path: Path, out: Path
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    import ray

    token = Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file else None
    url = args.url.rstrip("/")
    replicas = int(get(f"{url}/info", token)["replicas"])
    lines = measure(args, url, token, records, "url", replicas)
    ray.init(num_cpus=replicas, include_dashboard=False, logging_level="ERROR")
    try:
        jobs = {replicas: batch_job(args, model_path, rows_path, replicas, out)}
    finally:
        ray.shutdown()
    return lines, jobs


def write_png(lines: list[dict[str, Any]], jobs: dict[int, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for size in sorted({line["request_rows"] for line in lines}):
        mine = [line for line in lines if line["request_rows"] == size]
        replicas = sorted({line["replicas"] for line in mine})

        def median(key: str, k: int, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.median(line[key] for line in mine if line["replicas"] == k)

        left.plot(
            replicas,
            [median("rows_per_second", k) for k in replicas],
            marker="o",
            label=f"{size} rows/request",
        )
        (p50,) = right.plot(
            replicas, [median("p50_seconds", k) for k in replicas], marker="o", label=f"{size}: p50"
        )
        right.plot(replicas, [median("p99_seconds", k) for k in replicas], marker="x", linestyle="--",
                   color=p50.get_color(), label=f"{size}: p99")  # fmt: skip
    cpus = sorted(jobs)
    left.plot(
        cpus, [jobs[k]["rows_per_second"] for k in cpus], "k--", marker="s", label="batch job (same CPUs)"
    )
    left.set(xlabel="replicas (one CPU each)", ylabel="rows explained per second", title="Throughput")
    right.set(xlabel="replicas (one CPU each)", ylabel="seconds per request", title="Latency")
    for axis in (left, right):
        axis.set_xticks(sorted({line["replicas"] for line in lines} | set(cpus)))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out or REPO / "benchmarks" / "out" / time.strftime("serve-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    records, model_path, rows_path, _ = prepare(args, out)
    started = time.perf_counter()
    if args.url:
        lines, jobs = run_remote(args, records, model_path, rows_path, out)
    else:
        lines, jobs = run_local(args, records, model_path, rows_path, out)
    worst = 0.0
    for line in lines:
        job = jobs.get(line["replicas"]) or next(iter(jobs.values()))
        diff = float(np.abs(line.pop("values") - job["values"]).max())
        worst = max(worst, diff)
        line["max_abs_diff"] = diff
        line["batch_rows_per_second"] = job["rows_per_second"]
        line["overhead"] = job["rows_per_second"] / line["rows_per_second"]
    with (out / "serve.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(lines)
    write_png(lines, jobs, out / "serve.png")
    result = {
        "where": "url" if args.url else "local",
        "rows": args.rows,
        "trees": args.trees,
        "background": args.background,
        "algorithm": args.algorithm,
        "max_batch_size": args.max_batch_size,
        "batch_wait_ms": args.batch_wait_ms,
        "concurrency": args.concurrency,
        "batch_job": {
            str(k): {"seconds": j["seconds"], "rows_per_second": j["rows_per_second"]}
            for k, j in jobs.items()
        },
        "served": [{k: v for k, v in line.items() if k != "where"} for line in lines],
        "max_abs_diff_to_batch_job": worst,
        "wall_seconds": time.perf_counter() - started,
        "csv": str(out / "serve.csv"),
        "png": str(out / "serve.png"),
    }
    print(json.dumps(result, indent=2))
    if not worst <= TOLERANCE:
        log(f"FAILED: served values differ from the batch job's by {worst:.3g} > {TOLERANCE}")
        return 1
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="a local Ray instance (the default)")
    where.add_argument("--url", help="the application's URL as `shapcluster serve up` printed it")
    parser.add_argument("--token-file", help="with --url: a file holding the bearer token")
    parser.add_argument("--data", type=Path, default=WINE, help=f"the wine CSV [default: {WINE}]")
    parser.add_argument("--rows", type=int, default=40, help="rows explained per pass [default: 40]")
    parser.add_argument(
        "--replicas", type=_ints, default=[1, 2], help="replica counts, e.g. 1,2,4 [default: 1,2]"
    )
    parser.add_argument(
        "--request-sizes", type=_ints, default=[1, 5, 10], help="rows per request [default: 1,5,10]"
    )
    parser.add_argument("--nruns", type=int, default=1, help="repeats of each combination [default: 1]")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight at once [default: 16]"
    )
    parser.add_argument("--trees", type=int, default=100, help="trees of the wine forest [default: 100]")
    parser.add_argument("--background", type=int, default=50, help="background rows [default: 50]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algorithm", choices=("kernel", "tree"), default="kernel")
    parser.add_argument(
        "--max-batch-size", type=int, default=16, help="rows per explainer call [default: 16]"
    )
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="[default: 10]")
    parser.add_argument("--out", help="output folder [default: benchmarks/out/serve-<timestamp>/]")
    args = parser.parse_args(argv)
    if args.url and not args.token_file:
        log("--url without --token-file: requests are sent without a token")
    return args


if __name__ == "__main__":
    raise SystemExit(main())
