"""Compare our SHAP values with the reference: differences both ways, additivity, a verdict.

Without the reference (``--no-reference``) only our additivity can be checked: ``check_ours``.

Any non-finite number (ours, the reference's, an additivity error) is a mismatch, never a value
to compare. In sampling mode each difference is judged against the standard errors: a value
matches when |ours - reference| <= tolerance + z * sqrt(se_ours^2 + se_reference^2), with z
chosen by Bonferroni so that a correct run of n compared values fails with probability below
``FALSE_MISMATCH_RATE``: z = Phi^-1(1 - rate / (2n)). shap samples with the same scheme and
budget as ours, so its standard errors are taken to be ours.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
FALSE_MISMATCH_RATE = 1e-3


def z_for(n_values: int, rate: float = FALSE_MISMATCH_RATE) -> float:
    """Two-sided Bonferroni z for n_values comparisons at family-wise error ``rate``."""
    return NormalDist().inv_cdf(1.0 - rate / (2.0 * max(n_values, 1)))


def _json_number(value: float | None) -> float | None:
    """Strict JSON has no NaN or infinity: a non-finite number is written as null."""
    return value if value is None or math.isfinite(value) else None


def _strict(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _json_number(v) if isinstance(v, float) else v for k, v in data.items()}


@dataclass(frozen=True)
class Comparison:
    tolerance: float
    max_abs_diff: float  # max |ours - reference| over rows, features and classes
    max_ours_minus_reference: float
    max_reference_minus_ours: float
    expected_value_diff: float  # max |E_ours - E_reference| over classes
    additivity_error_ours: float  # max |sum(phi) + E - f(x)| over rows and classes
    additivity_error_reference: float
    match: bool
    non_finite: list[str] = field(default_factory=list)  # which inputs held NaN or infinity
    standard_error_z: float | None = None  # sampling mode: the z of the error-bar check
    max_z: float | None = None  # sampling mode: max |ours - reference| / sqrt(se_o^2 + se_r^2)
    # Players shap's np.allclose rule calls constant though they vary: name -> explanation.
    reference_constant: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "match" if self.match else "MISMATCH"

    @property
    def reasons(self) -> list[str]:
        """Why the verdict is a mismatch, one line each (empty on a match)."""
        if self.match:
            return []
        lines = [f"non-finite values in {', '.join(self.non_finite)}"] if self.non_finite else []
        lines += [f"shap zeroes '{name}': {why}" for name, why in self.reference_constant.items()]
        return lines

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"skipped": False, **_strict(data), "verdict": self.verdict, "reasons": self.reasons}


@dataclass(frozen=True)
class AdditivityCheck:
    """Our values checked alone, the reference explainer skipped: additivity is all there is."""

    tolerance: float
    additivity_error_ours: float
    match: bool  # our values add up within the tolerance: the only check that ran passed

    @property
    def verdict(self) -> str:
        return "additive" if self.match else "NOT ADDITIVE"

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped": True,
            "reason": "--no-reference: shap.KernelExplainer did not run",
            **_strict(asdict(self)),
            "verdict": self.verdict,
        }


def additivity_error(values: FloatArray, expected: FloatArray, outputs: FloatArray) -> float:
    """Local accuracy: the values of each row and class add up to f(x) - E[f]; NaN if any
    input is not finite (so that it can never pass a tolerance)."""
    error = np.abs(values.sum(axis=1) + expected[None, :] - outputs)
    if not np.isfinite(error).all():
        return math.nan
    return float(error.max(initial=0.0))


def check_ours(
    ours: FloatArray, ours_expected: FloatArray, outputs: FloatArray, tolerance: float = 1e-6
) -> AdditivityCheck:
    """Shapes as in compare_results, for a run without the reference."""
    error = additivity_error(ours, ours_expected, outputs)
    return AdditivityCheck(tolerance=tolerance, additivity_error_ours=error, match=bool(error <= tolerance))


def _max_or_nan(array: FloatArray) -> float:
    return float(array.max(initial=0.0)) if np.isfinite(array).all() else math.nan


def compare_results(
    ours: FloatArray,
    ours_expected: FloatArray,
    reference: FloatArray,
    reference_expected: FloatArray,
    outputs: FloatArray,
    tolerance: float = 1e-6,
    *,
    standard_errors: FloatArray | None = None,
    reference_constant: dict[str, str] | None = None,
) -> Comparison:
    """ours/reference: (R, G, K) values; *_expected: (K,); outputs: model outputs f(x) in link
    space, (R, K). ``standard_errors`` (R, G, K): ours in sampling mode (None: exact, the
    values must agree to ``tolerance``). ``reference_constant``: players shap's rule zeroes
    though ours does not, with the reason, reported as the cause of a mismatch."""
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: ours {ours.shape}, reference {reference.shape}")
    inputs = {
        "ours": (ours, ours_expected),
        "reference": (reference, reference_expected),
        "model outputs": (outputs, outputs),
    }
    non_finite = [name for name, arrays in inputs.items() if not all(np.isfinite(a).all() for a in arrays)]
    diff = ours - reference
    over = _max_or_nan(diff)
    under = _max_or_nan(-diff)
    expected_diff = _max_or_nan(np.abs(ours_expected - reference_expected))
    add_ours = additivity_error(ours, ours_expected, outputs)
    add_ref = additivity_error(reference, reference_expected, outputs)
    checks = [expected_diff, add_ours]
    z: float | None = None
    max_z: float | None = None
    if standard_errors is None:
        checks += [over, under]
        values_ok = True
    else:
        z = z_for(diff.size)
        combined = np.sqrt(2.0) * standard_errors  # the reference's error is taken to be ours
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(np.abs(diff) <= tolerance, 0.0, np.abs(diff) / combined)
        max_z = _max_or_nan(ratio)
        values_ok = bool(np.all(np.abs(diff) <= tolerance + z * combined)) and bool(
            np.isfinite(standard_errors).all()
        )
    worst = max(checks)
    match = not non_finite and values_ok and bool(worst <= tolerance) and not math.isnan(add_ref)
    return Comparison(
        tolerance=tolerance,
        max_abs_diff=max(over, under) if not (math.isnan(over) or math.isnan(under)) else math.nan,
        max_ours_minus_reference=over,
        max_reference_minus_ours=under,
        expected_value_diff=expected_diff,
        additivity_error_ours=add_ours,
        additivity_error_reference=add_ref,
        match=match,
        non_finite=non_finite,
        standard_error_z=z,
        max_z=max_z,
        reference_constant={} if match else dict(reference_constant or {}),
    )
