"""The explainer a Serve replica holds, and the checks of a request's rows. Ray-free.

``app/serve.py`` wires this into Ray Serve; everything here is plain and unit-testable:

* ``load_explainer(options)`` reads the data (columns, types, background) and the model ONCE,
  exactly as the batch job does (``app.etl``, ``app.model``, ``app.model_file``), chooses the
  algorithm with the job's rules and prepares it (the tree path's flattened trees and per-leaf
  background statistics; the kernel path's coalition budget).
* ``parse_rows(payload, explainer, limit)`` checks one request's JSON and turns its rows into
  the (R, M) float64 codes the job's kernels take; every problem is a ``RequestError`` with an
  HTTP status and a message naming the row and the column, or the limit.
* ``explain_codes(explainer, codes)`` explains (R, M) codes with the job's own functions
  (``kernel_shap.explain``, ``tree_shap.explain_rows``): one call for all rows of a batch.

Conventions as in ``app/kernel_shap.py``: R explained rows, M columns, G players (M without
groups), K outputs (classes, or one for a regressor), N background rows.

Coalition budget (kernel path): resolved once per replica with the job's rule
(``kernel_shap.resolve_nsamples``) for the largest call a replica makes (``max_batch_size``
rows), so whether a row is explained exactly never depends on which requests it was batched
with; sampled plans are seeded (``seed``) per set of varying players, as in the job, so a row's
values never depend on its batch either.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from app import etl, kernel_shap, model, model_file, tree_shap
from app import groups as groups_file
from app.contract import DEFAULT_LABEL, Algorithm, Link, ServeOptions
from app.errors import DataError
from app.etl import FLOAT32_MAX
from app.tabular import BOOL, CATEGORY, FLOAT, INT, ModelFunction

FloatArray = npt.NDArray[np.float64]


class RequestError(ValueError):
    """A request the service refuses; ``status`` is its HTTP status (400, 413 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Explainer:
    """What one replica loads once: the model, the background and the prepared algorithm."""

    options: ServeOptions
    names: tuple[str, ...]  # (M,) the columns a row must have, in the model's order
    kinds: tuple[str, ...]  # (M,) FLOAT, INT, BOOL or CATEGORY
    categories: tuple[tuple[str, ...], ...]  # (M,) the known values of each CATEGORY column
    fitted: ModelFunction  # (R, M) codes -> (R, K) outputs, as the job calls the model
    background: FloatArray  # (N, M) codes
    classes: tuple[str, ...]  # (K,)
    players: tuple[str, ...]  # (G,) names of the value columns
    player_columns: tuple[tuple[int, ...], ...] | None  # (G,) columns of each group; None: no groups
    algorithm: str  # "kernel" or "tree"
    algorithm_reason: str
    explains: str  # what the values are of, e.g. "probability of each class (predict_proba)"
    nsamples: int | None  # kernel: the resolved coalition budget (None: shap's default 2G + 2048)
    tree_model: tree_shap.TreeModel | None = None
    tree_stats: tree_shap.BackgroundStats | None = None

    def encode(self, frame: pd.DataFrame) -> FloatArray:
        """(R, M) codes of checked rows, with the data's own codec (as ``--explain`` rows are)."""
        codec = self.fitted.codec
        if codec is None:
            return frame[list(self.names)].to_numpy(dtype=np.float64)
        return codec.encode(frame[list(self.names)])


def _background(options: ServeOptions, dataset: etl.Dataset) -> FloatArray:
    """The job's background: a seeded sample of --background rows of --background-data (all when
    it has fewer, as ``dag.rows_from_files`` draws it), else of the data's training split."""
    if options.background_data:
        codes = etl.load_rows(options.background_data, dataset, "--background-data")
        if options.background < len(codes):
            rng = np.random.default_rng(options.seed)
            codes = codes[np.sort(rng.choice(len(codes), size=options.background, replace=False))]
        return codes
    split = model.split_data(dataset, options.test_size, options.seed)
    return model.get_data_to_explain(split, 1, options.background, options.seed).background


def _tree_target(fitted: ModelFunction) -> Any:
    """The estimator the tree path can read: the user's model itself when the codes are its input
    values (numbers only); None for a Pipeline over text or boolean columns."""
    codec = fitted.codec
    if codec is None or set(codec.kinds) <= {FLOAT, INT}:
        return fitted.estimator
    return None


def _choose(options: ServeOptions, fitted: ModelFunction) -> tuple[str, str]:
    """The job's rules (``dag._choose_algorithm``): auto takes the tree path for a supported
    tree ensemble unless the link or groups need KernelSHAP. Raises UnsupportedModelError."""
    if options.algorithm == Algorithm.AUTO and options.link is not Link.IDENTITY:
        return (
            "kernel",
            f"auto: --link {options.link} needs KernelSHAP (the tree path explains the raw output)",
        )
    if options.algorithm == Algorithm.AUTO and options.groups:
        return "kernel", "auto: --groups needs KernelSHAP"
    target = _tree_target(fitted)
    if target is None and options.algorithm == Algorithm.AUTO:
        return "kernel", "auto: the model reads text or boolean columns, so exact KernelSHAP runs"
    return tree_shap.choose_algorithm(str(options.algorithm), fitted if target is None else target)


def load_explainer(options: ServeOptions) -> Explainer:
    """Read the data and the model and prepare the explainer (once per replica).

    Raises DataError (a file, column or model that cannot work, with the job's messages),
    UnsupportedModelError, or kernel_shap.PlanTooLargeError when a batch of ``max_batch_size``
    rows could not fit the plan memory budget.
    """
    source = options.data or options.background_data
    assert source is not None  # ServeOptions requires one of them
    label = options.label or DEFAULT_LABEL
    dataset = etl.load_dataset(source, label, options.features, label_required=options.label is not None)
    assert options.model is not None  # ServeOptions requires it
    fitted = model.explained_model(
        model_file.load_model(options.model, options.trust_model), dataset, options.model
    )
    background = _background(options, dataset)
    names = tuple(str(c) for c in dataset.features.columns)
    codec = dataset.codec
    kinds = codec.kinds if codec is not None else (FLOAT,) * len(names)
    categories = codec.categories if codec is not None else ((),) * len(names)
    classes = tuple(str(c) for c in fitted.classes_)
    algorithm, reason = _choose(options, fitted)
    spec = groups_file.load_groups(options.groups, list(names)) if options.groups else None
    players = names if spec is None else spec.names
    common: dict[str, Any] = {
        "options": options,
        "names": names,
        "kinds": kinds,
        "categories": categories,
        "fitted": fitted,
        "background": background,
        "classes": classes,
        "players": tuple(players),
        "player_columns": None if spec is None else spec.columns,
        "algorithm": algorithm,
        "algorithm_reason": reason,
    }
    if algorithm == "tree":
        with warnings.catch_warnings():  # the trees read the codes as a matrix, named or not
            warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning)
            tree_model = tree_shap.prepare_model(_tree_target(fitted), background)
        stats = tree_shap.background_stats(tree_model, background)
        return Explainer(
            **common,
            explains=tree_model.ensemble.output,
            nsamples=None,
            tree_model=tree_model,
            tree_stats=stats,
        )
    merged, _ = kernel_shap.merge_background(background, None)
    nsamples = kernel_shap.resolve_nsamples(
        options.nsamples, len(players), options.max_batch_size, len(merged), len(classes)
    )
    output = "prediction (predict)" if fitted.regression else "probability of each class (predict_proba)"
    if options.link is Link.LOGIT:
        output = f"log-odds (logit link) of the {output}"
    return Explainer(**common, explains=output, nsamples=nsamples)


