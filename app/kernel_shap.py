"""KernelSHAP, exact or sampled, vectorised over rows, coalitions and model outputs. Ray-free.

The method is shap.KernelExplainer's (Lundberg & Lee 2017), reorganised for speed:

* One set of coalitions (a *plan*) serves every row whose varying players are the same, so the
  weighted least-squares solve is factorised once into a matrix ``solver`` and applied to all
  rows and all outputs with one ``einsum``.
* Synthetic rows are built without a Python loop per coalition, in cache-sized blocks of one
  reused buffer, and background rows that coincide outside a coalition are evaluated once
  with their summed weight (``merge_outside``), so the model's own prediction dominates the
  cost and no model row is evaluated twice for one coalition.
* The model evaluations split freely into blocks of rows x blocks of coalitions, which is what
  the Ray DAG distributes; the solve needs only the per-coalition expectations ``ey``.

Conventions: ``M`` features (columns), ``G`` players (feature groups; ``G = M`` without groups),
``N`` background rows, ``S`` coalitions, ``K`` model outputs, ``R`` explained rows.

* A player (a feature, or a group of columns) is *varying* for a row iff the row's value of
  one of its columns differs (exact inequality, NaN equal to NaN) from that column in SOME
  background row; non-varying players get exactly 0. shap uses ``np.allclose`` instead, which
  calls a unix timestamp that moves by an hour constant (relative tolerance 1e-5 of 1.7e9);
  ``reference_constant_players`` finds where the two rules part.
* Background rows may carry weights (shap's ``DenseData`` weights): E over the background is
  the weighted mean. Duplicate background rows are merged into one weighted row (exact).
* Sampled plans come with standard errors, see ``standard_errors``.
* Every plan is sized before it is built (``plan_bytes``) against ``PLAN_MEMORY_BUDGET``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from app.contract import Link

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Predict = Callable[[npt.NDArray[np.floating]], npt.NDArray[np.floating]]

# Synthetic rows handed to the model in one call: about BLOCK_BYTES of them, so that they are
# built and read while still in the CPU's cache (Adult's 106 float64 columns, measured per
# explained row: 4 MB blocks 1.6x faster than 256 MB ones, 1 MB ones slower again as the
# model's per-call overhead grows), but never fewer than MIN_ROWS_PER_PREDICT (a model with a
# costly call, e.g. a pandas pipeline) nor more than MAX_ROWS_PER_PREDICT.
BLOCK_BYTES = 4 << 20
MIN_ROWS_PER_PREDICT = 2048
MAX_ROWS_PER_PREDICT = 1 << 20
# Coalitions merged at once in evaluate_coalitions: bounds merge_outside's (S, N) keys.
MERGE_ELEMENTS = 1 << 21
# Memory one plan may take on the driver: masks, solver, regression temporaries and ey (R, S, K).
PLAN_MEMORY_BUDGET = 2 << 30
# "Affordable" exact enumeration: at most this many synthetic model rows (coalitions x
# background x rows); above it the default is shap's sampling budget 2G + 2048.
EXACT_MODEL_ROWS_BUDGET = 20_000_000
# Largest budget convergence-driven sampling (--tol) may grow to.
MAX_TOL_NSAMPLES = 1 << 17


class PlanTooLargeError(ValueError):
    """A plan would exceed PLAN_MEMORY_BUDGET; the message says what to pass instead."""


class PlanTooSmallError(ValueError):
    """A requested budget has too few coalitions for a well-posed regression over the players."""


def default_nsamples(n_features: int) -> int:
    """shap's "auto": 2M + 2048 model re-evaluations per explained row."""
    return 2 * n_features + 2048


def exact_nsamples(n_features: int) -> int:
    """How many coalitions exact enumeration needs (all but the empty and the full one)."""
    return (1 << n_features) - 2


def plan_bytes(n_coalitions: int, n_varying: int, n_features: int, n_rows: int, n_outputs: int) -> int:
    """Bytes a plan of S coalitions over m varying players needs at its peak on the driver:
    masks (S, M) and (S, m) bools, design and weighted design (S, m-1) floats twice, solver
    (m-1, S), weights etc. (3 S floats), and ey plus its linked copy (R, S, K) floats twice."""
    s, m = n_coalitions, n_varying
    per_coalition = n_features + m + 8 * 3 * max(m - 1, 0) + 8 * 3
    return s * per_coalition + 2 * 8 * n_rows * s * n_outputs


def _format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PB"  # pragma: no cover


def check_plan_fits(
    n_coalitions: int, n_varying: int, n_features: int, n_rows: int, n_outputs: int, *, exact: bool
) -> None:
    """Raise PlanTooLargeError, naming coalitions, memory, budget and what to pass instead,
    if the plan would not fit PLAN_MEMORY_BUDGET. Costs nothing: nothing is allocated."""
    need = plan_bytes(n_coalitions, n_varying, n_features, n_rows, n_outputs)
    if need <= PLAN_MEMORY_BUDGET:
        return
    what = f"exact enumeration over {n_varying} players" if exact else f"{n_coalitions:,} sampled coalitions"
    hint = (
        f"--nsamples {default_nsamples(n_varying)} (shap's default, sampled with standard errors)"
        if exact
        else "a smaller --nsamples or fewer --rows"
    )
    raise PlanTooLargeError(
        f"{what} needs {n_coalitions:,} coalitions and about {_format_bytes(need)} of memory, over "
        f"the {_format_bytes(PLAN_MEMORY_BUDGET)} budget for one plan; pass {hint}, "
        "or merge features with --groups."
    )


