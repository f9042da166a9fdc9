"""KernelSHAP, exact or sampled, vectorised over rows, coalitions and model outputs. Ray-free.

The method is shap.KernelExplainer's (Lundberg & Lee 2017), reorganised for speed:

* One set of coalitions (a *plan*) serves every row whose varying features are the same, so the
  weighted least-squares solve is factorised once into a matrix ``solver`` and applied to all
  rows and all outputs with one ``einsum``.
* Synthetic rows are built with broadcasting (no Python loop per coalition) and the model is
  called on large blocks, so the model's own prediction dominates the cost.
* The model evaluations split freely into blocks of rows x blocks of coalitions, which is what
  the Ray DAG distributes; the solve needs only the per-coalition expectations ``ey``.

Conventions: ``M`` features, ``N`` background rows, ``S`` coalitions, ``K`` model outputs.
A feature counts as *varying* for a row exactly as in shap: it is not ``np.allclose`` to that
feature in every background row; non-varying features get 0 and keep background values.
"""

from __future__ import annotations

import enum
import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Predict = Callable[[npt.NDArray[np.floating]], npt.NDArray[np.floating]]

# Upper bound on synthetic rows handed to the model in one call: big enough that per-call
# overhead vanishes, small enough to keep a block's memory near 100 MB.
MAX_ROWS_PER_PREDICT = 1 << 20


class Link(enum.StrEnum):
    IDENTITY = "identity"
    LOGIT = "logit"

    def apply(self, values: npt.ArrayLike) -> FloatArray:
        array = np.asarray(values, dtype=np.float64)
        if self is Link.IDENTITY:
            return array
        return np.log(array / (1.0 - array))


def default_nsamples(n_features: int) -> int:
    """shap's "auto": 2M + 2048 model re-evaluations per explained row."""
    return 2 * n_features + 2048


def exact_nsamples(n_features: int) -> int:
    """How many coalitions exact enumeration needs (all but the empty and the full one)."""
    return (1 << n_features) - 2


@dataclass(frozen=True)
class CoalitionPlan:
    """The coalitions, their kernel weights and the factorised solve for one varying set."""

    n_features: int
    varying: npt.NDArray[np.intp]  # indices of the m varying features
    masks: npt.NDArray[np.bool_]  # (S, M); columns of non-varying features are all False
    weights: FloatArray  # (S,)
    solver: FloatArray  # (m - 1, S): phi[:-1] = solver @ y2, see solve_phi
    exact: bool = field(default=True)

    @property
    def n_coalitions(self) -> int:
        return int(self.masks.shape[0])


def varying_features(rows: npt.ArrayLike, background: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """(R, M) mask of the features that vary for each row, by shap's rule (np.allclose)."""
    x = np.asarray(rows, dtype=np.float64)
    bg = np.asarray(background, dtype=np.float64)
    same = np.isclose(x[:, None, :], bg[None, :, :], equal_nan=True).all(axis=1)
    return np.asarray(~same, dtype=bool)


def group_rows_by_varying(varying: npt.NDArray[np.bool_]) -> dict[tuple[int, ...], npt.NDArray[np.intp]]:
    """Rows that share a varying set share a plan; usually there is exactly one group."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, mask in enumerate(varying):
        groups.setdefault(tuple(int(i) for i in np.flatnonzero(mask)), []).append(row)
    return {key: np.asarray(rows, dtype=np.intp) for key, rows in groups.items()}


def _subset_size_weights(m: int) -> tuple[FloatArray, int, int]:
    """shap's weights per subset size (complements folded in) and the size counts."""
    num_subset_sizes = math.ceil((m - 1) / 2)
    num_paired = (m - 1) // 2
    sizes = np.arange(1, num_subset_sizes + 1, dtype=np.float64)
    weight_vector = (m - 1.0) / (sizes * (m - sizes))
    weight_vector[:num_paired] *= 2
    weight_vector /= weight_vector.sum()
    return weight_vector, num_subset_sizes, num_paired


def _combinations(m: int, size: int) -> npt.NDArray[np.bool_]:
    index = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(m), size)), dtype=np.intp
    ).reshape(-1, size)
    masks = np.zeros((index.shape[0], m), dtype=bool)
    np.put_along_axis(masks, index, True, axis=1)
    return masks


