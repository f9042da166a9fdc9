"""The job as a Ray DAG; the only module of the job that imports Ray.

    etl -> split -> create_model (or a parallel sweep) -> get_data_to_explain
        -> run_distributed_shap  (blocks of rows x coalitions, one task each)
        -> run_default_shap      (shap.KernelExplainer on chunks of rows)   [concurrently]
        -> compare_results -> results/<run-id>/

Each step is a plain function from etl/model/kernel_shap/compare; this module only wires them.
Large values (data, model, background) go into the object store once and tasks share them.
``--no-reference`` leaves out run_default_shap.

A lost worker node does not fail the job: every task is retried up to MAX_RETRIES times on
system failures only (a worker process or node lost; an exception from our code fails at once),
and no work is pinned to a node. What the explainers read (model, background, rows) was put by
the driver, so it lives with the driver on the head; a task's result lost with its node before
the driver fetched it is recomputed by Ray from the task's lineage. summary.json names the nodes
the explainers started on and those lost meanwhile.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias, cast

import numpy as np
import ray
from ray import ObjectRef
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from app import compare, etl, kernel_shap, model, model_file, precheck, results, stream, tree_shap
from app.config import EXACT, Algorithm, JobConfig
from app.contract import DEFAULT_LABEL, Link, OptionError, Task, new_run_id, row_range
from app.errors import DataError, ExplanationsDisagreeError, JobError
from app.groups import Players
from app.report import Reporter
from app.tabular import ModelFunction

log = logging.getLogger(__name__)
Ref: TypeAlias = ObjectRef[Any]
OURS = "distributed KernelSHAP"  # the explainers' step names in summary.json's wall_seconds
REFERENCE = "shap.KernelExplainer"
MAX_RETRIES = 3  # reruns of a task whose worker or node was lost (Ray's default, made explicit)
# What ray.get raises once those retries (or lineage reconstruction) are used up.
_LOST = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError)
# Longest wait for every warm-up task to hold its own worker process (workers still starting,
# or a busy cluster); past it the explainers start with the processes that are ready.
WARM_UP_SECONDS = 120.0
# Longest wait for a node to show it is alive at the end: Ray's own health checks take ~15 s
# (up to a minute if checks time out) to declare a killed node dead.
NODE_CHECK_SECONDS = 60.0

# Deserialised model per worker process: tasks get the Ref boxed in a list so Ray does
# not resolve it per task, and each worker unpickles the forest once instead of once a block.
_objects: dict[str, Any] = {}


def _resolve(box: list[Ref]) -> Any:
    key = box[0].hex()
    if key not in _objects:
        if len(_objects) >= 4:
            _objects.clear()
        _objects[key] = ray.get(box[0])
    return _objects[key]


@ray.remote(num_cpus=0)
class _Barrier:
    """Holds ``parties`` callers until all have arrived (an asyncio actor: no polling)."""

    def __init__(self, parties: int) -> None:
        import asyncio

        self._parties = parties
        self._arrived = 0
        self._all_here = asyncio.Event()

    async def arrive(self) -> int:
        self._arrived += 1
        if self._arrived >= self._parties:
            self._all_here.set()
        await self._all_here.wait()
        return self._arrived


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
def warm_up_step(
    model_box: list[Ref], rows: np.ndarray, background: np.ndarray, barrier: Any, with_shap: bool
) -> int:
    """Load in this worker process what the explainers' tasks will need; return its PID.

    The model is unpickled into the per-process cache, scikit-learn's prediction path, our kernel
    and threadpoolctl run once on one synthetic row (and shap is imported when the reference
    runs), so none of that lands in the explainers' clock. The task then waits at ``barrier``
    until every warm-up task holds a process of its own: Ray would otherwise hand a finished
    worker the next warm-up task and leave the other processes cold.
    """
    fitted = _resolve(model_box)
    if with_shap:
        import shap  # noqa: F401  (its import takes seconds; the reference's tasks need it)
    with _single_threaded():
        masks = np.zeros((1, rows.shape[1]), dtype=bool)
        kernel_shap.evaluate_coalitions(
            fitted.predict_proba, rows[:1], background[:1], masks, dtype=model.input_dtype(fitted)
        )
    try:
        ray.get(barrier.arrive.remote(), timeout=WARM_UP_SECONDS)
    except ray.exceptions.GetTimeoutError:
        log.warning("warm-up: not every worker process started within %.0f s", WARM_UP_SECONDS)
    except ray.exceptions.RayError as err:  # the barrier's node is gone: this process is warm anyway
        log.warning("warm-up: the barrier was lost (%s)", type(err).__name__)
    return os.getpid()


def warm_up_workers(
    model_box: list[Ref], data: model.ExplainData, workers: int, *, with_shap: bool = False
) -> list[int]:
    """Start ``workers`` worker processes (at most the cluster's CPUs) and load the model into each.

    Returns the PIDs of the processes warmed (distinct unless the barrier timed out; fewer when a
    node was lost meanwhile, which is logged, not raised). The
    explainers' tasks then run in these processes with the model already deserialised, so
    their wall time is the explanation's, and the warm-up's own time is a step of its own.
    """
    parties = max(1, min(workers, _cluster_cpus()))
    # The barrier lives with the driver (on the head of a cluster): a worker node lost during the
    # warm-up must not take it along. The warm-up only saves time, so a lost task is no error:
    # the explainers' own tasks retry on the nodes that are left.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    barrier = _Barrier.options(scheduling_strategy=here).remote(parties)  # type: ignore[attr-defined]
    refs = [
        warm_up_step.remote(model_box, data.rows, data.background, barrier, with_shap) for _ in range(parties)
    ]
    pids: list[int] = []
    try:
        for ref in refs:
            try:
                pids.append(ray.get(ref))
            except ray.exceptions.RayError as err:
                log.warning("warm-up: a task was lost (%s); the explainers start anyway", type(err).__name__)
    finally:
        ray.kill(barrier)
    return pids


def _single_threaded() -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


@ray.remote(num_returns=2, max_retries=MAX_RETRIES, retry_exceptions=False)
def etl_step(
    source: str | None,
    label: str,
    features: tuple[str, ...] = (),
    label_required: bool = True,
    weights_column: str | None = None,
) -> tuple[etl.Dataset, dict[str, Any]]:
    start = time.perf_counter()
    dataset = etl.load_dataset(source, label, features, label_required=label_required)
    dataset = etl.with_weights(dataset, weights_column)
    info = {
        "source": dataset.source,
        "rows": len(dataset.features),
        "features": list(dataset.features.columns),
        "label": None if dataset.labels is None else dataset.label,  # None: the data has no label
        "bundled": dataset.bundled,
        "csv_lines": dataset.from_csv,  # data_line = row + 2 (False: Parquet, the bundled data)
        "codec": dataset.codec,
        "notice": dataset.notice,
        "seconds": time.perf_counter() - start,
    }
    return dataset, info


@ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)
def split_step(dataset: etl.Dataset, test_size: float, seed: int, task: Task | None) -> model.Split:
    return model.split_data(dataset, test_size, seed, task)


@ray.remote(num_returns=2, max_retries=MAX_RETRIES, retry_exceptions=False)
def create_model_step(
    split: model.Split, trees: int, seed: int, label: str = "value"
) -> tuple[Any, dict[str, Any]]:
    trained = model.train_forest(split, trees, seed, label)
    info = {
        "trees": trees,
        "score": trained.score,
        "seconds": trained.seconds,
        "task": split.task.value,
        # a regressor comes wrapped in a ModelFunction; a forest's own `estimator` is its tree kind
        "type": type(
            trained.model.estimator if isinstance(trained.model, ModelFunction) else trained.model
        ).__name__,
    }
    return trained.model, info


@ray.remote(num_returns=2, max_retries=MAX_RETRIES, retry_exceptions=False)
def load_model_step(
    source: str, trust: bool, dataset: etl.Dataset, split: model.Split
) -> tuple[Any, dict[str, Any]]:
    """The user's --model as the function of the data's codes, scored on the split's test rows
    when the data has the label."""
    start = time.perf_counter()
    fitted = model.explained_model(model_file.load_model(source, trust), dataset, source)
    score = None if dataset.labels is None else fitted.score(split.x_test, split.y_test)
    info = {
        "trees": None,
        "score": score,
        "seconds": time.perf_counter() - start,
        "task": (Task.REGRESSION if fitted.regression else Task.CLASSIFICATION).value,
        "type": type(fitted.estimator).__name__,
        "path": source,
    }
    return fitted, info


@ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)
def get_data_to_explain_step(split: model.Split, rows: int, background: int, seed: int) -> model.ExplainData:
    return model.get_data_to_explain(split, rows, background, seed)


@ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)
def outputs_step(
    model_box: list[Ref], rows: np.ndarray, background: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, Any]:
    fitted = _resolve(model_box)
    with _single_threaded():
        return {
            "fx": kernel_shap.model_outputs(fitted.predict_proba, rows),
            "fnull": kernel_shap.expected_output(fitted.predict_proba, background, weights),
            "classes": [str(c) for c in fitted.classes_],
        }


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
def coalition_block_step(
    model_box: list[Ref], rows: np.ndarray, background: np.ndarray, masks: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    fitted = _resolve(model_box)
    with _single_threaded():
        ey = kernel_shap.evaluate_coalitions(
            fitted.predict_proba, rows, background, masks, dtype=model.input_dtype(fitted), weights=weights
        )
    return ey, time.perf_counter() - start


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
def reference_chunk_step(
    model_box: list[Ref],
    rows: np.ndarray,
    background: np.ndarray,
    nsamples: int | str,
    link: str,
    seeds: list[int],
    groups: list[list[int]] | None = None,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """shap.KernelExplainer on rows (R, M), one row at a time with numpy's global generator
    seeded from (--seed, the row's id): shap draws its coalitions from it, so each row's values
    do not depend on which task, worker or batch explained it. Values (R, G, K)."""
    import shap
    from shap.utils._legacy import DenseData

    start = time.perf_counter()
    fitted = _resolve(model_box)
    n_players = len(groups) if groups is not None else background.shape[1]
    player_groups = [np.asarray(g) for g in groups] if groups is not None else None
    names = [str(i) for i in range(n_players)]
    # DenseData normalises its weights in place: hand it a copy.
    w = np.ones(len(background)) if weights is None else np.array(weights, dtype=np.float64)
    data = DenseData(background, names, player_groups, w)
    per_row = []
    with _single_threaded():
        explainer = shap.KernelExplainer(fitted.predict_proba, data, link=link)
        for row, seed in zip(rows, seeds, strict=True):
            np.random.seed(seed)
            values = explainer.shap_values(row[None, :], nsamples=nsamples, l1_reg=False, silent=True)
            per_row.append(np.asarray(values).reshape(1, n_players, -1))
    return np.concatenate(per_row), np.asarray(explainer.expected_value), time.perf_counter() - start


def reference_seed(seed: int, row_id: int) -> int:
    """numpy's legacy global seed (< 2^32) for the reference's row ``row_id`` under ``--seed``."""
    return int(np.random.SeedSequence([seed, row_id]).generate_state(1)[0])


@dataclass
class _Branch:
    """One explainer's tasks: submitted lazily so at most `window` run at once."""

    name: str
    pending: list[tuple[Callable[[], Ref], int, Any]]  # (submit, progress units, key)
    window: int
    running: dict[Ref, tuple[int, Any]] = field(default_factory=dict)
    done: dict[Any, Any] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    def top_up(self) -> None:
        while self.pending and len(self.running) < self.window:
            submit, units, key = self.pending.pop(0)
            self.running[submit()] = (units, key)


def _drive(branches: list[_Branch], advance: Callable[[str, int], None]) -> None:
    """Wait on every branch's tasks together, refilling windows and reporting progress."""
    for branch in branches:
        branch.top_up()
    owner = {ref: b for b in branches for ref in b.running}
    while owner:
        ready, _ = ray.wait(list(owner), num_returns=1, timeout=STALL_CHECK_SECONDS)
        if not ready:
            _fail_without_cpus()
            continue
        for ref in ready:
            branch = owner.pop(ref)
            units, key = branch.running.pop(ref)
            value = ray.get(ref)
            branch.cpu_seconds += value[-1]
            branch.done[key] = value
            advance(branch.name, units)
            branch.top_up()
            owner.update({r: branch for r in branch.running if r not in owner})
            if not branch.running and not branch.pending:
                branch.finished = time.perf_counter()


@dataclass(frozen=True)
class Background:
    """The background as the explainers use it: duplicates merged, weights summing to 1."""

    rows: np.ndarray  # (N', M)
    weights: np.ndarray  # (N',)
    ref: Ref  # rows, in the object store

    @classmethod
    def put(cls, background: np.ndarray, weights: np.ndarray | None = None) -> Background:
        rows, merged = kernel_shap.merge_background(background, weights)
        return cls(rows, merged, ray.put(rows))


# How long `_drive` waits for a task before it looks whether any node can still run one.
STALL_CHECK_SECONDS = 10.0


def _fail_without_cpus() -> None:
    """Raise JobError naming the lost nodes when no alive node has a CPU left: the tasks would
    wait forever (a head started with 0 CPUs whose workers all died)."""
    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    if any(n["Alive"] and n["Resources"].get("CPU", 0) > 0 for n in nodes):
        return
    lost = [f"{n['NodeManagerAddress']} ({n['NodeID'][:12]})" for n in nodes if not n["Alive"]]
    raise JobError(
        "no Ray node with CPUs is left to run the remaining tasks; lost: "
        + (", ".join(lost) or "none recorded")
    )


def _ours_branch(
    model_box: list[Ref],
    data: model.ExplainData,
    background: Background,
    nsamples: int | None,
    seed: int,
    workers: int,
    batch_size: int | None,
    players: np.ndarray | None = None,
) -> tuple[_Branch, dict[tuple[int, ...], tuple[kernel_shap.CoalitionPlan, np.ndarray]]]:
    """``nsamples``: the budget from kernel_shap.resolve_nsamples (sized already)."""
    n_features = data.rows.shape[1]
    varying_sets = kernel_shap.varying_features(data.rows, background.rows, players)
    groups = kernel_shap.group_rows_by_varying(varying_sets)
    plans: dict[tuple[int, ...], tuple[kernel_shap.CoalitionPlan, np.ndarray]] = {}
    pending: list[tuple[Callable[[], Ref], int, Any]] = []
    weights_ref = ray.put(background.weights)
    for varying, row_index in groups.items():
        plan = kernel_shap.build_plan(varying, n_features, nsamples, seed, players)
        plans[varying] = (plan, row_index)
        blocks = kernel_shap.split_work(
            len(row_index), plan.n_coalitions, len(background.rows), workers, batch_size
        )
        for block in blocks:
            rows = data.rows[row_index[block.rows]]
            masks = plan.masks[block.coalitions]

            def submit(rows: np.ndarray = rows, masks: np.ndarray = masks) -> Ref:
                return coalition_block_step.remote(model_box, rows, background.ref, masks, weights_ref)

            pending.append((submit, block.units, (varying, block.rows.start, block.coalitions.start)))
    return _Branch(OURS, pending, workers), plans


def _solve_ours(
    branch: _Branch,
    plans: dict[tuple[int, ...], tuple[kernel_shap.CoalitionPlan, np.ndarray]],
    outputs: dict[str, Any],
    link: Link,
    n_rows: int,
    n_players: int,
) -> kernel_shap.Explanation:
    fx, fnull = outputs["fx"], outputs["fnull"]
    values = np.zeros((n_rows, n_players, fx.shape[1]))
    errors = np.zeros_like(values)
    for varying, (plan, row_index) in plans.items():
        ey = np.zeros((len(row_index), plan.n_coalitions, fx.shape[1]))
        for (key, row_start, coalition_start), (block_ey, _) in branch.done.items():
            if key == varying:
                ey[
                    row_start : row_start + block_ey.shape[0],
                    coalition_start : coalition_start + block_ey.shape[1],
                ] = block_ey
        values[row_index] = kernel_shap.solve_phi(plan, ey, fx[row_index], fnull, link)
        errors[row_index] = kernel_shap.standard_errors(plan, ey, fx[row_index], fnull, link)
    exact = all(plan.exact for plan, _ in plans.values())
    n_coalitions = max((plan.n_coalitions for plan, _ in plans.values()), default=0)
    return kernel_shap.Explanation(values, link.apply(fnull), exact, n_coalitions, None if exact else errors)


def _reference_branch(
    model_box: list[Ref],
    data: model.ExplainData,
    background: Background,
    nsamples: int | None,
    link: Link,
    workers: int,
    seed: int,
    groups: list[list[int]] | None = None,
) -> _Branch:
    """shap on chunks of rows; ``nsamples`` as for ours (shap caps it per row at 2^m - 2)."""
    n_rows = data.rows.shape[0]
    budget: int | str = "auto" if nsamples is None else nsamples
    chunk = math.ceil(n_rows / min(workers, n_rows))
    pending: list[tuple[Callable[[], Ref], int, Any]] = []
    for start in range(0, n_rows, chunk):
        rows = data.rows[start : start + chunk]
        seeds = [reference_seed(seed, int(i)) for i in data.row_ids[start : start + chunk]]

        def submit(rows: np.ndarray = rows, seeds: list[int] = seeds) -> Ref:
            return reference_chunk_step.remote(
                model_box, rows, background.ref, budget, link.value, seeds, groups, background.weights
            )

        pending.append((submit, len(rows), start))
    return _Branch(REFERENCE, pending, workers)


def run_distributed_shap(
    model_ref: Ref,
    data: model.ExplainData,
    *,
    nsamples: int | str | None = None,
    link: Link = Link.IDENTITY,
    seed: int = 0,
    workers: int | None = None,
    batch_size: int | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    background_weights: np.ndarray | None = None,
) -> kernel_shap.Explanation:
    """Our explainer alone on a running Ray instance (the benchmark's entry point).

    ``groups``: column indices per player (values (R, G, K)); ``background_weights`` (N,):
    shap's weighted background. Raises kernel_shap.PlanTooLargeError before any task runs
    when the plan cannot fit the memory budget, ValueError for groups or weights that do not fit.
    """
    workers = workers or _cluster_cpus()
    players = kernel_shap.player_matrix(groups, data.rows.shape[1]) if groups is not None else None
    n_players = data.rows.shape[1] if players is None else players.shape[0]
    background = Background.put(data.background, background_weights)
    model_box = [model_ref]
    outputs_ref = outputs_step.remote(model_box, data.rows, background.ref, background.weights)
    # Sized for one output here so the blocks start at once; ey is sized again for the real
    # number of outputs before it is built.
    budget = kernel_shap.resolve_nsamples(nsamples, n_players, len(data.rows), len(background.rows))
    branch, plans = _ours_branch(model_box, data, background, budget, seed, workers, batch_size, players)
    _drive([branch], lambda name, amount: None)
    outputs = ray.get(outputs_ref)
    for plan, row_index in plans.values():
        n_varying, n_outputs = len(plan.varying), outputs["fx"].shape[1]
        kernel_shap.check_plan_fits(
            plan.n_coalitions, n_varying, plan.n_features, len(row_index), n_outputs, exact=plan.exact
        )
    return _solve_ours(branch, plans, outputs, link, len(data.rows), n_players)


def _cluster_cpus() -> int:
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return int(resources.get("CPU", 1))


def _alive_nodes() -> list[dict[str, Any]]:
    """The Ray nodes alive now: id, IP and CPUs of each."""
    return [
        {"id": node["NodeID"], "ip": node["NodeManagerAddress"], "cpus": int(node["Resources"].get("CPU", 0))}
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node["Alive"]
    ]


@ray.remote(num_cpus=0, max_retries=0)
def node_alive_step() -> bool:
    return True


def _lost_nodes(started: list[dict[str, Any]], timeout: float = NODE_CHECK_SECONDS) -> list[dict[str, Any]]:
    """The nodes of ``started`` that died: declared dead by Ray, or unable to run a no-op.

    Ray declares a node dead only once its health checks have failed for a while, and a run
    can end sooner; so every other node it still counts alive gets a no-op task pinned to it
    (a check, not work). A dead node's no-op fails once Ray declares it dead, or times out.
    """
    here = ray.get_runtime_context().get_node_id()  # the driver's: alive, as we are
    alive = {node["id"] for node in _alive_nodes()}
    probes: dict[Ref, str] = {}
    for node_id in (alive & {node["id"] for node in started}) - {here}:
        pinned = NodeAffinitySchedulingStrategy(node_id, soft=False)
        probes[node_alive_step.options(scheduling_strategy=pinned).remote()] = node_id
    answered: list[Ref] = []
    if probes:
        answered, _ = ray.wait(list(probes), num_returns=len(probes), timeout=timeout)
    responsive = {here}
    for ref in answered:
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            continue
        responsive.add(probes[ref])
    return [{"id": node["id"], "ip": node["ip"]} for node in started if node["id"] not in responsive]


def _init_ray(config: JobConfig, reporter: Reporter) -> bool:
    """Join the cluster the job was submitted to, or start a local instance. True if we started it."""
    if ray.is_initialized():
        return False
    if config.ray_address:
        ray.init(address=config.ray_address, logging_level=logging.WARNING)
        return True
    # Joins the cluster named by RAY_ADDRESS (set by the Jobs API), else starts one here.
    joining = "RAY_ADDRESS" in os.environ
    if not joining:
        cpus = config.cpus or os.cpu_count()
        reporter.info(f"Starting a local Ray instance with {cpus} CPUs (a few seconds)...")
    # Ray's start-up notices (token auth on, a local instance started) are not the user's concern
    # on a local run; real warnings after start-up still show. --cpus sizes only a local instance
    # (Ray refuses num_cpus when joining a cluster).
    # address="local": always a new instance, never whatever cluster `ray start` last made on
    # this machine (ray.init() alone would join that one).
    if joining:
        ray.init(include_dashboard=False, logging_level=logging.ERROR)
    else:
        ray.init(address="local", num_cpus=config.cpus, include_dashboard=False, logging_level=logging.ERROR)
    logging.getLogger("ray").setLevel(logging.WARNING)
    return True


def run_job(config: JobConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run the whole DAG; write results/<run-id>/; return the summary. Raises JobError."""
    reporter = reporter or Reporter()
    source = etl.resolve_source(config.data)
    precheck.check_job(config)  # data, groups and plan size: milliseconds, before Ray starts
    started_ray = _init_ray(config, reporter)
    try:
        return _run_dag(config, source, reporter)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, JobError):
            raise cause from None  # the user needs the app's message, not Ray's wrapping
        raise
    except _LOST as err:
        raise JobError(
            f"Ray lost workers or nodes more often than {MAX_RETRIES} retries per task cover "
            f"({type(err).__name__}: {_first_line(err)}). Check that the cluster's nodes are up "
            "(`ray status` on the head) and submit the job again."
        ) from err
    finally:
        if started_ray:
            ray.shutdown()


def _tasks(count: int) -> str:
    return f"{count} task{'' if count == 1 else 's'}"


def _first_line(err: Exception, limit: int = 200) -> str:
    line = (str(err).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class _Timings:
    rows: list[tuple[str, float, str]] = field(default_factory=list)

    def add(self, name: str, since: float, note: str = "") -> None:
        self.rows.append((name, time.perf_counter() - since, note))


@dataclass(frozen=True)
class _Prepared:
    """What the explainers need, with the large parts already in the object store."""

    info: dict[str, Any]  # the dataset as etl saw it
    model_box: list[Ref]
    model_info: dict[str, Any]
    data: model.ExplainData
    background_ref: Ref
    outputs: dict[str, Any]  # fx, fnull, classes; fnull over the weighted, merged background
    nsamples: int | str | None
    background: Background  # duplicates merged into weights: what the explainers use
    stream: _StreamPlan | None = None  # streamed runs: data holds only the first rows (the sample)


def _warm_up(
    prepared: _Prepared, workers: int, with_shap: bool, reporter: Reporter, timings: _Timings
) -> None:
    """The warm_up step: worker processes started and the model loaded before the explainers' clocks."""
    t0 = time.perf_counter()
    pids = warm_up_workers(prepared.model_box, prepared.data, workers, with_shap=with_shap)
    processes = f"{len(set(pids))} worker process{'' if len(set(pids)) == 1 else 'es'}"
    reporter.step("warm_up", f"{processes}, the model loaded in each", time.perf_counter() - t0)
    timings.add("warm_up", t0, f"{processes}, model loaded")


def _run_dag(config: JobConfig, source: str | None, reporter: Reporter) -> dict[str, Any]:
    timings = _Timings()
    prepared = _prepare(config, source, reporter, timings)
    algorithm, reason = _choose_algorithm(config, prepared)
    if algorithm != Algorithm.KERNEL:
        return _run_tree_dag(config, prepared, reporter, timings, algorithm, reason)
    n_rows, n_features = prepared.data.rows.shape
    player_spec = precheck.players(config, prepared.info["features"])
    players = None if player_spec is None else kernel_shap.player_matrix(player_spec.columns, n_features)
    n_players = n_features if players is None else len(players)
    cpus = _cluster_cpus()
    workers = config.max_tasks or cpus
    n_outputs = prepared.outputs["fx"].shape[1]
    # Streamed: each block is its own plan, so the memory budget is a block's
    plan_rows = n_rows if prepared.stream is None else max(b - a for a, b in prepared.stream.parts)
    budget = precheck.resolve_budget(
        config, prepared.nsamples, n_players, plan_rows, len(prepared.background.rows), n_outputs
    )
    nodes = _alive_nodes()
    if len(nodes) > 1:
        reporter.info(f"Explaining on {len(nodes)} Ray nodes with {cpus} CPUs.")
    if prepared.stream is not None:
        names = list(prepared.info["features"]) if player_spec is None else list(player_spec.names)
        spec = stream.BlockSpec(
            prepared.data.background,
            prepared.data.background_weights,
            budget,
            config.link,
            config.seed,
            players,
            tuple(names),
            tuple(prepared.outputs["classes"]),
        )
        return _run_stream_dag(config, prepared, spec, player_spec, reporter, timings, nodes, reason)
    _warm_up(prepared, workers, config.reference, reporter, timings)
    ours, plans, budget = _ours_rounds(config, prepared, budget, workers, players, reporter)
    if not all(plan.exact for plan, _ in plans.values()):
        exact_n = kernel_shap.exact_nsamples(n_players)
        exact_fits = kernel_shap.plan_bytes(exact_n, n_players, n_features, n_rows, n_outputs) <= (
            kernel_shap.PLAN_MEMORY_BUDGET
        )
        reporter.warn(
            f"sampling mode: {n_players} players need {exact_n:,} coalitions "
            "for exact values; values come with standard errors (shap_standard_errors.csv)"
            + (" and the verdict allows for them." if config.reference else ".")
            + (
                " Pass --nsamples exact for exact values."
                if exact_fits
                else " Pass --tol X for errors below X, or --groups for fewer players."
            )
        )
    branches = [ours]
    if config.reference:
        branches.append(
            _reference_branch(
                prepared.model_box,
                prepared.data,
                prepared.background,
                budget,
                config.link,
                workers,
                config.seed,
                None if player_spec is None else [list(c) for c in player_spec.columns],
            )
        )
    totals = {OURS: sum(u for _, u, _ in ours.pending), REFERENCE: n_rows}
    with reporter.progress({b.name: totals[b.name] for b in branches if b.pending}) as advance:
        _drive(branches, advance)
    nodes_lost = _lost_nodes(nodes)
    explanation = _solve_ours(ours, plans, prepared.outputs, config.link, n_rows, n_players)
    ours.finished = ours.finished or time.perf_counter()
    for branch in branches:
        concurrently = ", concurrently" if len(branches) > 1 else ""
        note = f"{branch.cpu_seconds:.2f} CPU s in {_tasks(len(branch.done))}{concurrently}"
        timings.rows.append((branch.name, (branch.finished or time.perf_counter()) - branch.started, note))

    t0 = time.perf_counter()
    names = list(prepared.info["features"]) if player_spec is None else list(player_spec.names)
    comparison, ref_values = _compare(config, prepared, explanation, branches[1:], players, names)
    timings.add("compare_results", t0)

    out_dir = Path(config.output_dir) / (config.run_id or new_run_id())
    cluster = {"cpus": cpus, "nodes": nodes, "nodes_lost": nodes_lost}
    summary = _summary(config, out_dir.name, cluster, prepared, explanation, comparison, timings, branches)
    summary |= _kernel_fields(config, prepared, player_spec, names, reason)
    linked = config.link.apply(prepared.outputs["fx"])
    _write_results(out_dir, summary, prepared, explanation, ref_values, linked, names)
    reporter.summary(
        timings.rows,
        _verdict(comparison),
        comparison.match,
        str(out_dir),
        nodes_lost=[node["ip"] for node in nodes_lost],
        reference=config.reference,
    )
    if not comparison.match:
        raise ExplanationsDisagreeError(_disagreement(comparison, out_dir / "summary.json"))
    return summary


def _ours_rounds(
    config: JobConfig,
    prepared: _Prepared,
    budget: int | None,
    workers: int,
    players: np.ndarray | None,
    reporter: Reporter,
) -> tuple[_Branch, dict[tuple[int, ...], tuple[kernel_shap.CoalitionPlan, np.ndarray]], int | None]:
    """Our branch, ready to drive; with --tol, the rounds of convergence-driven sampling run
    here first (each doubles the seeded coalitions and re-evaluates its plan, so the total cost
    stays under twice the last round's) and the branch returned is the last, already done."""

    def branch_for(
        n: int | None,
    ) -> tuple[_Branch, dict[tuple[int, ...], tuple[kernel_shap.CoalitionPlan, np.ndarray]]]:
        return _ours_branch(
            prepared.model_box,
            prepared.data,
            prepared.background,
            n,
            config.seed,
            workers,
            config.batch_size,
            players,
        )

    ours, plans = branch_for(budget)
    if config.tol is None or all(plan.exact for plan, _ in plans.values()):
        return ours, plans, budget
    n_rows, n_players = (
        prepared.data.rows.shape[0],
        (prepared.data.rows.shape[1] if players is None else len(players)),
    )
    n_outputs = prepared.outputs["fx"].shape[1]
    while True:
        _drive([ours], lambda name, amount: None)
        explanation = _solve_ours(ours, plans, prepared.outputs, config.link, n_rows, n_players)
        largest = (
            float(np.max(explanation.standard_errors, initial=0.0))
            if explanation.standard_errors is not None
            else 0.0
        )
        n_now = explanation.n_coalitions
        reporter.info(f"--tol {config.tol:g}: {n_now} coalitions, largest standard error {largest:.3g}")
        if explanation.exact or largest <= config.tol:
            return ours, plans, n_now
        if n_now >= kernel_shap.MAX_TOL_NSAMPLES:
            reporter.warn(
                f"--tol {config.tol:g} not reached: stopped at the cap of "
                f"{kernel_shap.MAX_TOL_NSAMPLES} coalitions with a largest standard error of {largest:.3g}."
            )
            return ours, plans, n_now
        n_next = min(2 * n_now, kernel_shap.MAX_TOL_NSAMPLES)
        precheck.resolve_budget(config, n_next, n_players, n_rows, len(prepared.background.rows), n_outputs)
        ours, plans = branch_for(n_next)


def _kernel_fields(
    config: JobConfig, prepared: _Prepared, player_spec: Players | None, names: list[str], reason: str
) -> dict[str, Any]:
    """The kernel path's own summary keys, the same for in-memory and streamed runs."""
    return {
        "players": names,
        "groups": None if player_spec is None else player_spec.groups,
        "tol": config.tol,
        "background_weights": config.background_weights,
        "background_distinct": len(prepared.background.rows),
        "algorithm": "kernel",
        "algorithm_reason": reason,
    }


def _reference_constant(prepared: _Prepared, players: np.ndarray | None, names: list[str]) -> dict[str, str]:
    """Players shap's np.allclose rule zeroes though they vary, with the reason."""
    disputed = kernel_shap.reference_constant_players(prepared.data.rows, prepared.background.rows, players)
    row_ids = prepared.data.row_ids
    return {
        names[p]: (
            f"in rows {[int(row_ids[r]) for r in rows][:10]} its values are within np.allclose's tolerance "
            "(rtol 1e-5, atol 1e-8) of every background value but not equal to all of them, so shap "
            "treats it as constant and gives it 0; ours treats it as varying"
        )
        for p, rows in disputed.items()
    }


def _compare(
    config: JobConfig,
    prepared: _Prepared,
    explanation: kernel_shap.Explanation,
    reference_branches: list[_Branch],
    players: np.ndarray | None = None,
    names: list[str] | None = None,
) -> tuple[compare.Comparison | compare.AdditivityCheck, np.ndarray | None]:
    """Ours against the reference's values (returned too), or ours alone if it was skipped."""
    outputs = config.link.apply(prepared.outputs["fx"])
    if not reference_branches:
        check = compare.check_ours(explanation.values, explanation.expected_value, outputs, config.tolerance)
        return check, None
    (reference,) = reference_branches
    ref_values = np.concatenate([reference.done[k][0] for k in sorted(reference.done)])
    ref_values = ref_values.reshape(explanation.values.shape[0], explanation.values.shape[1], -1)
    ref_expected = np.atleast_1d(next(iter(reference.done.values()))[1])
    comparison = compare.compare_results(
        explanation.values,
        explanation.expected_value,
        ref_values,
        ref_expected,
        outputs,
        config.tolerance,
        standard_errors=explanation.standard_errors,
        reference_constant=_reference_constant(prepared, players, names or list(prepared.info["features"])),
    )
    return comparison, ref_values


def _write_results(
    out_dir: Path,
    summary: dict[str, Any],
    prepared: _Prepared,
    explanation: kernel_shap.Explanation,
    ref_values: np.ndarray | None,
    outputs: np.ndarray,
    names: list[str] | None = None,
) -> None:
    """The CSVs (the reference's only if it ran; standard errors in sampling mode), the
    explanation file for shap, the plots, then summary.json with their time. ``names``: one per
    player (G); ``outputs`` (R, K): the model's output in the explanation's link space."""
    t0 = time.perf_counter()
    names = names or list(prepared.info["features"])
    rows = results.ExplainedRows(
        row_ids=prepared.data.row_ids,
        data_lines=results.data_lines_of(prepared.data.row_ids, from_file=prepared.info["csv_lines"]),
        features=prepared.data.rows,
        feature_names=list(prepared.info["features"]),
        labels=prepared.data.labels,
        outputs=np.asarray(outputs, dtype=np.float64),
        expected_value=np.asarray(explanation.expected_value, dtype=np.float64).reshape(-1),
        class_names=prepared.outputs["classes"],
        codec=prepared.info["codec"],
    )
    tables = {"shap_values.csv": explanation.values}
    if explanation.standard_errors is not None:
        tables["shap_standard_errors.csv"] = explanation.standard_errors
        summary["standard_errors"] = "shap_standard_errors.csv"
    if ref_values is not None:
        tables["reference_shap_values.csv"] = ref_values
    written: list[str] = []
    for file_name, values in tables.items():
        written += results.write_values(out_dir / file_name, results.values_frame(values, rows, names))
    results.write_explanation(
        out_dir / "explanation.npz", explanation.values, rows, names, explanation.standard_errors
    )
    summary["files"] = sorted(
        [*written, "explanation.npz", *results.write_plots(out_dir, explanation.values, rows, names)]
    )
    summary["wall_seconds"]["write_results"] = time.perf_counter() - t0
    results.write_summary(out_dir / "summary.json", summary)


def _verdict(comparison: compare.Comparison | compare.AdditivityCheck) -> str:
    tolerance = f"(tolerance {comparison.tolerance:g})"
    if isinstance(comparison, compare.AdditivityCheck):
        return (
            f"Verdict: {comparison.verdict} — reference skipped (--no-reference), "
            f"additivity error {comparison.additivity_error_ours:.3g} {tolerance}"
        )
    sampled = (
        ""
        if comparison.standard_error_z is None
        else f", sampling mode: each difference within tolerance + {comparison.standard_error_z:.2f} x "
        f"sqrt(se_ours^2 + se_shap^2), largest |diff|/se {comparison.max_z or 0.0:.2f}"
    )
    reasons = "".join(f"\n  {reason}" for reason in comparison.reasons)
    return (
        f"Verdict: {comparison.verdict} — max |ours - shap| = {comparison.max_abs_diff:.3g}, "
        f"additivity error {comparison.additivity_error_ours:.3g} {tolerance}{sampled}{reasons}"
    )


def _disagreement(comparison: compare.Comparison | compare.AdditivityCheck, summary_path: Path) -> str:
    tolerance = f"(tolerance {comparison.tolerance:g})"
    if isinstance(comparison, compare.AdditivityCheck):
        return (
            f"our KernelSHAP values break additivity by up to {comparison.additivity_error_ours:.3g} "
            f"{tolerance}; see {summary_path}"
        )
    reasons = f" ({'; '.join(comparison.reasons)})" if comparison.reasons else ""
    return (
        f"our KernelSHAP and shap.KernelExplainer differ by up to {comparison.max_abs_diff:.3g} "
        f"{tolerance}{reasons}; see {summary_path}"
    )


def _prepare(config: JobConfig, source: str | None, reporter: Reporter, timings: _Timings) -> _Prepared:
    """etl -> split -> create_model -> get_data_to_explain, plus f(x) and E[f] once."""
    t0 = time.perf_counter()
    dataset_ref, info_ref = cast(
        tuple[Ref, Ref],
        etl_step.remote(
            source,
            config.label or DEFAULT_LABEL,
            precheck.read_columns(config),
            precheck.label_required(config),
            config.background_weights,
        ),
    )
    info: dict[str, Any] = ray.get(info_ref)
    if info["notice"]:
        reporter.notice(info["notice"])
    detail = f"{info['rows']} rows x {len(info['features'])} features from {info['source']}"
    reporter.step("etl", detail, info["seconds"])
    timings.add("etl", t0)
    nsamples = config.nsamples
    if nsamples is None and info["bundled"]:
        nsamples = EXACT  # the demo data has 13 features: exact keeps the comparison meaningful
        reporter.notice("using exact enumeration (--nsamples exact) for the bundled dataset.")

    t0 = time.perf_counter()
    split_ref = split_step.remote(dataset_ref, config.test_size, config.seed, config.task)
    if config.model is not None:
        model_ref, model_info = _load_model(dataset_ref, split_ref, config, reporter)
    else:
        model_ref, model_info = _create_model(split_ref, config, reporter)
    # The driver's own copy lives on the head with the driver: a worker node lost later cannot
    # take the model with it and make Ray re-run etl, split and training from lineage mid-run.
    model_ref = ray.put(ray.get(model_ref))
    timings.add("create_model", t0, f"{model_info['trees']} trees" if model_info["trees"] else "loaded")

    t0 = time.perf_counter()
    plan = _plan_stream(config, info, split_ref)
    if plan is None:
        data_ref = get_data_to_explain_step.remote(split_ref, config.rows, config.background, config.seed)
        data: model.ExplainData = ray.get(data_ref)
        if config.explain:  # the rows' data_line is their line in that file, when it is a CSV
            info["csv_lines"] = "://" in config.explain or not etl.is_local_parquet(config.explain)
        if config.explain or config.background_data:
            data = rows_from_files(config, ray.get(dataset_ref), data)
    else:
        data = _stream_sample(config, plan, split_ref, dataset_ref)
        info["csv_lines"] = plan.source.csv_lines
    background_ref = ray.put(data.background)
    background = Background.put(data.background, data.background_weights)
    model_box = [model_ref]
    outputs: dict[str, Any] = ray.get(
        outputs_step.remote(model_box, data.rows, background.ref, background.weights)
    )
    detail = f"{len(data.rows)} test rows, {len(data.background)} background rows"
    if plan is not None:
        detail = (
            f"{plan.stop - plan.start:,} rows to stream in {len(plan.parts)} parts of up to "
            f"{plan.parts[0][1] - plan.parts[0][0]:,}, {len(data.background)} background rows"
        )
    if len(background.rows) < len(data.background):
        detail += f" ({len(background.rows)} distinct, duplicates merged into weights)"
    reporter.step("get_data_to_explain", detail, time.perf_counter() - t0)
    timings.add("get_data_to_explain", t0)
    return _Prepared(info, model_box, model_info, data, background_ref, outputs, nsamples, background, plan)


def _summary(
    config: JobConfig,
    run_id: str,
    cluster: dict[str, Any],
    prepared: _Prepared,
    explanation: kernel_shap.Explanation,
    comparison: compare.Comparison | compare.AdditivityCheck,
    timings: _Timings,
    branches: list[_Branch],
) -> dict[str, Any]:
    """summary.json; the reference's entries are absent when it was skipped (--no-reference)."""
    keys = {OURS: "ours", REFERENCE: "reference"}
    return {
        **_summary_of_run(config, run_id, prepared, timings),
        "nsamples": explanation.n_coalitions,
        "exact": explanation.exact,
        "model": prepared.model_info,
        "expected_value": explanation.expected_value.tolist(),
        "cpus": cluster["cpus"],  # the cluster's, when the explainers started
        "nodes": cluster["nodes"],  # alive when the explainers started: id, ip, cpus
        "nodes_lost": cluster["nodes_lost"],  # of those, dead when they finished: id, ip
        "workers": branches[0].window,
        "tasks": {keys[b.name]: len(b.done) for b in branches},
        "cpu_seconds": {keys[b.name]: b.cpu_seconds for b in branches},
        "comparison": comparison.to_dict(),
    }


def _summary_of_run(config: JobConfig, run_id: str, prepared: _Prepared, timings: _Timings) -> dict[str, Any]:
    """The part of summary.json every algorithm writes: the data, the rows, the settings, versions."""
    info, data = prepared.info, prepared.data
    return {
        "run_id": run_id,
        "data": info["source"],
        "label": info["label"],
        "rows": len(data.rows),
        "row_ids": data.row_ids.tolist(),
        "features": len(info["features"]),
        "feature_names": info["features"],
        "classes": prepared.outputs["classes"],
        "background": len(data.background),
        "link": config.link.value,
        "wall_seconds": {name: seconds for name, seconds, _ in timings.rows},
        "seed": config.seed,
        "test_size": config.test_size,
        "ray_version": ray.__version__,
        "python": platform.python_version(),
        "versions": results.versions(),
    }


def rows_from_files(config: JobConfig, dataset: etl.Dataset, data: model.ExplainData) -> model.ExplainData:
    """--explain: the first --rows rows of that file (row ids: 0-based in it); --background-data: a
    seeded sample of --background rows of that file (all when it has fewer)."""
    rows, row_ids, background = data.rows, data.row_ids, data.background
    if config.explain:
        codes = etl.load_rows(config.explain, dataset, "--explain")
        try:
            start, stop = row_range(config.rows, len(codes))
        except OptionError as err:
            raise DataError(f"{config.explain}: --rows {err}.") from None
        rows, row_ids = codes[start:stop], np.arange(start, stop)
    if config.background_data:
        codes = etl.load_rows(config.background_data, dataset, "--background-data")
        if config.background < len(codes):
            rng = np.random.default_rng(config.seed)
            codes = codes[np.sort(rng.choice(len(codes), size=config.background, replace=False))]
        background = codes
    return model.ExplainData(rows, row_ids, background)


def _load_model(
    dataset_ref: Ref, split_ref: Ref, config: JobConfig, reporter: Reporter
) -> tuple[Ref, dict[str, Any]]:
    assert config.model is not None
    model_ref, info_ref = cast(
        tuple[Ref, Ref], load_model_step.remote(config.model, config.trust_model, dataset_ref, split_ref)
    )
    info: dict[str, Any] = ray.get(info_ref)
    score = "" if info["score"] is None else f", held-out {_score_name(info['task'])} {info['score']:.4f}"
    reporter.step(
        "create_model", f"{info['type']} from {config.model} ({info['task']}{score})", info["seconds"]
    )
    return model_ref, info


def _score_name(task: str) -> str:
    return "R^2" if task == Task.REGRESSION else "accuracy"


def _create_model(split_ref: Ref, config: JobConfig, reporter: Reporter) -> tuple[Ref, dict[str, Any]]:
    """One forest, or the sweep: every candidate trained in parallel on the same split object."""
    sizes = config.sweep or (config.trees,)
    label = config.label or DEFAULT_LABEL
    candidates = [
        cast(tuple[Ref, Ref], create_model_step.remote(split_ref, trees, config.seed, label))
        for trees in sizes
    ]
    infos = ray.get([info for _, info in candidates])
    best = model.pick_best([(i["trees"], i["score"]) for i in infos])
    if config.sweep:
        reporter.candidates([(i["trees"], i["score"], i["seconds"]) for i in infos], infos[best]["trees"])
    chosen = infos[best]
    inferred = "" if config.task else " (inferred from the label; --task to choose)"
    reporter.step(
        "create_model",
        f"RandomForest, {chosen['trees']} trees, task {chosen['task']}{inferred}, "
        f"held-out {_score_name(chosen['task'])} {chosen['score']:.4f}",
        chosen["seconds"],
    )
    return candidates[best][0], infos[best]


# ------------------------------------------------------------------ the tree paths (issue 11)
TREE = "exact tree SHAP"
TREE_PATH_DEPENDENT = "shap.TreeExplainer path-dependent"
TREE_CHECK = "exact KernelSHAP check"
TREE_CHECK_ROWS = 4  # seeded sample of rows the exact kernel path recomputes on every tree run
TREE_CHECK_MAX_FEATURES = 16  # exact KernelSHAP needs 2^M - 2 coalitions: beyond this, no check


def _choose_algorithm(config: JobConfig, prepared: _Prepared) -> tuple[str, str]:
    """The algorithm that runs and why; raises UnsupportedModelError for tree on other models."""
    fitted = _trees_of(ray.get(prepared.model_box[0]))
    if config.algorithm == Algorithm.AUTO and config.link is not Link.IDENTITY:
        return (
            "kernel",
            f"auto: --link {config.link} needs KernelSHAP (the tree path explains the raw output)",
        )
    if config.algorithm == Algorithm.AUTO and (config.groups or config.background_weights):
        return "kernel", "auto: --groups and --background-weights need KernelSHAP"
    return tree_shap.choose_algorithm(str(config.algorithm), fitted)


def _trees_of(fitted: Any) -> Any:
    """The estimator inside the user's --model when its columns are all floats (their codes are
    their values, so the trees see exactly what the model does); else the model as it is."""
    if isinstance(fitted, ModelFunction) and (fitted.codec is None or fitted.codec.all_float):
        return fitted.estimator
    return fitted


@ray.remote(num_returns=2, max_retries=MAX_RETRIES, retry_exceptions=False)
def tree_prepare_step(
    model_box: list[Ref], background: np.ndarray
) -> tuple[tree_shap.TreeModel, tree_shap.BackgroundStats]:
    tree_model = tree_shap.prepare_model(_trees_of(_resolve(model_box)), background)
    return tree_model, tree_shap.background_stats(tree_model, background)


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
def tree_block_step(
    tree_box: list[Ref], stats_box: list[Ref], rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    start = time.perf_counter()
    tree_model, stats = _resolve(tree_box), _resolve(stats_box)
    values, outputs = tree_shap.explain_rows(tree_model, stats, rows)
    return values, outputs, time.perf_counter() - start


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
def tree_path_dependent_step(model_box: list[Ref], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    import shap

    start = time.perf_counter()
    fitted = _trees_of(_resolve(model_box))
    with _single_threaded():
        explainer = shap.TreeExplainer(fitted, feature_perturbation="tree_path_dependent")
        x = rows.astype(model.input_dtype(fitted))  # the model's own input dtype
        values = np.asarray(explainer.shap_values(x, check_additivity=False), dtype=np.float64)
    expected = np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))
    values = values.reshape(len(rows), rows.shape[1], -1)
    return values, np.broadcast_to(expected, (len(rows), len(expected))).copy(), time.perf_counter() - start


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
def tree_check_step(
    model_box: list[Ref], rows: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact KernelSHAP (all 2^M - 2 coalitions) of the sampled rows, the tree path's reference."""
    start = time.perf_counter()
    fitted = _trees_of(_resolve(model_box))
    predict, _ = tree_shap.model_output(fitted)
    with _single_threaded():
        check = kernel_shap.explain(
            predict,
            rows,
            background,
            nsamples=kernel_shap.exact_nsamples(rows.shape[1]),
            dtype=model.input_dtype(fitted),
        )
    return check.values, check.expected_value, time.perf_counter() - start


def run_tree_shap(
    model_ref: Ref,
    rows: np.ndarray,
    background: np.ndarray,
    *,
    workers: int | None = None,
    batch_size: int | None = None,
    advance: Callable[[str, int], None] | None = None,
) -> tuple[tree_shap.TreeExplanation, _Branch]:
    """The exact tree path over a running Ray instance: the model's trees and the background's
    per-leaf statistics go into the object store once, blocks of rows run as tasks."""
    workers = workers or _cluster_cpus()
    model_box = [model_ref]
    tree_ref, stats_ref = cast(tuple[Ref, Ref], tree_prepare_step.remote(model_box, ray.put(background)))
    tree_box, stats_box = [tree_ref], [stats_ref]
    pending: list[tuple[Callable[[], Ref], int, Any]] = []
    for block in tree_shap.row_blocks(len(rows), workers, batch_size):
        part = rows[block]

        def submit(part: np.ndarray = part) -> Ref:
            return tree_block_step.remote(tree_box, stats_box, part)

        pending.append((submit, len(part), block.start))
    branch = _Branch(TREE, pending, workers)
    _drive([branch], advance or (lambda name, amount: None))
    keys = sorted(branch.done)
    values = np.concatenate([branch.done[k][0] for k in keys]) if keys else np.zeros((0, rows.shape[1], 1))
    outputs = np.concatenate([branch.done[k][1] for k in keys]) if keys else np.zeros((0, 1))
    tree_model, stats = ray.get([tree_ref, stats_ref])
    explanation = tree_shap.TreeExplanation(values, stats.expected_value, outputs, tree_model.ensemble.output)
    return explanation, branch


def _run_tree_dag(
    config: JobConfig, prepared: _Prepared, reporter: Reporter, timings: _Timings, algorithm: str, reason: str
) -> dict[str, Any]:
    """``--algorithm tree`` (checked against exact KernelSHAP on a seeded sample of rows) or
    ``tree-path-dependent`` (shap's, additivity only): explain, check, write results."""
    data = prepared.data
    n_rows, n_features = data.rows.shape
    cpus = _cluster_cpus()
    workers = config.max_tasks or cpus
    nodes = _alive_nodes()
    reporter.info(f"Algorithm: {algorithm} ({reason}).")
    if prepared.stream is not None:
        spec = stream.BlockSpec(
            data.background,
            data.background_weights,
            None,
            config.link,
            config.seed,
            None,
            tuple(prepared.info["features"]),
            tuple(prepared.outputs["classes"]),
        )
        return _run_stream_dag(config, prepared, spec, None, reporter, timings, nodes, reason, algorithm)
    checked = np.sort(
        np.random.default_rng(config.seed).choice(n_rows, size=min(TREE_CHECK_ROWS, n_rows), replace=False)
    )
    check_ref: Ref | None = None
    t_check = time.perf_counter()
    if algorithm == "tree" and n_features <= TREE_CHECK_MAX_FEATURES:
        check_ref = tree_check_step.remote(prepared.model_box, data.rows[checked], prepared.background_ref)
    t0 = time.perf_counter()
    with reporter.progress({TREE if algorithm == "tree" else TREE_PATH_DEPENDENT: n_rows}) as advance:
        if algorithm == "tree":
            explanation, branch = run_tree_shap(
                prepared.model_box[0],
                data.rows,
                data.background,
                workers=workers,
                batch_size=config.batch_size,
                advance=advance,
            )
            values, expected, outputs = explanation.values, explanation.expected_value, explanation.outputs
            explains = explanation.output
        else:
            values, expected, branch = _path_dependent(prepared, workers, config.batch_size, advance)
            outputs = np.asarray(prepared.outputs["fx"])
            explains = "shap's path-dependent TreeSHAP: a different quantity (no background), not checked"
    note = f"{branch.cpu_seconds:.2f} CPU s in {_tasks(len(branch.done))}"
    timings.rows.append((branch.name, time.perf_counter() - t0, note))

    check: dict[str, Any]
    if check_ref is not None:
        ref_values, ref_expected, check_seconds = ray.get(check_ref)
        timings.rows.append((TREE_CHECK, time.perf_counter() - t_check, f"{check_seconds:.2f} CPU s, 1 task"))
        comparison = compare.compare_results(
            values[checked], expected, ref_values, ref_expected, outputs[checked], config.tolerance
        )
        check = {**comparison.to_dict(), "against": "exact KernelSHAP", "checked_rows": checked.tolist()}
    else:
        why = (
            "tree-path-dependent is a different quantity from KernelSHAP's"
            if algorithm != "tree"
            else f"{n_features} features: exact KernelSHAP needs 2^{n_features} - 2 coalitions a row"
        )
        comparison_alone = compare.check_ours(values, expected, outputs, config.tolerance)
        check = {**comparison_alone.to_dict(), "reason": f"not checked against KernelSHAP: {why}"}
    additivity = compare.additivity_error(values, expected, outputs)
    check["additivity_error_all_rows"] = additivity
    match = bool(check["match"]) and additivity <= config.tolerance
    check["match"] = match

    out_dir = Path(config.output_dir) / (config.run_id or new_run_id())
    summary = _tree_summary(config, out_dir.name, prepared, cpus, nodes, workers, values, expected, timings)
    summary |= {"algorithm": algorithm, "algorithm_reason": reason, "explains": explains, "check": check}
    summary["comparison"] = check
    explained = kernel_shap.Explanation(values, expected, exact=algorithm == "tree", n_coalitions=0)
    _write_results(out_dir, summary, prepared, explained, None, outputs)
    verdict = _tree_verdict(check, algorithm, len(checked) if check_ref is not None else 0)
    reporter.summary(timings.rows, verdict, match, str(out_dir), reference=False)
    if not match:
        raise ExplanationsDisagreeError(f"{verdict}; see {out_dir / 'summary.json'}")
    return summary


def _path_dependent(
    prepared: _Prepared, workers: int, batch_size: int | None, advance: Callable[[str, int], None]
) -> tuple[np.ndarray, np.ndarray, _Branch]:
    rows = prepared.data.rows
    pending: list[tuple[Callable[[], Ref], int, Any]] = []
    for block in tree_shap.row_blocks(len(rows), workers, batch_size):
        part = rows[block]

        def submit(part: np.ndarray = part) -> Ref:
            return tree_path_dependent_step.remote(prepared.model_box, part)

        pending.append((submit, len(part), block.start))
    branch = _Branch(TREE_PATH_DEPENDENT, pending, workers)
    _drive([branch], advance)
    keys = sorted(branch.done)
    values = np.concatenate([branch.done[k][0] for k in keys])
    return values, branch.done[keys[0]][1][0], branch


def _tree_verdict(check: dict[str, Any], algorithm: str, n_checked: int) -> str:
    tolerance = f"(tolerance {check['tolerance']:g})"
    state = "match" if check["match"] else "MISMATCH"
    additivity = f"additivity error {check['additivity_error_all_rows']:.3g}"
    if n_checked:
        return (
            f"Verdict: {state} — tree path vs exact KernelSHAP on {n_checked} sampled rows: "
            f"max diff {check['max_abs_diff']:.3g}, {additivity} {tolerance}"
        )
    return f"Verdict: {state} — {algorithm}, {check['reason']}; {additivity} {tolerance}"


def _tree_summary(
    config: JobConfig,
    run_id: str,
    prepared: _Prepared,
    cpus: int,
    nodes: list[dict[str, Any]],
    workers: int,
    values: np.ndarray,
    expected: np.ndarray,
    timings: _Timings,
) -> dict[str, Any]:
    return {
        **_summary_of_run(config, run_id, prepared, timings),
        "model": {"type": type(ray.get(prepared.model_box[0])).__name__, **prepared.model_info},
        "expected_value": expected.tolist(),
        "cpus": cpus,
        "nodes": nodes,
        "nodes_lost": _lost_nodes(nodes),
        "workers": workers,
    }


# ------------------------------------------------------------------ streaming (issue 10)
@dataclass(frozen=True)
class _StreamPlan:
    """A streamed run's rows: [start, stop) of ``source`` in ``parts`` (row ranges, one part each).
    ``split_box``: the data's split in the object store when the rows are its test rows."""

    source: stream.RowSource
    split_box: list[Ref] | None
    start: int
    stop: int
    parts: list[tuple[int, int]]


@ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)
def test_rows_step(split: model.Split) -> int:
    return len(split.x_test)


@ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)
def read_rows_step(
    source: stream.RowSource, split_box: list[Ref] | None, start: int, stop: int
) -> results.BlockRows:
    if split_box is not None:
        source = replace(source, split=ray.get(split_box[0]))
    return source.read(start, stop)


def _plan_stream(config: JobConfig, info: dict[str, Any], split_ref: Ref) -> _StreamPlan | None:
    """The stream plan when the run explains more than stream.STREAM_MIN_ROWS rows with
    KernelSHAP (from a local --explain file or the data's test split), else None (in memory)."""
    if config.algorithm not in (Algorithm.KERNEL, Algorithm.TREE) or config.tol is not None:
        return None
    names = tuple(str(n) for n in info["features"])
    box: list[Ref] | None = None
    if config.explain:
        if "://" in config.explain:
            return None
        try:
            start, stop = row_range(config.rows, etl.count_rows(config.explain))
        except OptionError as err:
            raise DataError(f"{config.explain}: --rows {err}.") from None
        csv_lines = not etl.is_local_parquet(config.explain)
        source = stream.RowSource(names, info["codec"], csv_lines, path=config.explain)
    else:
        n_test = int(ray.get(test_rows_step.remote(split_ref)))
        if isinstance(config.rows, int) and config.rows > n_test:
            return None  # get_data_to_explain says why
        try:
            start, stop = row_range(config.rows, n_test)
        except OptionError:
            return None
        # the split's rows are codes already; the codec decodes them for the value: columns
        source, box = stream.RowSource(names, info["codec"], bool(info["csv_lines"])), [split_ref]
    if not stream.streams(stop - start):
        return None
    return _StreamPlan(source, box, start, stop, stream.blocks(start, stop, config.batch_size))


def _stream_sample(
    config: JobConfig, plan: _StreamPlan, split_ref: Ref, dataset_ref: Ref
) -> model.ExplainData:
    """The first stream.REFERENCE_ROWS rows (shap's comparison runs on them) and the background."""
    k = min(stream.REFERENCE_ROWS, plan.stop - plan.start)
    block: results.BlockRows = ray.get(
        read_rows_step.remote(plan.source, plan.split_box, plan.start, plan.start + k)
    )
    chosen: model.ExplainData = ray.get(
        get_data_to_explain_step.remote(split_ref, 1, config.background, config.seed)
    )
    data = model.ExplainData(
        block.codes,
        block.row_ids,
        chosen.background,
        background_weights=chosen.background_weights,
        labels=block.labels,
    )
    if config.background_data:
        data = replace(
            rows_from_files(replace(config, explain=None), ray.get(dataset_ref), data), labels=block.labels
        )
    return data


class _ExplainParts:
    """Ray Data's actor for streamed KernelSHAP: the model, the split (when the rows are its test
    rows) and the coalition plans are loaded once per worker process; each call explains one
    row range and writes its part (or reads back the part an earlier run wrote)."""

    def __init__(
        self,
        model_box: list[Ref],
        plan: _StreamPlan,
        spec: stream.BlockSpec,
        out_dir: str,
        tree_box: list[Ref] | None = None,
    ):
        fitted = ray.get(model_box[0])
        split = None if plan.split_box is None else ray.get(plan.split_box[0])
        self.source = plan.source if split is None else replace(plan.source, split=split)
        self.predict, self.dtype = fitted.predict_proba, model.input_dtype(fitted)
        self.explainer: stream.BlockExplainer | stream.TreeBlockExplainer = stream.BlockExplainer(spec)
        if tree_box is not None:  # the exact tree path: trees and background statistics, once
            self.explainer = stream.TreeBlockExplainer(spec, *ray.get(tree_box))
        self.out_dir = Path(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        with _single_threaded():
            for a, b in zip(batch["start"].tolist(), batch["stop"].tolist(), strict=True):
                try:
                    part = stream.explain_part(
                        self.out_dir, self.source, self.explainer, self.predict, self.dtype, a, b
                    )
                except JobError as err:  # the user's message (a bad line), not Ray Data's wrapping
                    rows.append({"start": a, "stop": b, "error": f"{type(err).__name__}: {err}"})
                    continue
                rows.append({**part.to_row(), "error": ""})
        if any(row["error"] for row in rows):
            rows = [{"start": row["start"], "stop": row["stop"], "error": row["error"]} for row in rows]
        return {key: np.asarray([row[key] for row in rows]) for key in rows[0]}


def _raised_in_worker(text: str) -> JobError:
    """The JobError a worker reported as "<class name>: <message>"."""
    from app import errors

    name, _, message = text.partition(": ")
    kind = getattr(errors, name, JobError)
    return kind(message) if isinstance(kind, type) and issubclass(kind, JobError) else JobError(message)


def _job_error(err: BaseException) -> JobError | None:
    """The JobError (e.g. a DataError naming a bad line) that Ray Data wrapped, if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, JobError):
            return current
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else (current.__cause__ or current.__context__)
    return None


def run_stream(
    model_box: list[Ref],
    plan: _StreamPlan,
    spec: stream.BlockSpec,
    out_dir: Path,
    workers: int,
    report: Callable[[str], None] = lambda line: None,
    tree_box: list[Ref] | None = None,
) -> list[stream.PartStats]:
    """Explain the plan's parts with Ray Data (an actor pool of ``workers`` processes, one part a
    call) and return each part's sums, in the order they finished; the driver holds no values.
    ``report`` gets a progress line (rows done, rows/s, time left) as parts finish, at most one per
    stream.PROGRESS_SECONDS besides the first and the last. Raises the JobError of a bad block."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    items = [{"start": a, "stop": b} for a, b in plan.parts]
    parts = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _ExplainParts,
        fn_constructor_args=(model_box, plan, spec, str(out_dir), tree_box),
        batch_size=1,
        concurrency=max(1, min(workers, len(items))),
        num_cpus=1,
        batch_format="numpy",
    )
    n_classes, n_players = len(spec.class_names), len(spec.player_names)
    total, done, computed = plan.stop - plan.start, 0, 0
    stats: list[stream.PartStats] = []
    began = last = time.perf_counter()
    try:
        for batch in parts.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["start"])):
                if batch["error"][i]:
                    raise _raised_in_worker(str(batch["error"][i]))
                part = stream.PartStats(
                    start=int(batch["start"][i]),
                    stop=int(batch["stop"][i]),
                    computed=bool(batch["computed"][i]),
                    seconds=float(batch["seconds"][i]),
                    abs_sum=np.asarray(batch["abs_sum"][i], dtype=np.float64).reshape(n_classes, n_players),
                    additivity=float(batch["additivity"][i]),
                    exact=bool(batch["exact"][i]),
                    n_coalitions=int(batch["n_coalitions"][i]),
                )
                stats.append(part)
                done += part.stop - part.start
                computed += (part.stop - part.start) if part.computed else 0
            now = time.perf_counter()
            if len(stats) == 1 or done == total or now - last >= stream.PROGRESS_SECONDS:
                report(stream.progress_line(done, total, computed, now - began))
                last = now
    except Exception as err:
        cause = _job_error(err)
        if cause is not None:
            raise cause from None
        raise
    return stats


