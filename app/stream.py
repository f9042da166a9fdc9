"""Explaining many rows in blocks: the rule that switches a run to streaming, where a block of rows
comes from, how a block is explained and written as a Parquet part, and the streamed aggregates.

Ray-free (the Ray Data wiring is in app/dag.py). Conventions: R rows of a block, M features,
G players (M, or the groups of --groups), K model outputs.

A run streams when it explains more than STREAM_MIN_ROWS rows. The rows are then cut into blocks
of BLOCK_ROWS (or --batch-size) rows; each block is read from its source by the worker that
explains it (a row range of the --explain file, or of the data's test split), explained with the
same coalition plans, seed and background as the in-memory path (so each value is bit for bit the
value the in-memory run gives), and written as ``shap_values.parts/rows-<start>-<stop>.parquet``
(with ``shap_standard_errors.parts/`` in sampling mode). A part is written atomically, so a part
that exists is complete: a rerun with the same --run-id reads it back instead of recomputing it.
What the run writes at the end comes from per-part sums (mean |SHAP value| per player and class,
the largest additivity error) and from the first rows read back from the parts (the plots, and
shap.KernelExplainer's comparison on the first REFERENCE_ROWS rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from app import etl, kernel_shap, results
from app.contract import Link
from app.tabular import ColumnCodec

if TYPE_CHECKING:  # numba loads with it: precheck, which imports this module, must stay fast
    from app import tree_shap

STREAM_MIN_ROWS = 20_000  # a run explaining more rows than this streams (at most 20,000 x K CSV lines)
BLOCK_ROWS = 5_000  # rows per part, unless --batch-size says otherwise
REFERENCE_ROWS = 16  # shap.KernelExplainer's comparison runs on the first rows only
PLOT_ROWS = 1_000  # the beeswarm and waterfall show the first rows; the bar chart shows all
PROGRESS_SECONDS = 5.0  # at most one progress line this often (plus the first and the last)
VALUES_PARTS = "shap_values.parts"
ERRORS_PARTS = "shap_standard_errors.parts"
_EXACT, _COALITIONS = "shapcluster.exact", "shapcluster.coalitions"  # a part's plan, in its metadata


def streams(n_rows: int) -> bool:
    """The switch: True when ``n_rows`` rows to explain are more than STREAM_MIN_ROWS."""
    return n_rows > STREAM_MIN_ROWS


def blocks(start: int, stop: int, block_rows: int | None = None) -> list[tuple[int, int]]:
    """Row ranges [a, b) of at most ``block_rows`` (default BLOCK_ROWS) covering [start, stop)."""
    size = max(1, block_rows or BLOCK_ROWS)
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


def part_name(start: int, stop: int) -> str:
    """The part of rows [start, stop): a rerun finds it by this name."""
    return f"rows-{start:010d}-{stop:010d}.parquet"


@dataclass(frozen=True)
class RowSource:
    """Where the rows to explain come from, readable by range in any worker.

    Either a local ``path`` (CSV or Parquet, --explain) whose rows are coded with ``codec``, or the
    data's test split (``split`` holds x_test, test_index, y_test), whose rows are already codes.
    ``csv_lines``: the row's 1-based CSV line is written as data_line (None for Parquet and the
    bundled data).
    """

    names: tuple[str, ...]  # (M,)
    codec: ColumnCodec | None
    csv_lines: bool
    path: str | None = None
    split: Any = None  # model.Split, or None for a file

    def read(self, start: int, stop: int) -> results.BlockRows:
        if self.path is not None:
            codes = etl.read_row_range(self.path, list(self.names), self.codec, start, stop)
            ids = np.arange(start, stop, dtype=np.int64)
            return results.BlockRows(codes, ids, ids + 2 if self.csv_lines else None, None)
        split = self.split
        ids = np.asarray(split.test_index[start:stop], dtype=np.int64)
        labels = np.asarray(split.y_test[start:stop])
        lines = ids + 2 if self.csv_lines else None
        return results.BlockRows(np.asarray(split.x_test[start:stop], dtype=np.float64), ids, lines, labels)


@dataclass(frozen=True)
class BlockSpec:
    """What every block's explanation needs; the same for every block, so a row's values do not
    depend on its block. ``nsamples``: KernelSHAP's budget, resolved once for the run (the tree
    path uses only the names)."""

    background: npt.NDArray[np.float64]  # (N, M), as sampled (merged into weights per block)
    background_weights: npt.NDArray[np.float64] | None
    nsamples: int | None
    link: Link
    seed: int
    players: npt.NDArray[np.bool_] | None  # (G, M) or None
    player_names: tuple[str, ...]  # (G,)
    class_names: tuple[str, ...]  # (K,)


@dataclass
class BlockExplainer:
    """KernelSHAP of blocks of rows in one process, with each varying set's plan built once."""

    spec: BlockSpec
    _plans: dict[tuple[int, ...], kernel_shap.CoalitionPlan] = field(default_factory=dict)

    def explain(
        self, predict: kernel_shap.Predict, rows: npt.NDArray[np.float64], dtype: Any
    ) -> tuple[kernel_shap.Explanation, npt.NDArray[np.float64]]:
        """(Explanation with values (R, G, K), outputs (R, K) in link space). The steps and their
        order are the in-memory path's (app.dag: outputs_step, coalition blocks, _solve_ours)."""
        spec = self.spec
        bg, weights = kernel_shap.merge_background(spec.background, spec.background_weights)
        fnull = kernel_shap.expected_output(predict, bg, weights)
        fx = kernel_shap.model_outputs(predict, rows)
        n_players = rows.shape[1] if spec.players is None else spec.players.shape[0]
        values = np.zeros((len(rows), n_players, fx.shape[1]))
        errors = np.zeros_like(values)
        used = []
        varying_sets = kernel_shap.varying_features(rows, bg, spec.players)
        for varying, row_index in kernel_shap.group_rows_by_varying(varying_sets).items():
            if varying not in self._plans:
                self._plans[varying] = kernel_shap.build_plan(
                    varying, rows.shape[1], spec.nsamples, spec.seed, spec.players
                )
            plan = self._plans[varying]
            used.append(plan)
            ey = kernel_shap.evaluate_coalitions(
                predict, rows[row_index], bg, plan.masks, dtype=dtype, weights=weights
            )
            values[row_index] = kernel_shap.solve_phi(plan, ey, fx[row_index], fnull, spec.link)
            errors[row_index] = kernel_shap.standard_errors(plan, ey, fx[row_index], fnull, spec.link)
        exact = all(plan.exact for plan in used)
        n_coalitions = max((plan.n_coalitions for plan in used), default=0)
        explanation = kernel_shap.Explanation(
            values, spec.link.apply(fnull), exact, n_coalitions, None if exact else errors
        )
        return explanation, np.asarray(spec.link.apply(fx), dtype=np.float64)


