"""Compare our SHAP values with the reference: differences both ways, additivity, a verdict.

Without the reference (``--no-reference``) only our additivity can be checked: ``check_ours``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


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

    @property
    def verdict(self) -> str:
        return "match" if self.match else "MISMATCH"

    def to_dict(self) -> dict[str, float | bool | str]:
        return {"skipped": False, **asdict(self), "verdict": self.verdict}


@dataclass(frozen=True)
class AdditivityCheck:
    """Our values checked alone, the reference explainer skipped: additivity is all there is."""

    tolerance: float
    additivity_error_ours: float
    match: bool  # our values add up within the tolerance: the only check that ran passed

    @property
    def verdict(self) -> str:
        return "additive" if self.match else "NOT ADDITIVE"

    def to_dict(self) -> dict[str, float | bool | str]:
        return {
            "skipped": True,
            "reason": "--no-reference: shap.KernelExplainer did not run",
            **asdict(self),
            "verdict": self.verdict,
        }


def additivity_error(values: FloatArray, expected: FloatArray, outputs: FloatArray) -> float:
    """Local accuracy: the values of each row and class add up to f(x) - E[f]."""
    return float(np.abs(values.sum(axis=1) + expected[None, :] - outputs).max(initial=0.0))


def check_ours(
    ours: FloatArray, ours_expected: FloatArray, outputs: FloatArray, tolerance: float = 1e-6
) -> AdditivityCheck:
    """Shapes as in compare_results, for a run without the reference."""
    error = additivity_error(ours, ours_expected, outputs)
    return AdditivityCheck(tolerance=tolerance, additivity_error_ours=error, match=bool(error <= tolerance))


def compare_results(
    ours: FloatArray,
    ours_expected: FloatArray,
    reference: FloatArray,
    reference_expected: FloatArray,
    outputs: FloatArray,
    tolerance: float = 1e-6,
) -> Comparison:
    """ours/reference: (R, M, K) values; *_expected: (K,); outputs: model outputs f(x), (R, K)."""
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: ours {ours.shape}, reference {reference.shape}")
    diff = ours - reference
    over = float(diff.max(initial=0.0))
    under = float((-diff).max(initial=0.0))
    expected_diff = float(np.abs(ours_expected - reference_expected).max(initial=0.0))
    add_ours = additivity_error(ours, ours_expected, outputs)
    add_ref = additivity_error(reference, reference_expected, outputs)
    worst = max(over, under, expected_diff, add_ours)
    return Comparison(
        tolerance=tolerance,
        max_abs_diff=max(over, under),
        max_ours_minus_reference=over,
        max_reference_minus_ours=under,
        expected_value_diff=expected_diff,
        additivity_error_ours=add_ours,
        additivity_error_reference=add_ref,
        match=bool(worst <= tolerance),
    )