def _choose_coalitions(
    m: int, nsamples: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.bool_], FloatArray, bool]:
    """Coalitions over m >= 2 features and their kernel weights, following shap's scheme.

    Whole subset sizes are enumerated (with their complements) while the budget covers them;
    the rest of the budget is drawn at random, in complementary pairs, and duplicates add
    weight instead of rows. Returns (masks (S, m), weights (S,), exact).
    """
    nsamples = min(nsamples, exact_nsamples(m)) if m <= 30 else nsamples
    weight_vector, num_subset_sizes, num_paired = _subset_size_weights(m)

    blocks: list[npt.NDArray[np.bool_]] = []
    block_weights: list[FloatArray] = []
    num_full = 0
    samples_left = nsamples
    remaining = weight_vector.copy()
    for size in range(1, num_subset_sizes + 1):
        paired = size <= num_paired
        n_subsets = math.comb(m, size) * (2 if paired else 1)
        if samples_left * remaining[size - 1] / n_subsets < 1.0 - 1e-8:
            break
        num_full += 1
        samples_left -= n_subsets
        if remaining[size - 1] < 1.0:
            remaining /= 1.0 - remaining[size - 1]
        weight = weight_vector[size - 1] / math.comb(m, size) / (2.0 if paired else 1.0)
        masks = _combinations(m, size)
        if paired:
            # shap interleaves each subset with its complement; the order is immaterial.
            masks = np.stack([masks, ~masks], axis=1).reshape(-1, m)
        blocks.append(masks)
        block_weights.append(np.full(masks.shape[0], weight))

    exact = num_full == num_subset_sizes
    if not exact and samples_left > 0:
        masks, weights = _sample_coalitions(m, samples_left, weight_vector, num_full, num_paired, rng)
        blocks.append(masks)
        block_weights.append(weights * (weight_vector[num_full:].sum() / weights.sum()))
    if not blocks:
        return np.zeros((0, m), dtype=bool), np.zeros(0), exact
    return np.concatenate(blocks), np.concatenate(block_weights), exact