@dataclass
class TreeBlockExplainer:
    """The exact tree path (app.tree_shap) on blocks of rows, with the trees and the background's
    per-leaf statistics prepared once."""

    spec: BlockSpec
    tree_model: tree_shap.TreeModel
    stats: tree_shap.BackgroundStats

    def explain(
        self, predict: kernel_shap.Predict, rows: npt.NDArray[np.float64], dtype: Any
    ) -> tuple[kernel_shap.Explanation, npt.NDArray[np.float64]]:
        """(Explanation with values (R, M, K), outputs (R, K)); ``predict``/``dtype`` unused."""
        from app import tree_shap

        values, outputs = tree_shap.explain_rows(self.tree_model, self.stats, rows)
        expected = np.asarray(self.stats.expected_value, dtype=np.float64)
        return kernel_shap.Explanation(values, expected, True, 0), outputs


@dataclass(frozen=True)
class PartStats:
    """What the driver keeps of a part: sizes and sums, never values. ``abs_sum`` (K, G)."""

    start: int
    stop: int
    computed: bool  # False: the part existed and was read back
    seconds: float
    abs_sum: npt.NDArray[np.float64]
    additivity: float  # the largest |sum of values - (output - expected value)| in the part
    exact: bool
    n_coalitions: int

    def to_row(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "stop": self.stop,
            "computed": self.computed,
            "seconds": self.seconds,
            "abs_sum": self.abs_sum.reshape(-1),
            "additivity": self.additivity,
            "exact": self.exact,
            "n_coalitions": self.n_coalitions,
        }


def part_stats(
    frame: pd.DataFrame,
    player_names: Sequence[str],
    n_classes: int,
    computed: bool,
    seconds: float,
    **plan: Any,
) -> PartStats:
    """The sums of a part's values table (as results.values_frame lays it out: a line per row and
    class, class fastest), computed the same way whether the part was just written or read back."""
    flat = frame[list(player_names)].to_numpy(dtype=np.float64)
    n_rows = len(flat) // n_classes
    per_class = flat.reshape(n_rows, n_classes, len(player_names))
    gap = flat.sum(axis=1) - (frame["model_output"].to_numpy() - frame["expected_value"].to_numpy())
    return PartStats(
        start=int(plan["start"]),
        stop=int(plan["stop"]),
        computed=computed,
        seconds=seconds,
        abs_sum=np.abs(per_class).sum(axis=0),
        additivity=float(np.max(np.abs(gap), initial=0.0)),
        exact=bool(plan.get("exact", True)),
        n_coalitions=int(plan.get("n_coalitions", 0)),
    )


