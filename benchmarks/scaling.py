"""How our distributed KernelSHAP scales with CPUs and batch size: wall time and speed-up.

Runs the real job (``shapcluster submit`` in a subprocess) once per CPU count (the job's
``--max-tasks``: Ray tasks at once), batch size (``--batch-size``: rows per task; ``auto`` leaves
the job's balanced default) and repeat, on a local Ray instance (``--local``, started with the
largest CPU count) or on the cluster named by ``--config``. Repeats are interleaved (every
combination once, then again) so a drift in the machine's load spreads over all of them.

Each run's ``summary.json`` gives our explainer's wall time (its step in ``wall_seconds``) and
the total of every step. shap's reference explainer is left out (``--no-reference``) so the
CPUs are ours alone; ``--with-reference`` keeps it in (then it shares the CPUs with ours, and
the total counts both branches although they run at once).

Each run is a fresh job, as a user's is. The job's ``warm_up`` step starts one worker process
per CPU and loads the model into each before our explainer's clock starts; it is a step of its
own in ``wall_seconds`` (so in ``total_seconds``), not in our explainer's wall time. Compare
that wall time with ``cpu_seconds`` / CPUs (our tasks' own time): the gap is what scheduling
and start-up still cost; a task's own time that grows with the CPU count is contention for the
cores (other processes on a shared machine) or for memory bandwidth.

``--ceiling`` (with ``--local``) runs, beside each Ray run, the same blocks of the same work in
plain processes without Ray (``benchmarks/ceiling.py``): the efficiency this machine gives the
kernel itself, so the gap to the Ray run's efficiency is what Ray's own processes cost here.

Writes to ``--out`` (default ``benchmarks/out/scaling-<timestamp>/``): ``scaling.csv`` (one line
per run), ``scaling_summary.csv`` (median, min, max per CPU count and batch size),
``scaling.png`` (wall time and speed-up against CPUs) and ``runs/`` (each run's results and
log). Prints one JSON object; progress goes to stderr. Speed-up is the median wall time at the
smallest CPU count of the same batch size over this one, so ideal is cpus / smallest cpus.

Run: ``.venv/bin/python benchmarks/scaling.py --local --cpus-list 1,2 --batch-sizes auto,4``
or ``... --config shapcluster.toml --cpus-list 1,2,4,6 --batch-sizes 1,2,4 --nruns 3``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# app.dag.OURS, the step name of our explainer in summary.json (importing app.dag imports Ray).
OURS_STEP = "distributed KernelSHAP"
AUTO = "auto"  # batch size left to the job
TAIL_LINES = 25
RUN_COLUMNS = (
    "cpus",
    "batch_size",
    "run",
    "wall_seconds",
    "total_seconds",
    "speedup",
    "cpu_seconds",
    "tasks",
    "run_id",
    "ceiling_wall_seconds",
    "ceiling_cpu_seconds",
)
SUMMARY_COLUMNS = (
    "cpus",
    "batch_size",
    "runs",
    "median_wall_seconds",
    "min_wall_seconds",
    "max_wall_seconds",
    "median_total_seconds",
    "median_cpu_seconds",
    "speedup",
    "speedup_min",
    "speedup_max",
    "ideal_speedup",
    "efficiency",
    "ceiling_median_wall_seconds",
    "ceiling_efficiency",
)
PASS_THROUGH = ("rows", "background", "nsamples", "data", "trees", "seed")

BatchSize = int | None  # None: the job's balanced default


class BenchmarkError(Exception):
    """A run failed or its results are unusable; the message says which and why."""


@dataclass(frozen=True)
class Run:
    cpus: int
    batch_size: BatchSize
    run: int  # 1-based repeat number
    wall_seconds: float  # our explainer's step
    total_seconds: float  # every step of the job
    cpu_seconds: float = 0.0  # our tasks' own time; cpus x wall - this is what scaling lost
    tasks: int = 0
    run_id: str = ""
    ceiling_wall_seconds: float | None = None  # the same blocks in plain processes (--ceiling)
    ceiling_cpu_seconds: float | None = None


@dataclass(frozen=True)
class Point:
    """The runs of one (cpus, batch size), aggregated."""

    cpus: int
    batch_size: BatchSize
    runs: int
    median_wall_seconds: float
    min_wall_seconds: float
    max_wall_seconds: float
    median_total_seconds: float
    median_cpu_seconds: float
    speedup: float  # baseline median / this median
    speedup_min: float  # baseline median / this max
    speedup_max: float  # baseline median / this min
    ideal_speedup: float  # cpus / baseline cpus
    efficiency: float  # speedup / ideal_speedup
    ceiling_median_wall_seconds: float | None = None  # --ceiling: plain processes, no Ray
    ceiling_efficiency: float | None = None  # its speed-up against its own baseline / ideal


# ---- pure parts: parsing, aggregation, files, plot -------------------------------------------


def parse_int_list(text: str, *, allow_auto: bool = False) -> tuple[Any, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``, sorted; ``auto`` -> None (first) when allowed.

    Raises argparse.ArgumentTypeError (argparse prints it against the option) on anything else.
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list such as 1,2,4")
    values: list[int | None] = []
    for item in items:
        if allow_auto and item.lower() == AUTO:
            values.append(None)
            continue
        try:
            number = int(item)
        except ValueError:
            expected = "a whole number or 'auto'" if allow_auto else "a whole number"
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not {expected}") from None
        if number < 1:
            raise argparse.ArgumentTypeError(f"{number} in {text!r} must be at least 1")
        values.append(number)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
    return tuple(sorted(values, key=lambda v: -1 if v is None else v))


def batch_label(batch_size: BatchSize) -> str:
    return AUTO if batch_size is None else str(batch_size)


def submit_command(
    target: Sequence[str],
    cpus: int,
    batch_size: BatchSize,
    run_id: str,
    runs_dir: Path,
    job_options: dict[str, Any],
    *,
    no_reference: bool,
) -> list[str]:
    """The ``shapcluster submit`` command line of one run."""
    command = [sys.executable, "-m", "shapcluster", "submit", *target, "--max-tasks", str(cpus)]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    for name, value in job_options.items():
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    if no_reference:
        command.append("--no-reference")
    return [*command, "--run-id", run_id, "--output-dir", str(runs_dir)]


def run_from_summary(summary: dict[str, Any], cpus: int, batch_size: BatchSize, run: int, run_id: str) -> Run:
    """Our explainer's wall time and the total of every step, from one run's summary.json."""
    walls: dict[str, float] = summary.get("wall_seconds", {})
    if OURS_STEP not in walls:
        raise BenchmarkError(
            f"summary.json of run {run_id} has no {OURS_STEP!r} in wall_seconds "
            f"(it has {sorted(walls)}); has app/dag.py renamed the step?"
        )
    tasks, cpu_seconds = summary.get("tasks", {}), summary.get("cpu_seconds", {})
    return Run(
        cpus=cpus,
        batch_size=batch_size,
        run=run,
        wall_seconds=float(walls[OURS_STEP]),
        total_seconds=float(sum(walls.values())),
        cpu_seconds=float(cpu_seconds.get("ours", 0.0)) if isinstance(cpu_seconds, dict) else 0.0,
        tasks=int(tasks.get("ours", 0)) if isinstance(tasks, dict) else 0,
        run_id=run_id,
    )


def _group(runs: Iterable[Run]) -> dict[tuple[int, BatchSize], list[Run]]:
    groups: dict[tuple[int, BatchSize], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.cpus, run.batch_size), []).append(run)
    return groups


def _baseline_groups(runs: Sequence[Run]) -> dict[BatchSize, tuple[int, list[Run]]]:
    """Per batch size: the smallest CPU count run and its runs."""
    base: dict[BatchSize, tuple[int, list[Run]]] = {}
    for (cpus, batch_size), group in sorted(_group(runs).items(), key=lambda kv: kv[0][0]):
        base.setdefault(batch_size, (cpus, group))
    return base


def baselines(runs: Sequence[Run]) -> dict[BatchSize, tuple[int, float]]:
    """Per batch size: the smallest CPU count run and the median wall time there."""
    return {
        batch_size: (cpus, statistics.median(r.wall_seconds for r in group))
        for batch_size, (cpus, group) in _baseline_groups(runs).items()
    }


def _ceiling_median(group: Sequence[Run]) -> float | None:
    """The median ceiling wall time of these runs (None: --ceiling did not run)."""
    walls = [r.ceiling_wall_seconds for r in group if r.ceiling_wall_seconds is not None]
    return statistics.median(walls) if walls else None


def aggregate(runs: Sequence[Run]) -> list[Point]:
    """Median, min and max per (cpus, batch size), with speed-ups against the smallest CPU count."""
    base = baselines(runs)
    ceiling_base = {b: _ceiling_median(group) for b, (_, group) in _baseline_groups(runs).items()}
    points = []
    for (cpus, batch_size), group in _group(runs).items():
        walls = [r.wall_seconds for r in group]
        base_cpus, base_wall = base[batch_size]
        median, low, high = statistics.median(walls), min(walls), max(walls)
        speedup, ideal = base_wall / median, cpus / base_cpus
        ceiling, ceiling_baseline = _ceiling_median(group), ceiling_base[batch_size]
        ceiling_efficiency = ceiling_baseline / ceiling / ideal if ceiling and ceiling_baseline else None
        points.append(
            Point(
                cpus=cpus,
                batch_size=batch_size,
                runs=len(group),
                median_wall_seconds=median,
                min_wall_seconds=low,
                max_wall_seconds=high,
                median_total_seconds=statistics.median(r.total_seconds for r in group),
                median_cpu_seconds=statistics.median(r.cpu_seconds for r in group),
                speedup=speedup,
                speedup_min=base_wall / high,
                speedup_max=base_wall / low,
                ideal_speedup=ideal,
                efficiency=speedup / ideal,
                ceiling_median_wall_seconds=ceiling,
                ceiling_efficiency=ceiling_efficiency,
            )
        )
    return sorted(points, key=lambda p: (-1 if p.batch_size is None else p.batch_size, p.cpus))


def run_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """scaling.csv's lines: each run with its speed-up against its batch size's baseline median."""
    base = baselines(runs)
    return [
        {
            "cpus": r.cpus,
            "batch_size": batch_label(r.batch_size),
            "run": r.run,
            "wall_seconds": round(r.wall_seconds, 4),
            "total_seconds": round(r.total_seconds, 4),
            "speedup": round(base[r.batch_size][1] / r.wall_seconds, 4),
            "cpu_seconds": round(r.cpu_seconds, 4),
            "tasks": r.tasks,
            "run_id": r.run_id,
            "ceiling_wall_seconds": _rounded(r.ceiling_wall_seconds),
            "ceiling_cpu_seconds": _rounded(r.ceiling_cpu_seconds),
        }
        for r in runs
    ]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def point_rows(points: Sequence[Point]) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        row: dict[str, Any] = {name: getattr(p, name) for name in SUMMARY_COLUMNS}
        row = {name: round(v, 4) if isinstance(v, float) else v for name, v in row.items()}
        row["batch_size"] = batch_label(p.batch_size)
        rows.append(row)
    return rows


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def write_plot(path: Path, points: Sequence[Point], title: str = "") -> None:
    """Two panels against CPUs, one line per batch size, error bars min..max across runs; with
    --ceiling, the speed-up panel adds each batch size's ceiling (dotted, same colour)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    wall_ax, speed_ax = figure.subplots(1, 2)
    cpus = sorted({p.cpus for p in points})
    for batch_size in sorted({p.batch_size for p in points}, key=lambda b: -1 if b is None else b):
        line = sorted((p for p in points if p.batch_size == batch_size), key=lambda p: p.cpus)
        x = [p.cpus for p in line]
        label = f"batch size {batch_label(batch_size)}"
        wall_ax.errorbar(
            x,
            [p.median_wall_seconds for p in line],
            yerr=[
                [p.median_wall_seconds - p.min_wall_seconds for p in line],
                [p.max_wall_seconds - p.median_wall_seconds for p in line],
            ],
            marker="o",
            capsize=3,
            label=label,
        )
        drawn = speed_ax.errorbar(
            x,
            [p.speedup for p in line],
            yerr=[[p.speedup - p.speedup_min for p in line], [p.speedup_max - p.speedup for p in line]],
            marker="o",
            capsize=3,
            label=label,
        )
        if all(p.ceiling_efficiency is not None for p in line):  # --ceiling: the same blocks, no Ray
            speed_ax.plot(
                x,
                [(p.ceiling_efficiency or 0.0) * p.ideal_speedup for p in line],
                linestyle=":",
                marker="s",
                color=drawn.lines[0].get_color(),
                label=f"{label}, without Ray (ceiling)",
            )
    base = cpus[0] if cpus else 1
    speed_ax.plot(cpus, [c / base for c in cpus], "k--", linewidth=1, label="ideal")
    wall_ax.set(xlabel="CPUs (Ray tasks at once)", ylabel="wall time, seconds (median)", title="Wall time")
    wall_ax.set_ylim(bottom=0)
    speed_ax.set(
        xlabel="CPUs (Ray tasks at once)",
        ylabel=f"speed-up vs {base} CPU{'' if base == 1 else 's'}",
        title="Speed-up",
    )
    speed_ax.set_ylim(bottom=0)
    for ax in (wall_ax, speed_ax):
        ax.set_xticks(cpus)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