def _cell_error(row: int, column: str, message: str) -> RequestError:
    return RequestError(422, f"rows[{row}]: column {column!r} {message}")


def _check_cell(explainer: Explainer, j: int, value: Any, row: int) -> Any:
    """The value of one cell, checked against its column's kind; RequestError(422) otherwise."""
    name, kind = explainer.names[j], explainer.kinds[j]
    if kind == CATEGORY:
        if not isinstance(value, str):
            raise _cell_error(row, name, f"takes text, got {value!r}")
        if value not in explainer.categories[j]:
            known = ", ".join(repr(v) for v in explainer.categories[j][:10])
            raise _cell_error(row, name, f"has no value {value!r} in the data; known values: {known}")
        return value
    if kind == BOOL:
        if not isinstance(value, bool):
            raise _cell_error(row, name, f"takes true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _cell_error(row, name, f"takes a number, got {value!r}")
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise _cell_error(
            row, name, f"takes a finite number within +-3.4e38 (float32's range), got {value!r}"
        )
    if kind == INT and float(value) != int(value):
        raise _cell_error(row, name, f"takes a whole number, got {value!r}")
    return value


def parse_rows(payload: Any, explainer: Explainer, limit: int) -> FloatArray:
    """(R, M) codes of a request's JSON ``{"rows": [{column: value, ...}, ...]}``.

    Raises RequestError: 422 for a body of the wrong shape, no rows, a missing or extra column,
    a cell of the wrong type, a non-finite number or an unknown text value (naming the row and
    the column); 413 for more than ``limit`` rows.
    """
    if not isinstance(payload, Mapping) or set(payload) != {"rows"}:
        got = sorted(payload) if isinstance(payload, Mapping) else type(payload).__name__
        raise RequestError(422, f'the body must be {{"rows": [{{column: value, ...}}, ...]}}, got {got}')
    rows = payload["rows"]
    if not isinstance(rows, Sequence) or isinstance(rows, str):
        raise RequestError(
            422, f'"rows" must be a list of objects (column -> value), got {type(rows).__name__}'
        )
    if not rows:
        raise RequestError(422, '"rows" is empty: send at least one row')
    if len(rows) > limit:
        raise RequestError(
            413, f"{len(rows)} rows in one request; the limit is {limit} (max_rows_per_request): split it"
        )
    expected = set(explainer.names)
    cells: list[list[Any]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise RequestError(
                422, f"rows[{i}] must be an object (column -> value), got {type(row).__name__}"
            )
        missing = [name for name in explainer.names if name not in row]
        extra = sorted(str(name) for name in row if name not in expected)
        if missing or extra:
            parts = [f"missing column(s) {', '.join(map(repr, missing))}"] if missing else []
            parts += [f"extra column(s) {', '.join(map(repr, extra))}"] if extra else []
            raise RequestError(
                422, f"rows[{i}]: {'; '.join(parts)}; the columns are {', '.join(explainer.names)}"
            )
        cells.append([_check_cell(explainer, j, row[name], i) for j, name in enumerate(explainer.names)])
    frame = pd.DataFrame(cells, columns=list(explainer.names), dtype=object)
    try:
        return explainer.encode(frame)
    except (DataError, ValueError, TypeError) as err:  # checked above; a safety net naming the cause
        raise RequestError(422, f"rows do not fit the data's column types: {err}") from None


@dataclass(frozen=True)
class Explained:
    """The explanation of R rows (one explainer call)."""

    values: FloatArray  # (R, G, K), in the link's space
    expected_value: FloatArray  # (K,)
    model_output: FloatArray  # (R, K): f(x) in the link's space (sum of values + expected value)
    standard_errors: FloatArray | None  # (R, G, K); None when exact
    exact: bool
    n_coalitions: int  # kernel path: the largest plan's coalitions; tree path: 0


def explain_codes(explainer: Explainer, codes: FloatArray) -> Explained:
    """Explain (R, M) codes in one call with the batch job's functions. Raises ValueError on a
    non-finite output (the tree path) or kernel_shap.PlanTooLargeError (cannot happen below
    ``max_batch_size`` rows: the budget was checked for them)."""
    if explainer.algorithm == "tree":
        assert explainer.tree_model is not None and explainer.tree_stats is not None
        values, outputs = tree_shap.explain_rows(explainer.tree_model, explainer.tree_stats, codes)
        return Explained(values, np.asarray(explainer.tree_stats.expected_value), outputs, None, True, 0)
    options = explainer.options
    predict = explainer.fitted.predict_proba
    result = kernel_shap.explain(
        predict,
        codes,
        explainer.background,
        nsamples=explainer.nsamples,
        link=options.link,
        seed=options.seed,
        dtype=model.input_dtype(explainer.fitted),
        groups=explainer.player_columns,
    )
    outputs = options.link.apply(kernel_shap.model_outputs(predict, codes))
    return Explained(
        result.values,
        result.expected_value,
        outputs,
        result.standard_errors,
        result.exact,
        result.n_coalitions,
    )


def row_response(explainer: Explainer, explained: Explained, r: int) -> dict[str, Any]:
    """Row r of an explanation as JSON: class -> values per player, expected value, model output
    and (sampling mode) standard errors per player."""
    out: dict[str, Any] = {}
    for k, cls in enumerate(explainer.classes):
        entry: dict[str, Any] = {
            "values": {p: float(explained.values[r, g, k]) for g, p in enumerate(explainer.players)},
            "expected_value": float(explained.expected_value[k]),
            "model_output": float(explained.model_output[r, k]),
        }
        if explained.standard_errors is not None:
            se = explained.standard_errors
            entry["standard_errors"] = {p: float(se[r, g, k]) for g, p in enumerate(explainer.players)}
        out[cls] = entry
    return out