def _run_stream_dag(
    config: JobConfig,
    prepared: _Prepared,
    spec: stream.BlockSpec,
    player_spec: Players | None,
    reporter: Reporter,
    timings: _Timings,
    nodes: list[dict[str, Any]],
    reason: str,
    algorithm: str = "kernel",
) -> dict[str, Any]:
    """KernelSHAP (or the exact tree path) over more rows than stream.STREAM_MIN_ROWS: parts
    streamed through Ray Data, then shap's comparison on the first rows (the tree path: exact
    KernelSHAP on a seeded sample of them), read back from the parts, the plots of the first
    stream.PLOT_ROWS rows and the mean |SHAP value| of all, summary.json. No CSV, no
    explanation.npz."""
    plan = prepared.stream
    assert plan is not None
    groups = None if player_spec is None else [list(c) for c in player_spec.columns]
    cpus = _cluster_cpus()
    workers = config.max_tasks or cpus
    out_dir = Path(config.output_dir) / (config.run_id or new_run_id())
    names, classes = list(spec.player_names), list(spec.class_names)
    n_classes = len(classes)
    t0 = time.perf_counter()
    tree_box = None
    if algorithm == "tree":
        tree_box = list(tree_prepare_step.remote(prepared.model_box, prepared.background_ref))
    _claim_parts(out_dir, config)
    stats = run_stream(prepared.model_box, plan, spec, out_dir, workers, reporter.info, tree_box)
    sums = stream.totals(stats)
    reused = sums.parts - sums.parts_computed
    note = (
        f"{sums.seconds:.2f} CPU s in {sums.parts} parts ({sums.parts_computed} computed, {reused} read back)"
    )
    timings.rows.append((TREE if algorithm == "tree" else OURS, time.perf_counter() - t0, note))
    first, explanation = _first_rows(out_dir, plan, len(prepared.data.rows), names, n_classes, sums)
    branches: list[_Branch] = []
    if algorithm == "tree":
        return _finish_stream_tree(
            config,
            prepared,
            plan,
            spec,
            sums,
            first,
            explanation,
            out_dir,
            reporter,
            timings,
            (cpus, nodes, workers, reason),
        )
    if config.reference:
        reference = _reference_branch(
            prepared.model_box,
            prepared.data,
            prepared.background,
            spec.nsamples,
            config.link,
            workers,
            config.seed,
            groups,
        )
        t_ref = time.perf_counter()
        with reporter.progress({REFERENCE: len(prepared.data.rows)}) as advance:
            _drive([reference], advance)
        n_first = len(prepared.data.rows)
        note = f"{reference.cpu_seconds:.2f} CPU s in {_tasks(len(reference.done))}, first {n_first} rows"
        timings.rows.append((REFERENCE, time.perf_counter() - t_ref, note))
        branches.append(reference)
    nodes_lost = _lost_nodes(nodes)
    t0 = time.perf_counter()
    comparison, ref_values = _compare(config, prepared, explanation, branches, spec.players, names)
    timings.add("compare_results", t0)

    ours = _Branch(OURS, [], workers)
    ours.done = dict.fromkeys(plan.parts)
    ours.cpu_seconds = sums.seconds
    cluster = {"cpus": cpus, "nodes": nodes, "nodes_lost": nodes_lost}
    summary = _summary(
        config, out_dir.name, cluster, prepared, explanation, comparison, timings, [ours, *branches]
    )
    sample_ids = summary.pop("row_ids")
    compared = (
        f"shap.KernelExplainer on the first {len(sample_ids)} rows only"
        if config.reference
        else "skipped (--no-reference); additivity checked on every row"
    )
    summary |= {
        "rows": sums.rows,
        "row_ids": None,  # too many to list: see streamed.row_range
        **_kernel_fields(config, prepared, player_spec, names, reason),
        "mean_abs_shap": {name: sums.mean_abs[g].tolist() for g, name in enumerate(names)},
        "additivity_error_all_rows": sums.additivity,
        "streamed": {
            **_stream_fields(config, plan, sums, compared),
            "comparison_row_ids": sample_ids,
        },
    }
    _write_stream_results(out_dir, summary, prepared, plan, sums, names)
    reporter.summary(
        timings.rows,
        _verdict(comparison),
        comparison.match,
        str(out_dir),
        nodes_lost=[node["ip"] for node in nodes_lost],
        reference=False,  # not side by side here: shap ran after ours, on the first rows only
    )
    if not comparison.match:
        raise ExplanationsDisagreeError(_disagreement(comparison, out_dir / "summary.json"))
    del ref_values
    return summary