# ---- running the job --------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def find_summary(runs_dir: Path, run_id: str, before: set[Path]) -> Path:
    """The run's summary.json: under its run id, else the one new folder (a cluster's job id)."""
    expected = runs_dir / run_id / "summary.json"
    if expected.is_file():
        return expected
    new = sorted(set(runs_dir.glob("*/summary.json")) - before)
    if len(new) == 1:
        return new[0]
    raise BenchmarkError(
        f"run {run_id} exited 0 but wrote no {expected}"
        + (f" (new summaries: {', '.join(map(str, new))})" if new else "")
    )


def local_env(environ: dict[str, str], ray_tmpdir: str) -> dict[str, str]:
    """The environment of a local run: a Ray instance of its own, whatever else runs here.

    Without RAY_ADDRESS, ``ray.init()`` still joins the last cluster ``ray start`` made on this
    machine (found under Ray's temp dir), so a local run would land on someone else's instance.
    """
    env = {name: value for name, value in environ.items() if name != "RAY_ADDRESS"}
    return env | {"RAY_TMPDIR": ray_tmpdir}


def run_once(
    command: list[str], run_id: str, runs_dir: Path, timeout: float | None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one job; its output goes to runs/<run_id>.log. Returns its summary.json."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    log = runs_dir / f"{run_id}.log"
    before = set(runs_dir.glob("*/summary.json"))
    shown = shlex.join(command)
    # Its own process group, so a run past its timeout is stopped with the Ray processes it started.
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stdout, stderr = _stop(process)
            log.write_text(stdout + stderr)
            raise BenchmarkError(
                f"`{shown}` did not finish within {timeout:g} s (--timeout) and was stopped; "
                f"last output:\n{_tail(stdout + stderr)}\nfull log: {log}"
            ) from None
    log.write_text(stdout + stderr)
    if process.returncode != 0:
        raise BenchmarkError(
            f"`{shown}` failed with exit status {process.returncode}; last output:\n"
            f"{_tail(stdout + stderr)}\nfull log: {log}"
        )
    summary: dict[str, Any] = json.loads(find_summary(runs_dir, run_id, before).read_text())
    return summary


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM the run's process group, SIGKILL it if still there after 10 s; its output so far."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            return process.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return "", ""  # not reached: communicate() without a timeout returns after SIGKILL


def run_all(
    args: argparse.Namespace,
    target: list[str],
    runs_dir: Path,
    no_reference: bool,
    env: dict[str, str] | None = None,
    ceiling: Any = None,
) -> list[Run]:
    """Every (cpus, batch size) once per repeat; ``ceiling``: a ceiling.Workload whose blocks
    also run in plain processes right after each Ray run."""
    job_options = {name: getattr(args, name) for name in PASS_THROUGH}
    combos = [(c, b) for b in args.batch_sizes for c in args.cpus_list]
    total, done = len(combos) * args.nruns, 0
    runs: list[Run] = []
    for repeat in range(1, args.nruns + 1):
        for cpus, batch_size in combos:
            done += 1
            run_id = f"{args.out.name}-c{cpus}-b{batch_label(batch_size)}-r{repeat}"
            command = submit_command(
                target, cpus, batch_size, run_id, runs_dir, job_options, no_reference=no_reference
            )
            what = f"cpus={cpus} batch_size={batch_label(batch_size)} run {repeat}/{args.nruns}"
            _progress(f"[{done}/{total}] {what} ...")
            started = time.monotonic()
            summary = run_once(command, run_id, runs_dir, args.timeout, env)
            run = run_from_summary(summary, cpus, batch_size, repeat, run_id)
            _check_summary(summary, cpus, what)
            elapsed = time.monotonic() - started
            _progress(
                f"[{done}/{total}] {what}: ours {run.wall_seconds:.2f} s, all steps "
                f"{run.total_seconds:.2f} s, {run.tasks} tasks ({elapsed:.0f} s with start-up)"
            )
            if ceiling is not None:
                run = _with_ceiling(run, ceiling, what)
            runs.append(run)
    return runs


def _with_ceiling(run: Run, workload: Any, what: str) -> Run:
    """The run with the same blocks' wall time in plain processes (benchmarks/ceiling.py)."""
    from ceiling import run_ceiling

    try:
        measured = run_ceiling(workload, run.cpus, run.batch_size)
    except (RuntimeError, threading.BrokenBarrierError, OSError) as err:
        raise BenchmarkError(f"{what}: the ceiling's plain processes failed: {err}") from err
    if run.tasks and measured.tasks != run.tasks:
        raise BenchmarkError(
            f"{what}: the ceiling cut the work into {measured.tasks} blocks, the job into {run.tasks}; "
            "benchmarks/ceiling.py no longer mirrors app.dag._ours_branch"
        )
    _progress(f"    ceiling (plain processes, no Ray): {measured.wall_seconds:.2f} s")
    return dataclasses.replace(
        run, ceiling_wall_seconds=measured.wall_seconds, ceiling_cpu_seconds=measured.cpu_seconds
    )


def _check_summary(summary: dict[str, Any], cpus: int, what: str) -> None:
    workers, cluster_cpus = summary.get("workers"), summary.get("cpus")
    if workers is not None and workers != cpus:
        _progress(f"warning: {what} ran {workers} tasks at once, not {cpus}")
    if isinstance(cluster_cpus, int) and cpus > cluster_cpus:
        _progress(f"warning: {what} asks for more tasks at once than the cluster's {cluster_cpus} CPUs")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="a local Ray instance with max(--cpus-list) CPUs")
    where.add_argument("--config", "-c", metavar="PATH", help="the cluster of this shapcluster.toml")
    parser.add_argument(
        "--cpus-list",
        type=parse_int_list,
        required=True,
        metavar="N,N,...",
        help="CPU counts (the job's --max-tasks: Ray tasks at once), e.g. 1,2,4",
    )
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: parse_int_list(text, allow_auto=True),
        default=(None,),
        metavar="N,N,...",
        help="rows per Ray task (the job's --batch-size); 'auto' is the job's balanced default "
        "[default: auto]",
    )
    parser.add_argument("--nruns", type=int, default=3, help="repeats of each combination [default: 3]")
    parser.add_argument(
        "--out", type=Path, help="output folder [default: benchmarks/out/scaling-<timestamp>]"
    )
    parser.add_argument(
        "--with-reference", action="store_true", help="keep shap's explainer running beside ours"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds allowed per run [default: 3600]"
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="with --local: also run each run's blocks in plain processes without Ray (the "
        "machine's own scaling of the kernel)",
    )
    jobs = parser.add_argument_group("job options passed to submit (default: the job's own)")
    jobs.add_argument("--rows", type=int)
    jobs.add_argument("--background", type=int)
    jobs.add_argument("--nsamples")
    jobs.add_argument("--data")
    jobs.add_argument("--trees", type=int)
    jobs.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    if args.nruns < 1:
        parser.error("--nruns must be at least 1")
    if args.ceiling and not args.local:
        parser.error("--ceiling needs --local (it rebuilds the job's work on this machine)")
    if args.out is None:
        args.out = REPO / "benchmarks" / "out" / f"scaling-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out = args.out.resolve()
    return args