def _sample_coalitions(
    m: int,
    samples_left: int,
    weight_vector: FloatArray,
    num_full: int,
    num_paired: int,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    """The random part of the plan: runs once per plan, not per row, so a loop is fine here."""
    size_weights = weight_vector.copy()
    size_weights[:num_paired] /= 2  # each paired draw yields two samples
    size_weights = size_weights[num_full:]
    size_weights /= size_weights.sum()
    draws = rng.choice(len(size_weights), 4 * samples_left, p=size_weights)

    seen: dict[bytes, int] = {}
    masks: list[npt.NDArray[np.bool_]] = []
    weights: list[float] = []
    for draw in draws:
        if samples_left <= 0:
            break
        size = int(draw) + num_full + 1
        mask = np.zeros(m, dtype=bool)
        mask[rng.permutation(m)[:size]] = True
        key = mask.tobytes()
        first = key not in seen
        if first:
            seen[key] = len(masks)
            masks.append(mask)
            weights.append(1.0)
            samples_left -= 1
        else:
            weights[seen[key]] += 1.0
        if samples_left > 0 and size <= num_paired:
            if first:
                masks.append(~mask)
                weights.append(1.0)
                samples_left -= 1
            else:
                weights[seen[key] + 1] += 1.0
    return np.asarray(masks, dtype=bool).reshape(-1, m), np.asarray(weights)


def _factorise_solve(masks: npt.NDArray[np.bool_], weights: FloatArray) -> FloatArray:
    """The weighted least squares of shap's ``solve`` with the sum constraint eliminated,
    reduced to one (m - 1, S) matrix that maps adjusted expectations to all but the last phi."""
    z = masks.astype(np.float64)
    design = z[:, :-1] - z[:, -1:]
    weighted = weights[:, None] * design
    gram = design.T @ weighted
    try:
        return np.asarray(np.linalg.solve(gram, weighted.T))
    except np.linalg.LinAlgError:
        warnings.warn(
            "The KernelSHAP regression is singular (too few coalitions for this many features); "
            "using a least-squares solution. Raise --nsamples for a well-posed estimate.",
            RuntimeWarning,
            stacklevel=3,
        )
        return np.asarray(np.linalg.pinv(gram) @ weighted.T)


def build_plan(
    varying: npt.ArrayLike, n_features: int, nsamples: int | None = None, seed: int = 0
) -> CoalitionPlan:
    """Plan for rows whose varying features are ``varying`` (indices into 0..n_features-1).

    ``nsamples`` None means shap's default (2m + 2048 for m varying features); a budget of at
    least 2^m - 2 gives exact enumeration.
    """
    var = np.asarray(varying, dtype=np.intp)
    m = len(var)
    if m < 2:
        empty = np.zeros((0, n_features), dtype=bool)
        return CoalitionPlan(n_features, var, empty, np.zeros(0), np.zeros((max(m - 1, 0), 0)))
    budget = default_nsamples(m) if nsamples is None else nsamples
    if budget < 1:
        raise ValueError(f"nsamples must be at least 1, got {budget}")
    small, weights, exact = _choose_coalitions(m, budget, np.random.default_rng(seed))
    masks = np.zeros((small.shape[0], n_features), dtype=bool)
    masks[:, var] = small
    return CoalitionPlan(n_features, var, masks, weights, _factorise_solve(small, weights), exact)


def model_outputs(predict: Predict, rows: npt.ArrayLike) -> FloatArray:
    """Model outputs as a 2-D float array (n, K); a 1-D output becomes K = 1."""
    out = np.asarray(predict(np.asarray(rows)), dtype=np.float64)
    return out.reshape(out.shape[0], -1)


def expected_output(
    predict: Predict, background: npt.ArrayLike, weights: FloatArray | None = None
) -> FloatArray:
    """E[f(background)] per output (K,), with shap's uniform weights by default."""
    out = model_outputs(predict, background)
    w = np.full(out.shape[0], 1.0 / out.shape[0]) if weights is None else weights / weights.sum()
    return np.asarray(w @ out)


def evaluate_coalitions(
    predict: Predict,
    rows: npt.ArrayLike,
    background: npt.ArrayLike,
    masks: npt.NDArray[np.bool_],
    *,
    dtype: npt.DTypeLike = np.float64,
    max_rows_per_predict: int = MAX_ROWS_PER_PREDICT,
) -> FloatArray:
    """E over the background of f(x with features outside the coalition taken from background).

    Returns ey of shape (R, S, K). This is where nearly all the time goes: R*S*N model rows.
    ``dtype`` lets a caller build synthetic rows directly in the dtype the model converts to
    (float32 for scikit-learn trees), which saves a copy without changing any value.
    """
    x = np.asarray(rows, dtype=dtype)
    bg = np.asarray(background, dtype=dtype)
    n_rows, n_bg, n_coalitions = x.shape[0], bg.shape[0], masks.shape[0]
    chunk = max(1, max_rows_per_predict // max(1, n_bg))  # (row, coalition) pairs per call
    pairs = [(r, s) for r in range(n_rows) for s in range(0, n_coalitions, chunk)]
    ey: FloatArray | None = None
    for r, start in pairs:
        block = masks[start : start + chunk]
        synth = np.where(block[:, None, :], x[r][None, None, :], bg[None, :, :])
        out = model_outputs(predict, synth.reshape(-1, x.shape[1]))
        means = out.reshape(block.shape[0], n_bg, -1).mean(axis=1)
        if ey is None:
            ey = np.empty((n_rows, n_coalitions, means.shape[1]))
        ey[r, start : start + block.shape[0]] = means
    if ey is None:
        return np.zeros((n_rows, n_coalitions, 0))
    return ey


def solve_phi(
    plan: CoalitionPlan,
    ey: FloatArray,
    fx: FloatArray,
    fnull: FloatArray,
    link: Link = Link.IDENTITY,
) -> FloatArray:
    """SHAP values (R, M, K) of R rows from their coalition expectations ey (R, S, K),
    model outputs fx (R, K) and expected output fnull (K,): one einsum for all rows and outputs."""
    n_rows, n_outputs = fx.shape
    phi = np.zeros((n_rows, plan.n_features, n_outputs))
    m = len(plan.varying)
    if m == 0:
        return phi
    delta = link.apply(fx) - link.apply(fnull)[None, :]
    if m == 1:
        phi[:, plan.varying[0], :] = delta
        return phi
    last = plan.masks[:, plan.varying[-1]].astype(np.float64)
    adjusted = link.apply(ey) - link.apply(fnull)[None, None, :] - last[None, :, None] * delta[:, None, :]
    head = np.einsum("ms,rsk->rmk", plan.solver, adjusted)
    phi[:, plan.varying[:-1], :] = head
    phi[:, plan.varying[-1], :] = delta - head.sum(axis=1)
    return phi


@dataclass(frozen=True)
class Explanation:
    values: FloatArray  # (R, M, K)
    expected_value: FloatArray  # (K,)
    exact: bool
    n_coalitions: int


def explain(
    predict: Predict,
    rows: npt.ArrayLike,
    background: npt.ArrayLike,
    *,
    nsamples: int | None = None,
    link: Link = Link.IDENTITY,
    seed: int = 0,
    dtype: npt.DTypeLike = np.float64,
) -> Explanation:
    """Explain rows in this process; the Ray DAG composes the same steps across a cluster."""
    x = np.asarray(rows, dtype=np.float64)
    bg = np.asarray(background, dtype=np.float64)
    fnull = expected_output(predict, bg)
    fx = model_outputs(predict, x)
    values = np.zeros((x.shape[0], x.shape[1], fx.shape[1]))
    exact, n_coalitions = True, 0
    for varying, row_index in group_rows_by_varying(varying_features(x, bg)).items():
        plan = build_plan(varying, x.shape[1], nsamples, seed)
        ey = evaluate_coalitions(predict, x[row_index], bg, plan.masks, dtype=dtype)
        values[row_index] = solve_phi(plan, ey, fx[row_index], fnull, link)
        exact, n_coalitions = exact and plan.exact, max(n_coalitions, plan.n_coalitions)
    return Explanation(values, link.apply(fnull), exact, n_coalitions)


# Smallest task worth shipping to a worker, in synthetic model rows: below this Ray's per-task
# overhead (milliseconds) stops being negligible next to the model's own time.
MIN_SYNTHETIC_ROWS_PER_TASK = 50_000
TASKS_PER_WORKER = 4  # enough for the last tasks to even out across workers


@dataclass(frozen=True)
class Block:
    rows: slice  # into the rows of one plan group
    coalitions: slice  # into that plan's coalitions

    @property
    def units(self) -> int:
        """Row x coalition pairs: the progress unit."""
        return int((self.rows.stop - self.rows.start) * (self.coalitions.stop - self.coalitions.start))


def split_work(
    n_rows: int, n_coalitions: int, n_background: int, workers: int, batch_size: int | None = None
) -> list[Block]:
    """Blocks of rows x coalitions for the Ray tasks.

    ``batch_size`` fixes the rows per task; otherwise rows are split first, then coalitions,
    aiming at TASKS_PER_WORKER tasks per worker without making any task too small to pay off.
    """
    if n_rows == 0 or n_coalitions == 0:
        return []
    units = n_rows * n_coalitions
    min_units = max(1, math.ceil(MIN_SYNTHETIC_ROWS_PER_TASK / max(n_background, 1)))
    target = max(1, min(TASKS_PER_WORKER * workers, units // min_units))
    if batch_size is None:
        row_blocks = min(n_rows, target)
        batch_size = math.ceil(n_rows / row_blocks)
    row_blocks = math.ceil(n_rows / batch_size)
    coalition_blocks = max(1, min(n_coalitions, math.ceil(target / row_blocks)))
    step = math.ceil(n_coalitions / coalition_blocks)
    return [
        Block(slice(r, min(r + batch_size, n_rows)), slice(c, min(c + step, n_coalitions)))
        for r in range(0, n_rows, batch_size)
        for c in range(0, n_coalitions, step)
    ]