def explain_part(
    out_dir: Path,
    source: RowSource,
    explainer: BlockExplainer | TreeBlockExplainer,
    predict: kernel_shap.Predict,
    dtype: Any,
    start: int,
    stop: int,
) -> PartStats:
    """Explain rows [start, stop) and write their part(s), or read back the part a previous run
    with this run id wrote. Raises DataError for a bad row of the source."""
    import time

    began = time.perf_counter()
    spec = explainer.spec
    path = out_dir / VALUES_PARTS / part_name(start, stop)
    if path.exists():
        frame = pd.read_parquet(path)
        meta = results.parquet_metadata(path)
        return part_stats(
            frame,
            spec.player_names,
            len(spec.class_names),
            False,
            0.0,
            start=start,
            stop=stop,
            exact=meta.get(_EXACT, "true") == "true",
            n_coalitions=int(meta.get(_COALITIONS, "0")),
        )
    block = source.read(start, stop)
    explanation, outputs = explainer.explain(predict, block.codes, dtype)
    rows = block.explained(source.names, outputs, explanation.expected_value, spec.class_names, source.codec)
    if explanation.standard_errors is not None:  # first: the values part marks the block done
        results.write_parquet(
            out_dir / ERRORS_PARTS / part_name(start, stop),
            results.values_frame(explanation.standard_errors, rows, spec.player_names),
        )
    frame = results.values_frame(explanation.values, rows, spec.player_names)
    plan = {_EXACT: str(explanation.exact).lower(), _COALITIONS: str(explanation.n_coalitions)}
    results.write_parquet(path, frame, plan)
    return part_stats(
        frame,
        spec.player_names,
        len(spec.class_names),
        True,
        time.perf_counter() - began,
        start=start,
        stop=stop,
        exact=explanation.exact,
        n_coalitions=explanation.n_coalitions,
    )


@dataclass(frozen=True)
class StreamTotals:
    """The run's streamed aggregates, summed over the parts in row order (deterministic)."""

    rows: int
    parts: int
    parts_computed: int
    mean_abs: npt.NDArray[np.float64]  # (G, K): mean |SHAP value| over every row
    additivity: float
    exact: bool
    n_coalitions: int
    seconds: float  # CPU seconds of the parts computed in this run


def totals(stats: Sequence[PartStats]) -> StreamTotals:
    ordered = sorted(stats, key=lambda s: s.start)
    n_rows = sum(s.stop - s.start for s in ordered)
    abs_sum = np.zeros_like(ordered[0].abs_sum) if ordered else np.zeros((0, 0))
    for part in ordered:
        abs_sum = abs_sum + part.abs_sum
    return StreamTotals(
        rows=n_rows,
        parts=len(ordered),
        parts_computed=sum(s.computed for s in ordered),
        mean_abs=(abs_sum / max(n_rows, 1)).T,
        additivity=max((s.additivity for s in ordered), default=0.0),
        exact=all(s.exact for s in ordered),
        n_coalitions=max((s.n_coalitions for s in ordered), default=0),
        seconds=sum(s.seconds for s in ordered),
    )


def read_first_rows(
    out_dir: Path, parts: Sequence[tuple[int, int]], n_rows: int, n_classes: int, folder: str = VALUES_PARTS
) -> pd.DataFrame:
    """The values table of the first ``n_rows`` streamed rows, read back from the first parts."""
    frames, have = [], 0
    for start, stop in parts:
        if have >= n_rows:
            break
        frame = pd.read_parquet(out_dir / folder / part_name(start, stop))
        frames.append(frame)
        have += stop - start
    frame = pd.concat(frames, ignore_index=True)
    return frame.iloc[: n_rows * n_classes].reset_index(drop=True)


def values_of(frame: pd.DataFrame, player_names: Sequence[str], n_classes: int) -> npt.NDArray[np.float64]:
    """(R, G, K) values of a values table (the inverse of results.values_frame's layout)."""
    flat = frame[list(player_names)].to_numpy(dtype=np.float64)
    return flat.reshape(-1, n_classes, len(player_names)).transpose(0, 2, 1).copy()


def progress_line(done: int, total: int, computed: int, elapsed: float) -> str:
    """'rows done/total (share), rows per second, time left' (the rate over rows computed in
    this run: parts read back from an earlier run cost nothing)."""
    rate = computed / elapsed if elapsed > 0 else 0.0
    left = (total - done) / rate if rate > 0 else float("nan")
    eta = "unknown" if not np.isfinite(left) else _duration(left)
    share = 100 * done // max(total, 1)
    return f"  streamed {done:,}/{total:,} rows ({share}%), {rate:,.0f} rows/s, {eta} left"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