def _write_stream_results(
    out_dir: Path,
    summary: dict[str, Any],
    prepared: _Prepared,
    plan: _StreamPlan,
    sums: stream.StreamTotals,
    names: list[str],
) -> None:
    t0 = time.perf_counter()
    classes = list(prepared.outputs["classes"])
    n_plot = min(stream.PLOT_ROWS, sums.rows)
    frame = stream.read_first_rows(out_dir, plan.parts, n_plot, len(classes))
    block: results.BlockRows = ray.get(
        read_rows_step.remote(plan.source, plan.split_box, plan.start, plan.start + n_plot)
    )
    outputs = frame["model_output"].to_numpy().reshape(n_plot, len(classes))
    expected = frame["expected_value"].to_numpy()[: len(classes)]
    rows = block.explained(prepared.info["features"], outputs, expected, classes, prepared.info["codec"])
    values = stream.values_of(frame, names, len(classes))
    plots = results.write_plots(out_dir, values, rows, names, mean_abs=sums.mean_abs, all_rows=sums.rows)
    parts = [stream.VALUES_PARTS + "/"] + ([] if sums.exact else [stream.ERRORS_PARTS + "/"])
    summary["files"] = sorted([*parts, *plots])
    if not sums.exact:
        summary["standard_errors"] = stream.ERRORS_PARTS
    summary["wall_seconds"]["write_results"] = time.perf_counter() - t0
    results.write_summary(out_dir / "summary.json", summary)