def _ceiling_workload(args: argparse.Namespace) -> Any:
    """The job's explainer workload for --ceiling, built here once (benchmarks/ceiling.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(REPO))
    from ceiling import build_workload

    from app.errors import JobError

    _progress("Building the job's workload for --ceiling (the same forest, rows and plan) ...")
    try:
        return build_workload({name: getattr(args, name) for name in PASS_THROUGH})
    except JobError as err:  # bad data or options: what the job itself would say, in one line
        raise BenchmarkError(f"--ceiling could not build the job's work: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        if args.local:
            target = ["--local", "--cpus", str(max(args.cpus_list))]
            if max(args.cpus_list) > (os.cpu_count() or 1):
                _progress(
                    f"warning: {max(args.cpus_list)} CPUs asked for, this machine has {os.cpu_count()}; "
                    "the larger counts share cores and their speed-up means little"
                )
        else:
            target = ["-c", str(Path(args.config).resolve())]
        no_reference = not args.with_reference
        runs_dir = args.out / "runs"
        _progress(f"Writing to {args.out}")
        if args.local:
            # Short and private: Ray's socket paths under it must stay within 107 characters.
            workload = _ceiling_workload(args) if args.ceiling else None
            ray_tmpdir = tempfile.mkdtemp(prefix="scaling-ray-")
            try:
                runs = run_all(
                    args, target, runs_dir, no_reference, local_env(dict(os.environ), ray_tmpdir), workload
                )
            finally:
                shutil.rmtree(ray_tmpdir, ignore_errors=True)
        else:
            runs = run_all(args, target, runs_dir, no_reference)
    except BenchmarkError as err:
        print(f"scaling benchmark aborted: {err}", file=sys.stderr)
        return 1

    points = aggregate(runs)
    files = {
        "runs_csv": args.out / "scaling.csv",
        "summary_csv": args.out / "scaling_summary.csv",
        "plot": args.out / "scaling.png",
        "runs": runs_dir,
    }
    write_csv(files["runs_csv"], RUN_COLUMNS, run_rows(runs))
    write_csv(files["summary_csv"], SUMMARY_COLUMNS, point_rows(points))
    where = "local Ray" if args.local else f"cluster {Path(args.config).name}"
    reference = "" if no_reference else ", shap's explainer beside it"
    write_plot(files["plot"], points, f"distributed KernelSHAP on {where}{reference}")
    report = {
        "target": "local" if args.local else str(Path(args.config).resolve()),
        "workload": {name: getattr(args, name) for name in PASS_THROUGH if getattr(args, name) is not None},
        "reference_explainer": not no_reference,
        "cpus_list": list(args.cpus_list),
        "batch_sizes": [batch_label(b) for b in args.batch_sizes],
        "nruns": args.nruns,
        "wall_seconds_is": f"summary.json wall_seconds[{OURS_STEP!r}]",
        "ceiling_is": (
            "the same blocks in plain processes without Ray (benchmarks/ceiling.py); "
            "ceiling_efficiency is the machine's own, efficiency / ceiling_efficiency what Ray keeps of it"
            if args.ceiling
            else None
        ),
        "medians": point_rows(points),
        "files": {name: str(path) for name, path in files.items()},
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
