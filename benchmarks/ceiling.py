"""The machine's own scaling ceiling for ``scaling.py``: the job's blocks in plain processes.

``scaling.py --ceiling`` runs, beside each Ray run, the very work our explainer's Ray tasks do
(the same forest, rows, background, coalition plan and ``kernel_shap.split_work`` blocks for the
same CPUs and batch size) in ``cpus`` plain Python processes: no Ray, no raylet, GCS, driver or
Ray worker threads, the same dynamic scheduling (at most ``cpus`` blocks at once, the next
block handed to whichever process finishes first) and warm processes (model and data loaded,
the kernel run once, before the clock). Its efficiency is what this machine gives the kernel
itself when the CPUs double; the gap between it and the Ray run's is what Ray's processes cost.

Only ``--local`` and the job's own forest (no ``--model``): the workload is rebuilt here from the
job's options with the job's own functions (``app.etl``, ``app.model``, ``app.kernel_shap``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import numpy as np

from app import etl, kernel_shap, model
from app.config import parse_args
from app.contract import DEFAULT_LABEL, EXACT

Block = tuple[np.ndarray, np.ndarray]  # (rows (R, M), masks (S, M))


@dataclass(frozen=True)
class Workload:
    """What the job's explainer tasks get: model, rows (R, M), merged background (N', M) with
    weights (N',), the coalition plan's masks per set of varying features, and the dtype the
    job builds synthetic rows in."""

    fitted: Any
    rows: np.ndarray
    background: np.ndarray
    weights: np.ndarray
    plans: tuple[tuple[np.ndarray, np.ndarray], ...]  # (row indices, masks (S, M)) per varying set
    dtype: Any

    def blocks(self, cpus: int, batch_size: int | None) -> list[Block]:
        """The job's blocks for ``cpus`` tasks at once (app.dag._ours_branch), in its order."""
        out: list[Block] = []
        for row_index, masks in self.plans:
            for block in kernel_shap.split_work(
                len(row_index), len(masks), len(self.background), cpus, batch_size
            ):
                out.append((self.rows[row_index[block.rows]], masks[block.coalitions]))
        return out


def build_workload(job_options: dict[str, Any]) -> Workload:
    """The job's explainer workload for these ``submit`` options (rows, background, nsamples,
    data, trees, seed; None: the job's default), built as app.dag._prepare and _ours_branch do.

    Raises app.errors.JobError subclasses for bad data, as the job would.
    """
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in job_options.items() if value is not None]
    config = parse_args(argv)
    source = etl.resolve_source(config.data)
    dataset = etl.load_dataset(source, config.label or DEFAULT_LABEL)
    split = model.split_data(dataset, config.test_size, config.seed, config.task)
    fitted = model.train_forest(split, config.trees, config.seed, config.label or DEFAULT_LABEL).model
    data = model.get_data_to_explain(split, config.rows, config.background, config.seed)
    background, weights = kernel_shap.merge_background(data.background, data.background_weights)
    # As app.dag._prepare: exact for the bundled data (no source) unless --nsamples says otherwise.
    nsamples = EXACT if config.nsamples is None and source is None else config.nsamples
    n_features = data.rows.shape[1]
    budget = kernel_shap.resolve_nsamples(nsamples, n_features, len(data.rows), len(background))
    varying = kernel_shap.varying_features(data.rows, background, None)
    plans = tuple(
        (row_index, kernel_shap.build_plan(key, n_features, budget, config.seed, None).masks)
        for key, row_index in kernel_shap.group_rows_by_varying(varying).items()
    )
    return Workload(fitted, data.rows, background, weights, plans, model.input_dtype(fitted))


# ---- the worker processes ---------------------------------------------------------------------

_WORKER: dict[str, Workload] = {}  # this worker process's workload, set once at its start


def _start_worker(workload: Workload) -> None:
    _WORKER["workload"] = workload


def _evaluate(rows: np.ndarray, masks: np.ndarray) -> float:
    """One block, as coalition_block_step runs it (one BLAS/OpenMP thread); its seconds."""
    from threadpoolctl import threadpool_limits

    workload = _WORKER["workload"]
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        kernel_shap.evaluate_coalitions(
            workload.fitted.predict_proba,
            rows,
            workload.background,
            masks,
            dtype=workload.dtype,
            weights=workload.weights,
        )
    return time.perf_counter() - start


def _warm(barrier: Any) -> int:
    """The warm-up the job's warm_up_step does (one synthetic row), then wait for the others."""
    rows = _WORKER["workload"].rows
    _evaluate(rows[:1], np.zeros((1, rows.shape[1]), dtype=bool))
    barrier.wait(timeout=120)
    return os.getpid()


@dataclass(frozen=True)
class CeilingRun:
    wall_seconds: float  # first block handed out to last block back
    cpu_seconds: float  # the blocks' own seconds, summed
    tasks: int


def run_ceiling(workload: Workload, cpus: int, batch_size: int | None) -> CeilingRun:
    """The workload's blocks for (cpus, batch_size) in ``cpus`` fresh, warmed processes.

    Raises RuntimeError when fewer than ``cpus`` distinct processes could be warmed.
    """
    blocks = workload.blocks(cpus, batch_size)
    context = multiprocessing.get_context("spawn")
    pool = futures.ProcessPoolExecutor(
        cpus, mp_context=context, initializer=_start_worker, initargs=(workload,)
    )
    with context.Manager() as manager, pool:
        barrier = manager.Barrier(cpus)
        pids = {f.result() for f in [pool.submit(_warm, barrier) for _ in range(cpus)]}
        if len(pids) != cpus:
            raise RuntimeError(f"the ceiling warmed {len(pids)} processes, not {cpus}")
        return _drive(pool, blocks, cpus)


def _drive(pool: futures.Executor, blocks: Sequence[Block], window: int) -> CeilingRun:
    """At most ``window`` blocks at once, the next one submitted as each finishes (as app.dag._drive)."""
    pending = list(blocks)
    cpu_seconds = 0.0
    start = time.perf_counter()
    running = {pool.submit(_evaluate, *pending.pop(0)) for _ in range(min(window, len(pending)))}
    while running:
        done, running = futures.wait(running, return_when=futures.FIRST_COMPLETED)
        for future in done:
            cpu_seconds += future.result()
            if pending:
                running.add(pool.submit(_evaluate, *pending.pop(0)))
    return CeilingRun(time.perf_counter() - start, cpu_seconds, len(blocks))