def _stream_fields(
    config: JobConfig, plan: _StreamPlan, sums: stream.StreamTotals, compared: str
) -> dict[str, Any]:
    return {
        "rule": f"more than {stream.STREAM_MIN_ROWS:,} rows to explain",
        "row_range": [plan.start, plan.stop],
        "parts": sums.parts,
        "parts_computed": sums.parts_computed,
        "parts_read_back": sums.parts - sums.parts_computed,
        "rows_per_part": plan.parts[0][1] - plan.parts[0][0],
        "values": stream.VALUES_PARTS,
        "mean_abs_shap": "over every row, from per-part sums",
        "comparison": compared,
        "plots": f"bar chart over every row; beeswarm and waterfall of the first "
        f"{min(stream.PLOT_ROWS, sums.rows):,} rows",
    }


def _finish_stream_tree(
    config: JobConfig,
    prepared: _Prepared,
    plan: _StreamPlan,
    spec: stream.BlockSpec,
    sums: stream.StreamTotals,
    first: Any,
    explanation: kernel_shap.Explanation,
    out_dir: Path,
    reporter: Reporter,
    timings: _Timings,
    run: tuple[int, list[dict[str, Any]], int, str],
) -> dict[str, Any]:
    """The streamed tree path's check (exact KernelSHAP on a seeded sample of the first rows, as
    the in-memory tree path does over all rows), additivity over every row, summary, plots."""
    cpus, nodes, workers, reason = run
    n_first, n_features = prepared.data.rows.shape
    outputs = first["model_output"].to_numpy().reshape(n_first, -1)
    checked = np.sort(
        np.random.default_rng(config.seed).choice(n_first, size=min(TREE_CHECK_ROWS, n_first), replace=False)
    )
    check: dict[str, Any]
    if n_features <= TREE_CHECK_MAX_FEATURES:
        t_check = time.perf_counter()
        ref_values, ref_expected, check_seconds = ray.get(
            tree_check_step.remote(prepared.model_box, prepared.data.rows[checked], prepared.background_ref)
        )
        timings.rows.append((TREE_CHECK, time.perf_counter() - t_check, f"{check_seconds:.2f} CPU s, 1 task"))
        comparison = compare.compare_results(
            explanation.values[checked], explanation.expected_value, ref_values, ref_expected,
            outputs[checked], config.tolerance,
        )  # fmt: skip
        check = {**comparison.to_dict(), "against": "exact KernelSHAP"}
        check["checked_rows"] = prepared.data.row_ids[checked].tolist()
    else:
        alone = compare.check_ours(explanation.values, explanation.expected_value, outputs, config.tolerance)
        why = f"{n_features} features: exact KernelSHAP needs 2^{n_features} - 2 coalitions a row"
        check = {**alone.to_dict(), "reason": f"not checked against KernelSHAP: {why}"}
    check["additivity_error_all_rows"] = sums.additivity
    check["match"] = bool(check["match"]) and sums.additivity <= config.tolerance
    names = list(spec.player_names)
    values, expected = explanation.values, explanation.expected_value
    summary = _tree_summary(config, out_dir.name, prepared, cpus, nodes, workers, values, expected, timings)
    sample_ids = summary.pop("row_ids")
    compared = f"exact KernelSHAP on {len(checked)} seeded rows of the first {len(sample_ids)}"
    summary |= {
        "rows": sums.rows,
        "row_ids": None,  # too many to list: see streamed.row_range
        "algorithm": "tree",
        "algorithm_reason": reason,
        "explains": tree_shap.model_output(_trees_of(ray.get(prepared.model_box[0])))[1],
        "check": check,
        "comparison": check,
        "mean_abs_shap": {name: sums.mean_abs[g].tolist() for g, name in enumerate(names)},
        "additivity_error_all_rows": sums.additivity,
        "streamed": _stream_fields(config, plan, sums, compared),
    }
    _write_stream_results(out_dir, summary, prepared, plan, sums, names)
    verdict = _tree_verdict(check, "tree", len(checked) if "against" in check else 0)
    reporter.summary(timings.rows, verdict, check["match"], str(out_dir), reference=False)
    if not check["match"]:
        raise ExplanationsDisagreeError(f"{verdict}; see {out_dir / 'summary.json'}")
    return summary