def resolve_nsamples(
    requested: int | str | None, n_players: int, n_rows: int, n_background: int, n_outputs: int = 1
) -> int | None:
    """The coalition budget for a run: an int (exact when >= 2^G - 2), or None for shap's default
    2m + 2048 per plan. ``requested`` "exact" forces enumeration; None picks exact whenever it is
    affordable: coalitions x background x rows <= EXACT_MODEL_ROWS_BUDGET and the plan fits memory.
    Raises PlanTooLargeError when the requested (or default) plan cannot fit, PlanTooSmallError
    when a requested budget is below 2 coalitions per player (the regression would be singular)."""
    exact_n = exact_nsamples(n_players) if n_players < 63 else 1 << 62
    if requested == "exact":
        check_plan_fits(exact_n, n_players, n_players, n_rows, n_outputs, exact=True)
        return exact_n
    if isinstance(requested, int):
        if requested < min(2 * n_players, exact_n):
            raise PlanTooSmallError(
                f"--nsamples {requested} is fewer coalitions than the {2 * n_players} that {n_players} "
                f"players need for a well-posed regression; pass at least {2 * n_players}, or leave "
                "--nsamples out (exact when affordable, else shap's default with standard errors)"
            )
        n = min(requested, exact_n)
        check_plan_fits(n, n_players, n_players, n_rows, n_outputs, exact=n >= exact_n)
        return requested
    fits = plan_bytes(exact_n, n_players, n_players, n_rows, n_outputs) <= PLAN_MEMORY_BUDGET
    if exact_n <= default_nsamples(n_players) or (
        fits and exact_n * max(n_background, 1) * n_rows <= EXACT_MODEL_ROWS_BUDGET
    ):
        check_plan_fits(exact_n, n_players, n_players, n_rows, n_outputs, exact=True)
        return exact_n
    check_plan_fits(default_nsamples(n_players), n_players, n_players, n_rows, n_outputs, exact=False)
    return None


@dataclass(frozen=True)
class CoalitionPlan:
    """The coalitions, their kernel weights and the factorised solve for one varying set."""

    n_features: int
    varying: npt.NDArray[np.intp]  # indices of the m varying players
    masks: BoolArray  # (S, M) columns; columns of non-varying players are all False
    weights: FloatArray  # (S,)
    solver: FloatArray  # (m - 1, S): phi[:-1] = solver @ y2, see solve_phi
    exact: bool = field(default=True)
    coalitions: BoolArray | None = None  # (S, m) over the varying players; None: masks[:, varying]
    units: npt.NDArray[np.intp] | None = None  # (S,) sampling draw of each coalition, -1 enumerated
    counts: FloatArray | None = None  # (S,) times each coalition was drawn (1 if enumerated)
    n_players: int | None = None  # G; None: M (no groups)

    @property
    def n_coalitions(self) -> int:
        return int(self.masks.shape[0])

    @property
    def players(self) -> int:
        return self.n_features if self.n_players is None else self.n_players

    @property
    def small(self) -> BoolArray:
        """(S, m) membership of each varying player in each coalition."""
        return self.masks[:, self.varying] if self.coalitions is None else self.coalitions


def player_matrix(groups: Sequence[Sequence[int]] | None, n_features: int) -> BoolArray:
    """(G, M) membership of columns in players; None gives one player per column.

    Raises ValueError unless the groups partition 0..M-1 (each column in exactly one group).
    """
    if groups is None:
        return np.eye(n_features, dtype=bool)
    matrix = np.zeros((len(groups), n_features), dtype=bool)
    for g, columns in enumerate(groups):
        if len(columns) == 0:
            raise ValueError(f"group {g} has no columns")
        for c in columns:
            if not 0 <= int(c) < n_features:
                raise ValueError(f"group {g} names column {c}, outside 0..{n_features - 1}")
            if matrix[:, int(c)].any():
                raise ValueError(f"column {c} is in more than one group")
            matrix[g, int(c)] = True
    missing = np.flatnonzero(~matrix.any(axis=0))
    if missing.size:
        raise ValueError(f"columns {missing.tolist()} are in no group")
    return matrix


def _differs_from_some(x: FloatArray, bg: FloatArray) -> BoolArray:
    """(R, M): the row's value differs from the column's value in some background row."""
    same = (x[:, None, :] == bg[None, :, :]) | (np.isnan(x)[:, None, :] & np.isnan(bg)[None, :, :])
    return np.asarray(~same.all(axis=1), dtype=bool)


def varying_features(
    rows: npt.ArrayLike, background: npt.ArrayLike, players: BoolArray | None = None
) -> BoolArray:
    """(R, G) mask of the players that vary for each row: some column of the player differs
    (exactly, NaN == NaN) from that column in some background row."""
    x = np.asarray(rows, dtype=np.float64)
    bg = np.asarray(background, dtype=np.float64)
    columns = _differs_from_some(x, bg)
    if players is None:
        return columns
    return np.asarray(columns.astype(np.int64) @ players.T.astype(np.int64) > 0, dtype=bool)


def shap_varying_features(
    rows: npt.ArrayLike, background: npt.ArrayLike, players: BoolArray | None = None
) -> BoolArray:
    """(R, G): shap's rule, a player varies unless np.allclose(x, every background row)."""
    x = np.asarray(rows, dtype=np.float64)
    bg = np.asarray(background, dtype=np.float64)
    close = np.isclose(x[:, None, :], bg[None, :, :], equal_nan=True).all(axis=1)  # (R, M)
    if players is None:
        return np.asarray(~close, dtype=bool)
    return np.asarray((~close).astype(np.int64) @ players.T.astype(np.int64) > 0, dtype=bool)


def reference_constant_players(
    rows: npt.ArrayLike, background: npt.ArrayLike, players: BoolArray | None = None
) -> dict[int, list[int]]:
    """Players ours treats as varying but shap's np.allclose rule zeroes: player -> rows."""
    ours = varying_features(rows, background, players)
    theirs = shap_varying_features(rows, background, players)
    disputed = ours & ~theirs
    return {int(p): np.flatnonzero(disputed[:, p]).tolist() for p in np.flatnonzero(disputed.any(axis=0))}


def merge_background(
    background: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> tuple[FloatArray, FloatArray]:
    """Duplicate background rows merged into one row each, weights summed: (N', M), (N',).

    The weights are normalised to sum 1 (shap's DenseData does the same); rows of weight 0 are
    dropped. Raises ValueError for weights that are not finite, negative, or of the wrong shape.
    """
    bg = np.asarray(background, dtype=np.float64)
    n = bg.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"background weights have shape {w.shape}, expected ({n},)")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("background weights must be finite, non-negative and not all zero")
    keep = w > 0
    bg, w = bg[keep], w[keep]
    _, first, inverse = np.unique(bg, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(first)  # keep the first occurrence's order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    merged = np.bincount(rank[inverse], weights=w, minlength=order.size)
    return np.ascontiguousarray(bg[first[order]]), merged / merged.sum()


def group_rows_by_varying(varying: BoolArray) -> dict[tuple[int, ...], npt.NDArray[np.intp]]:
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


def _combinations(m: int, size: int) -> BoolArray:
    index = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(m), size)), dtype=np.intp
    ).reshape(-1, size)
    masks = np.zeros((index.shape[0], m), dtype=bool)
    np.put_along_axis(masks, index, True, axis=1)
    return masks


def _choose_coalitions(
    m: int, nsamples: int, rng: np.random.Generator
) -> tuple[BoolArray, FloatArray, bool, npt.NDArray[np.intp], FloatArray]:
    """Coalitions over m >= 2 players and their kernel weights, following shap's scheme.

    Whole subset sizes are enumerated (with their complements) while the budget covers them;
    the rest of the budget is drawn at random, in complementary pairs, and duplicates add
    weight instead of rows. Returns (masks (S, m), weights (S,), exact, units (S,), counts (S,))
    where units numbers the random draws (a coalition and its paired complement share one) and
    is -1 for enumerated coalitions, and counts is how often each coalition was drawn.
    """
    nsamples = min(nsamples, exact_nsamples(m)) if m <= 30 else nsamples
    weight_vector, num_subset_sizes, num_paired = _subset_size_weights(m)

    blocks: list[BoolArray] = []
    block_weights: list[FloatArray] = []
    block_units: list[npt.NDArray[np.intp]] = []
    block_counts: list[FloatArray] = []
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
        block_units.append(np.full(masks.shape[0], -1, dtype=np.intp))
        block_counts.append(np.ones(masks.shape[0]))

    exact = num_full == num_subset_sizes
    if not exact and samples_left > 0:
        masks, weights, units = _sample_coalitions(m, samples_left, weight_vector, num_full, num_paired, rng)
        blocks.append(masks)
        block_weights.append(weights * (weight_vector[num_full:].sum() / weights.sum()))
        block_units.append(units)
        block_counts.append(weights)
    if not blocks:
        return np.zeros((0, m), dtype=bool), np.zeros(0), exact, np.zeros(0, dtype=np.intp), np.zeros(0)
    return (
        np.concatenate(blocks),
        np.concatenate(block_weights),
        exact,
        np.concatenate(block_units),
        np.concatenate(block_counts),
    )


def _sample_coalitions(
    m: int,
    samples_left: int,
    weight_vector: FloatArray,
    num_full: int,
    num_paired: int,
    rng: np.random.Generator,
) -> tuple[BoolArray, FloatArray, npt.NDArray[np.intp]]:
    """The random part of the plan: runs once per plan, not per row, so a loop is fine here.
    Returns masks (S', m), draw counts (S',) and the draw unit of each mask (S',)."""
    size_weights = weight_vector.copy()
    size_weights[:num_paired] /= 2  # each paired draw yields two samples
    size_weights = size_weights[num_full:]
    size_weights /= size_weights.sum()
    draws = rng.choice(len(size_weights), 4 * samples_left, p=size_weights)

    seen: dict[bytes, int] = {}
    masks: list[BoolArray] = []
    weights: list[float] = []
    units: list[int] = []
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
            unit = units[-1] + 1 if units else 0
            masks.append(mask)
            weights.append(1.0)
            units.append(unit)
            samples_left -= 1
        else:
            weights[seen[key]] += 1.0
        if samples_left > 0 and size <= num_paired:
            if first:
                masks.append(~mask)
                weights.append(1.0)
                units.append(units[-1])
                samples_left -= 1
            elif seen[key] + 1 < len(masks) and units[seen[key] + 1] == units[seen[key]]:
                weights[seen[key] + 1] += 1.0
    return (
        np.asarray(masks, dtype=bool).reshape(-1, m),
        np.asarray(weights),
        np.asarray(units, dtype=np.intp),
    )