def _first_rows(
    out_dir: Path,
    plan: _StreamPlan,
    n_first: int,
    names: list[str],
    n_classes: int,
    sums: stream.StreamTotals,
) -> tuple[Any, kernel_shap.Explanation]:
    """The values table of the first ``n_first`` rows, read back from the parts, and their Explanation."""
    first = stream.read_first_rows(out_dir, plan.parts, n_first, n_classes)
    errors = None
    if not sums.exact:
        first_errors = stream.read_first_rows(out_dir, plan.parts, n_first, n_classes, stream.ERRORS_PARTS)
        errors = stream.values_of(first_errors, names, n_classes)
    expected = first["expected_value"].to_numpy()[:n_classes]
    explanation = kernel_shap.Explanation(
        stream.values_of(first, names, n_classes), expected, sums.exact, sums.n_coalitions, errors
    )
    return first, explanation


# Options that do not change a part's values: a rerun may change them and keep the parts.
_NOT_IN_VALUES = ("run_id", "output_dir", "cpus", "max_tasks", "ray_address", "reference", "tolerance")


def _claim_parts(out_dir: Path, config: JobConfig) -> None:
    """Record the settings the parts are computed with (``shap_values.parts/_settings.json``;
    Parquet readers skip names starting with "_"), or check that a rerun's are the same: parts of
    other settings would be read back as if they were this run's. Raises DataError if they differ."""
    import dataclasses
    import json

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_VALUES}
    text = json.dumps(settings, sort_keys=True, default=str)
    path = out_dir / stream.VALUES_PARTS / "_settings.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != json.loads(text).get(k))
        if changed:
            raise DataError(
                f"{out_dir}: its parts were computed with other settings ({', '.join(changed)} differ); "
                "pass a new --run-id, or delete that folder to start again."
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