def _factorise_solve(masks: BoolArray, weights: FloatArray) -> FloatArray:
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
    varying: npt.ArrayLike,
    n_features: int,
    nsamples: int | None = None,
    seed: int = 0,
    players: BoolArray | None = None,
) -> CoalitionPlan:
    """Plan for rows whose varying players are ``varying`` (indices into 0..G-1).

    ``players`` (G, M) maps players to columns (None: one player per column). ``nsamples``
    None means shap's default (2m + 2048 for m varying players); a budget of at least 2^m - 2
    gives exact enumeration. The caller sizes the plan first (``check_plan_fits``).
    """
    var = np.asarray(varying, dtype=np.intp)
    m = len(var)
    n_players = None if players is None else int(players.shape[0])
    if m < 2:
        empty = np.zeros((0, n_features), dtype=bool)
        return CoalitionPlan(
            n_features,
            var,
            empty,
            np.zeros(0),
            np.zeros((max(m - 1, 0), 0)),
            coalitions=np.zeros((0, m), dtype=bool),
            units=np.zeros(0, dtype=np.intp),
            n_players=n_players,
        )
    budget = default_nsamples(m) if nsamples is None else nsamples
    if budget < 1:
        raise ValueError(f"nsamples must be at least 1, got {budget}")
    small, weights, exact, units, counts = _choose_coalitions(m, budget, np.random.default_rng(seed))
    if players is None:
        masks = np.zeros((small.shape[0], n_features), dtype=bool)
        masks[:, var] = small
    else:
        masks = np.asarray(small.astype(np.uint8) @ players[var].astype(np.uint8) > 0, dtype=bool)
    return CoalitionPlan(
        n_features,
        var,
        masks,
        weights,
        _factorise_solve(small, weights),
        exact,
        coalitions=small,
        units=units,
        n_players=n_players,
        counts=counts,
    )


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


def _trusted_inputs() -> contextlib.AbstractContextManager[object]:
    """scikit-learn without its finiteness scan of every input (a full pass over the rows)."""
    import sklearn

    context: contextlib.AbstractContextManager[object] = sklearn.config_context(assume_finite=True)
    return context


def column_runs(masks: BoolArray) -> list[tuple[int, int]]:
    """Maximal runs [a, e) of adjacent columns that every coalition takes from the same side:
    one run per player when groups are contiguous (one-hot columns), at most M."""
    n_columns = masks.shape[1]
    if n_columns == 0:
        return []
    change = np.flatnonzero((masks[:, 1:] != masks[:, :-1]).any(axis=0)) + 1
    edges = [0, *change.tolist(), n_columns]
    return list(itertools.pairwise(edges))


def _row_ids(block: npt.NDArray[np.floating]) -> npt.NDArray[np.intp]:
    """(N,) an id per row of an (N, C) block, equal iff the rows are equal byte for byte."""
    contiguous = np.ascontiguousarray(block)
    rows = contiguous.view(np.dtype((np.void, contiguous.dtype.itemsize * contiguous.shape[1]))).ravel()
    _, ids = np.unique(rows, return_inverse=True)
    return np.asarray(ids.reshape(-1), dtype=np.intp)


def _sorted_groups(key: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.intp], BoolArray]:
    """Per row of key (S, N): the stable sort order and where each run of equal keys starts."""
    order = np.argsort(key, axis=1, kind="stable")
    ordered = np.take_along_axis(key, order, axis=1)
    first = np.ones(key.shape, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return order, first


def _dense_ranks(
    key: npt.NDArray[np.int64], order: npt.NDArray[np.intp], first: BoolArray
) -> npt.NDArray[np.int64]:
    """key (S, N) relabelled per row as 0..(distinct - 1), same equalities (order, first:
    _sorted_groups of key)."""
    dense = np.empty_like(key)
    np.put_along_axis(dense, order, np.cumsum(first, axis=1) - 1, axis=1)
    return dense


@dataclass(frozen=True)
class CoalitionPairs:
    """The (coalition, background row) pairs whose synthetic rows differ, grouped by coalition.

    Conventions: T pairs, T <= S * N.
    """

    coalition: npt.NDArray[np.intp]  # (T,) ascending
    background: npt.NDArray[np.intp]  # (T,) the first background row of each merged set
    weight: FloatArray  # (T,) the summed weights of the merged background rows
    starts: npt.NDArray[np.intp]  # (S + 1,) where each coalition's pairs start
    pair_of: npt.NDArray[np.intp]  # (S, N) the pair that stands for background row n in coalition s

    @property
    def n_pairs(self) -> int:
        return int(self.starts[-1])

    def chunks(self, per_call: int) -> Iterator[tuple[int, int]]:
        """Coalition ranges [c0, c1) of at most ``per_call`` pairs (at least one coalition),
        of about equal size (no small last call paying the model's per-call overhead alone)."""
        n_coalitions = len(self.starts) - 1
        per_call = max(1, math.ceil(self.n_pairs / max(1, math.ceil(self.n_pairs / max(1, per_call)))))
        c0 = 0
        while c0 < n_coalitions:
            c1 = int(np.searchsorted(self.starts, self.starts[c0] + per_call, side="right")) - 1
            c1 = min(max(c1, c0 + 1), n_coalitions)
            yield c0, c1
            c0 = c1


def background_run_ids(
    masks: BoolArray, background: npt.NDArray[np.floating]
) -> list[tuple[int, npt.NDArray[np.intp]]]:
    """Per column run of ``masks`` (``column_runs``) that not every background row agrees on:
    (its first column, (N,) ids of the background rows' values on it), most distinct first."""
    runs = []
    for a, e in column_runs(masks):
        ids = _row_ids(background[:, a:e])
        if background.shape[0] and ids.max() > 0:
            runs.append((a, ids))
    return sorted(runs, key=lambda run: -int(run[1].max()))


def merge_outside(
    masks: BoolArray,
    background: npt.NDArray[np.floating],
    weights: FloatArray,
    run_ids: list[tuple[int, npt.NDArray[np.intp]]] | None = None,
) -> CoalitionPairs:
    """Per coalition (masks (S, M)), the background rows (N, M) grouped by their values outside it.

    Two background rows equal (byte for byte) on every column outside a coalition give the same
    synthetic row for it, so one of them with the pair's summed weight ``weights`` (N,) gives the
    same expectation with fewer model rows. Exact; for one-hot groups (Adult: 1.28x fewer rows)
    and coalitions that leave few columns to the background. ``run_ids``: background_run_ids of
    these masks or of any superset of them (computed here if None). Memory: a few (S, N) int64.
    """
    n_coalitions, n_bg = masks.shape[0], background.shape[0]
    runs = background_run_ids(masks, background) if run_ids is None else run_ids
    key = np.zeros((n_coalitions, n_bg), dtype=np.int64)
    span = 1  # every key is below span
    checked = False
    for a, ids in runs:
        card = int(ids.max()) + 1
        if span > (1 << 62) // card or (not checked and span >= n_bg * n_bg):
            order, first = _sorted_groups(key)
            if first.all():
                break  # every coalition's background rows differ already: nothing left to merge
            key, span, checked = _dense_ranks(key, order, first), n_bg, True
        key = key * card + np.where(masks[:, a, None], 0, ids[None, :])
        span *= card
    order, first = _sorted_groups(key)
    counts = first.sum(axis=1)
    starts = np.zeros(n_coalitions + 1, dtype=np.intp)
    np.cumsum(counts, out=starts[1:])
    heads = np.flatnonzero(first.ravel())
    weight = np.add.reduceat(weights[order].ravel(), heads) if heads.size else np.zeros(0)
    pair_of = np.empty((n_coalitions, n_bg), dtype=np.intp)
    np.put_along_axis(pair_of, order, starts[:-1, None] + np.cumsum(first, axis=1) - 1, axis=1)
    coalition = np.repeat(np.arange(n_coalitions, dtype=np.intp), counts)
    # Each coalition's merged sets in the background's own order (by their first row), not in
    # key order: the model then sees the rows in the order it would without merging (identical
    # when nothing merges), which measured 15% faster for a forest on the wine data.
    first_row = np.asarray(order.ravel()[heads], dtype=np.intp)
    perm = np.lexsort((first_row, coalition))
    position = np.empty_like(perm)
    position[perm] = np.arange(perm.size)
    return CoalitionPairs(coalition, first_row[perm], weight[perm], starts, position[pair_of])


# merge_outside's results kept in this process (a Ray worker runs many tasks of one plan, and
# tasks that split rows share their coalitions): key -> pairs, at most PAIRS_CACHE_SIZE.
_PAIRS_CACHE: dict[bytes, CoalitionPairs] = {}
PAIRS_CACHE_SIZE = 8


def _pairs_key(masks: BoolArray, background: npt.NDArray[np.floating], weights: FloatArray) -> bytes:
    digest = hashlib.blake2b(digest_size=32)
    for array in (masks, background, weights):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.digest()


def _merged_pairs(
    masks: BoolArray,
    background: npt.NDArray[np.floating],
    weights: FloatArray,
    run_ids: Callable[[], list[tuple[int, npt.NDArray[np.intp]]]],
) -> CoalitionPairs:
    """merge_outside, from this process's cache when it has met the same inputs."""
    key = _pairs_key(masks, background, weights)
    pairs = _PAIRS_CACHE.get(key)
    if pairs is None:
        pairs = merge_outside(masks, background, weights, run_ids())
        if len(_PAIRS_CACHE) >= PAIRS_CACHE_SIZE:
            _PAIRS_CACHE.clear()
        _PAIRS_CACHE[key] = pairs
    return pairs


def evaluate_coalitions(
    predict: Predict,
    rows: npt.ArrayLike,
    background: npt.ArrayLike,
    masks: BoolArray,
    *,
    dtype: npt.DTypeLike = np.float64,
    max_rows_per_predict: int = MAX_ROWS_PER_PREDICT,
    weights: FloatArray | None = None,
) -> FloatArray:
    """E over the background of f(x with columns outside the coalition taken from background).

    Returns ey of shape (R, S, K). This is where nearly all the time goes: up to R*S*N model
    rows. ``weights`` (N,), summing to 1, weight the background rows (None: uniform).
    ``dtype`` lets a caller build synthetic rows directly in the dtype the model converts to
    (float32 for scikit-learn trees), which saves a copy without changing any value.

    Three things keep it fast, none changes a model input or a bit of ey: background rows that
    coincide on every column outside a coalition give identical synthetic rows, so the model
    evaluates one of them (``merge_outside``) and its output stands for each of them in the
    mean, which runs over every background row in order as without merging; the rows go to the model in
    blocks of about BLOCK_BYTES, built into one reused buffer (``predict`` must not write into
    its input, as no scikit-learn estimator does), so they are written and read in the CPU's
    cache; and scikit-learn's finiteness scan is skipped on them (their values come from rows
    and background the model already accepted in ``model_outputs``).
    """
    x = np.asarray(rows, dtype=dtype)
    bg = np.asarray(background, dtype=dtype)
    n_rows, n_bg, n_coalitions = x.shape[0], bg.shape[0], masks.shape[0]
    w = np.full(n_bg, 1.0 / max(n_bg, 1)) if weights is None else np.asarray(weights, dtype=np.float64)
    row_bytes = max(1, x.shape[1] * x.itemsize)
    per_call = max(1, min(max_rows_per_predict, max(MIN_ROWS_PER_PREDICT, BLOCK_BYTES // row_bytes)))
    segment = max(1, MERGE_ELEMENTS // max(n_bg, 1))
    ey: FloatArray | None = None
    buffer = np.empty((0, x.shape[1]), dtype=x.dtype)
    with _trusted_inputs():
        run_ids = functools.cache(lambda: background_run_ids(masks, bg))  # once, if needed
        for s0 in range(0, n_coalitions if n_rows else 0, segment):
            pairs = _merged_pairs(masks[s0 : s0 + segment], bg, w, run_ids)
            for c0, c1 in pairs.chunks(per_call):
                t0, t1 = int(pairs.starts[c0]), int(pairs.starts[c1])
                if buffer.shape[0] < t1 - t0:
                    buffer = np.empty((t1 - t0, x.shape[1]), dtype=x.dtype)
                synth = buffer[: t1 - t0]
                # The background side once per block: every explained row overwrites the same
                # cells (the coalition's columns), so the rest stays valid from row to row.
                np.take(bg, pairs.background[t0:t1], axis=0, out=synth)
                inside = masks[s0 + pairs.coalition[t0:t1]]  # (T, M): the columns taken from the row
                expand = pairs.pair_of[c0:c1] - t0  # (C, N): each background row's model row
                for r in range(n_rows):
                    np.copyto(synth, x[r], where=inside)
                    out = model_outputs(predict, synth)
                    if ey is None:
                        ey = np.empty((n_rows, n_coalitions, out.shape[1]))
                    # The mean over every background row in its own order, as shap sums them:
                    # the same rounding as without merging, which matters where the link is
                    # ill-conditioned (a logit of probabilities within 1e-13 of 0 or 1).
                    per_bg = out[expand]  # (C, N, K)
                    ey[r, s0 + c0 : s0 + c1] = (
                        per_bg.mean(axis=1) if weights is None else np.einsum("snk,n->sk", per_bg, w)
                    )
    if ey is None:
        return np.zeros((n_rows, n_coalitions, 0))
    return ey


def _adjusted(
    plan: CoalitionPlan, ey: FloatArray, delta: FloatArray, lfnull: FloatArray, link: Link
) -> FloatArray:
    last = plan.small[:, -1].astype(np.float64)
    return np.asarray(link.apply(ey) - lfnull[None, None, :] - last[None, :, None] * delta[:, None, :])


def solve_phi(
    plan: CoalitionPlan,
    ey: FloatArray,
    fx: FloatArray,
    fnull: FloatArray,
    link: Link = Link.IDENTITY,
) -> FloatArray:
    """SHAP values (R, G, K) of R rows from their coalition expectations ey (R, S, K),
    model outputs fx (R, K) and expected output fnull (K,): one einsum for all rows and outputs."""
    n_rows, n_outputs = fx.shape
    phi = np.zeros((n_rows, plan.players, n_outputs))
    m = len(plan.varying)
    if m == 0:
        return phi
    lfnull = link.apply(fnull)
    delta = link.apply(fx) - lfnull[None, :]
    if m == 1:
        phi[:, plan.varying[0], :] = delta
        return phi
    head = np.matmul(plan.solver, _adjusted(plan, ey, delta, lfnull, link))  # (R, m - 1, K)
    phi[:, plan.varying[:-1], :] = head
    phi[:, plan.varying[-1], :] = delta - head.sum(axis=1)
    return phi


STANDARD_ERROR_CHUNK_BYTES = 64 << 20


def standard_errors(
    plan: CoalitionPlan,
    ey: FloatArray,
    fx: FloatArray,
    fnull: FloatArray,
    link: Link = Link.IDENTITY,
) -> FloatArray:
    """Standard errors (R, G, K) of solve_phi's values; zeros for an exact plan.

    Only the sampled coalitions are random: the n draws (a coalition and its paired
    complement form one draw) are i.i.d., and the estimate is a weighted least squares over
    them. Its variance is the sandwich (M-estimator) variance, as Covert & Lee (2021,
    "Improving KernelSHAP: Practical Shapley Value Estimation via Linear Regression", AISTATS,
    section 4) estimate it for paired sampling: Var(phi) = n Cov_draws(T_u) with T_u the
    draw's term solver[:, u] @ residual[u] / count_u, residuals of the fitted regression, so
    the randomness of the Gram matrix is accounted for to first order. The last varying
    player's value is delta minus the others, so its term is minus their sum.
    """
    n_rows, n_outputs = fx.shape
    se = np.zeros((n_rows, plan.players, n_outputs))
    m = len(plan.varying)
    units, all_counts = plan.units, plan.counts
    if plan.exact or m < 2 or units is None or all_counts is None:
        return se
    sampled = np.flatnonzero(units >= 0)
    if sampled.size < 2:
        return se
    unit_of = units[sampled]
    starts = np.flatnonzero(np.r_[True, unit_of[1:] != unit_of[:-1]])
    sizes = np.diff(np.r_[starts, sampled.size])  # coalitions per draw: 1, or 2 for a pair
    counts = all_counts[sampled][starts]  # draws of each unit (a pair shares its count)
    n = float(counts.sum())
    if n < 2:
        return se
    per_draw = plan.solver[:, sampled] / np.repeat(counts, sizes)[None, :]  # (m - 1, S')
    per_draw = np.vstack([per_draw, -per_draw.sum(axis=0)])  # (m, S'): the last player's term too
    z = plan.small.astype(np.float64)
    design = z[:, :-1] - z[:, -1:]
    lfnull = link.apply(fnull)
    delta = link.apply(fx) - lfnull[None, :]
    # Member i of each draw that has one: (positions in S', the draws).
    members = [(starts[sizes > i] + i, np.flatnonzero(sizes > i)) for i in range(int(sizes.max()))]
    step = max(1, STANDARD_ERROR_CHUNK_BYTES // max(1, 8 * 4 * sampled.size * n_outputs))
    for r0 in range(0, n_rows, step):
        adjusted = _adjusted(plan, ey[r0 : r0 + step], delta[r0 : r0 + step], lfnull, link)
        head = np.matmul(plan.solver, adjusted)  # (r, m - 1, K)
        residual = adjusted[:, sampled, :] - np.matmul(design[sampled], head)  # (r, S', K)
        res = residual.transpose(1, 0, 2).reshape(sampled.size, -1)  # (S', r K)
        # A draw's term is T_u = sum over its members s of per_draw[:, s] res[s]; with weights
        # w_u = counts, sum_u w_u T_u and sum_u w_u T_u^2 are matrix products over the draws.
        first = np.zeros((m, res.shape[1]))
        second = np.zeros((m, res.shape[1]))
        for i, (at_i, draws_i) in enumerate(members):
            first += (per_draw[:, at_i] * counts[draws_i]) @ res[at_i]
            for j in range(i, len(members)):
                draws = np.flatnonzero(sizes > j)
                a, b = starts[draws] + i, starts[draws] + j
                cross = (per_draw[:, a] * per_draw[:, b] * counts[draws]) @ (res[a] * res[b])
                second += cross if i == j else 2.0 * cross
        mean = first / n
        variance = np.maximum(n * (second - n * mean**2) / (n - 1.0), 0.0)  # (m, r K)
        chunk = np.sqrt(variance).reshape(m, -1, n_outputs).transpose(1, 0, 2)  # (r, m, K)
        se[r0 : r0 + step][:, plan.varying, :] = chunk
    return se


@dataclass(frozen=True)
class Explanation:
    values: FloatArray  # (R, G, K); G = M without groups
    expected_value: FloatArray  # (K,), in link space
    exact: bool
    n_coalitions: int
    standard_errors: FloatArray | None = None  # (R, G, K); None when exact


def _finish(
    values: FloatArray, expected: FloatArray, plans: Sequence[CoalitionPlan], errors: FloatArray
) -> Explanation:
    exact = all(plan.exact for plan in plans)
    n_coalitions = max((plan.n_coalitions for plan in plans), default=0)
    return Explanation(values, expected, exact, n_coalitions, None if exact else errors)


def explain(
    predict: Predict,
    rows: npt.ArrayLike,
    background: npt.ArrayLike,
    *,
    nsamples: int | None = None,
    link: Link = Link.IDENTITY,
    seed: int = 0,
    dtype: npt.DTypeLike = np.float64,
    groups: Sequence[Sequence[int]] | None = None,
    background_weights: npt.ArrayLike | None = None,
    tol: float | None = None,
) -> Explanation:
    """Explain rows (R, M) against a background (N, M) in this process; the Ray DAG composes
    the same steps across a cluster. ``groups``: column indices per player (values then have
    shape (R, G, K)); ``background_weights`` (N,): shap's weighted background. ``tol``: keep
    doubling the sampled coalitions (same seed) until the largest standard error is below it,
    or the plan is exact, or MAX_TOL_NSAMPLES is reached.

    Raises PlanTooLargeError when a plan cannot fit PLAN_MEMORY_BUDGET, ValueError for groups
    or weights that do not fit the data.
    """
    x = np.asarray(rows, dtype=np.float64)
    bg, weights = merge_background(background, background_weights)
    players = player_matrix(groups, x.shape[1]) if groups is not None else None
    n_players = x.shape[1] if players is None else players.shape[0]
    fnull = expected_output(predict, bg, weights)
    fx = model_outputs(predict, x)
    budget = resolve_nsamples(nsamples, n_players, x.shape[0], bg.shape[0], fx.shape[1])
    values = np.zeros((x.shape[0], n_players, fx.shape[1]))
    errors = np.zeros_like(values)
    plans: list[CoalitionPlan] = []
    for varying, row_index in group_rows_by_varying(varying_features(x, bg, players)).items():
        n = budget
        cache: dict[bytes, FloatArray] = {}
        while True:
            plan = build_plan(varying, x.shape[1], n, seed, players)
            if tol is None:
                ey = evaluate_coalitions(predict, x[row_index], bg, plan.masks, dtype=dtype, weights=weights)
            else:
                ey = _cached_ey(predict, x[row_index], bg, plan.masks, cache, dtype=dtype, weights=weights)
            values[row_index] = solve_phi(plan, ey, fx[row_index], fnull, link)
            errors[row_index] = standard_errors(plan, ey, fx[row_index], fnull, link)
            n_now = plan.n_coalitions
            if (
                tol is None
                or plan.exact
                or errors[row_index].max(initial=0.0) <= tol
                or n_now >= MAX_TOL_NSAMPLES
            ):
                break
            n = min(2 * max(n_now, default_nsamples(len(varying))), MAX_TOL_NSAMPLES)
            check_plan_fits(n, len(varying), x.shape[1], len(row_index), fx.shape[1], exact=False)
        plans.append(plan)
    return _finish(values, link.apply(fnull), plans, errors)


def _cached_ey(
    predict: Predict,
    rows: FloatArray,
    background: FloatArray,
    masks: BoolArray,
    cache: dict[bytes, FloatArray],
    *,
    dtype: npt.DTypeLike,
    weights: FloatArray,
) -> FloatArray:
    """evaluate_coalitions, reusing the (R, K) expectations of masks seen in an earlier round."""
    keys = [mask.tobytes() for mask in masks]
    new = [i for i, key in enumerate(keys) if key not in cache]
    if new:
        fresh = evaluate_coalitions(predict, rows, background, masks[new], dtype=dtype, weights=weights)
        for j, i in enumerate(new):
            cache[keys[i]] = fresh[:, j, :]
    if not keys:
        return np.zeros((rows.shape[0], 0, 0))
    return np.stack([cache[key] for key in keys], axis=1)


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


def coalitions_per_row(row_blocks: int, most: int, workers: int) -> int:
    """Coalition blocks per row block when the rows per task are fixed: the fewest that give
    every worker the same number of tasks, at least two each (so a slow task can be evened out
    by the others), and at most ``most`` (the count split_work uses without a batch size, which
    is also the answer when no smaller count does).

    Splitting coalitions costs what splitting rows does not: every process computes the
    background merging (``merge_outside``) of each coalition range it meets and calls the model
    on smaller blocks. Measured on the wine scaling benchmark's work in plain processes, two at
    once (benchmarks/ceiling.py): tasks of half the coalitions took 3-6 % longer (summed task
    seconds) than tasks of the same rows with all of them.
    """
    for blocks in range(1, most + 1):
        tasks = row_blocks * blocks
        if tasks % workers == 0 and tasks >= 2 * workers:
            return blocks
    return most


def split_work(
    n_rows: int, n_coalitions: int, n_background: int, workers: int, batch_size: int | None = None
) -> list[Block]:
    """Blocks of rows x coalitions for the Ray tasks.

    Rows are split first, aiming at TASKS_PER_WORKER tasks per worker without making any task
    too small to pay off; coalitions are split only where rows cannot make up the count.
    ``batch_size`` fixes the rows per task: coalitions are then split only as far as needed
    for every worker to get the same number of tasks, at least two (``coalitions_per_row``).
    """
    if n_rows == 0 or n_coalitions == 0:
        return []
    units = n_rows * n_coalitions
    min_units = max(1, math.ceil(MIN_SYNTHETIC_ROWS_PER_TASK / max(n_background, 1)))
    target = max(1, min(TASKS_PER_WORKER * workers, units // min_units))
    fixed_rows = batch_size is not None
    if batch_size is None:
        batch_size = math.ceil(n_rows / min(n_rows, target))
    row_blocks = math.ceil(n_rows / batch_size)
    coalition_blocks = max(1, min(n_coalitions, math.ceil(target / row_blocks)))
    if fixed_rows:
        coalition_blocks = coalitions_per_row(row_blocks, coalition_blocks, workers)
    step = math.ceil(n_coalitions / coalition_blocks)
    return [
        Block(slice(r, min(r + batch_size, n_rows)), slice(c, min(c + step, n_coalitions)))
        for r in range(0, n_rows, batch_size)
        for c in range(0, n_coalitions, step)
    ]
