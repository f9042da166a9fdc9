from __future__ import annotations

import json

import numpy as np
import pytest

from app.compare import check_ours, compare_results, z_for

RNG = np.random.default_rng(0)


def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = RNG.normal(size=(4, 5, 3))
    expected = RNG.normal(size=3)
    outputs = values.sum(axis=1) + expected
    return values, expected, outputs


def test_identical_values_match():
    values, expected, outputs = case()
    result = compare_results(values, expected, values.copy(), expected.copy(), outputs)
    assert result.match and result.verdict == "match"
    assert result.max_abs_diff == 0 and result.additivity_error_ours < 1e-12


def test_differences_are_measured_in_both_directions():
    values, expected, outputs = case()
    reference = values.copy()
    reference[0, 1, 2] += 3e-6  # reference above ours
    reference[2, 0, 0] -= 5e-6  # reference below ours
    result = compare_results(values, expected, reference, expected, outputs, tolerance=1e-6)
    assert result.max_reference_minus_ours == pytest.approx(3e-6)
    assert result.max_ours_minus_reference == pytest.approx(5e-6)
    assert result.max_abs_diff == pytest.approx(5e-6)
    assert not result.match and result.verdict == "MISMATCH"
    assert compare_results(values, expected, reference, expected, outputs, tolerance=1e-5).match


def test_broken_additivity_is_a_mismatch_even_when_values_agree():
    values, expected, outputs = case()
    shifted = outputs + 1e-3  # e.g. a wrong expected value on both sides
    result = compare_results(values, expected, values, expected, shifted)
    assert result.additivity_error_ours == pytest.approx(1e-3)
    assert not result.match


def test_shapes_must_agree():
    values, expected, outputs = case()
    with pytest.raises(ValueError, match="shapes differ"):
        compare_results(values, expected, values[:, :4], expected, outputs)


@pytest.mark.parametrize("where", ["ours", "reference", "outputs", "expected"])
def test_any_non_finite_value_is_a_mismatch(where):
    """Fault 1: a NaN (e.g. in the additivity check) used to pass as match=True."""
    values, expected, outputs = case()
    ours, reference, ours_expected = values.copy(), values.copy(), expected.copy()
    {"ours": ours, "reference": reference, "outputs": outputs, "expected": ours_expected}[where].flat[0] = (
        np.nan
    )
    result = compare_results(ours, ours_expected, reference, expected, outputs)
    assert not result.match and result.non_finite
    assert result.reasons and "non-finite" in result.reasons[0]
    json.dumps(result.to_dict(), allow_nan=False)  # strict JSON: NaN written as null


def test_check_ours_alone_fails_on_nan():
    values, expected, outputs = case()
    values[0, 0, 0] = np.nan
    check = check_ours(values, expected, outputs)
    assert not check.match
    assert check.to_dict()["additivity_error_ours"] is None


def test_sampled_differences_are_judged_against_the_standard_errors():
    """Fault 5: two sampled estimates differ by noise; within z * sqrt(2) * se they match."""
    values, expected, outputs = case()
    se = np.full(values.shape, 1e-3)
    noisy = values + RNG.normal(size=values.shape) * np.sqrt(2) * 1e-3
    noisy_expected = expected
    result = compare_results(values, expected, noisy, noisy_expected, outputs, standard_errors=se)
    assert result.match, result
    assert result.standard_error_z == pytest.approx(z_for(values.size))
    assert 3.5 < result.standard_error_z < 5
    assert result.max_z is not None and 0 < result.max_z < result.standard_error_z
    # A real disagreement stays a mismatch in sampling mode.
    wrong = noisy.copy()
    wrong[1, 2, 0] += 0.1
    assert not compare_results(values, expected, wrong, expected, outputs, standard_errors=se).match
    # Exact mode (no errors): the same noise is a mismatch at 1e-6.
    assert not compare_results(values, expected, noisy, expected, outputs).match


def test_a_mismatch_names_the_players_shap_zeroes():
    values, expected, outputs = case()
    reference = values.copy()
    reference[:, 0, :] = 0.0
    reference[:, 1, :] += values[:, 0, :]  # shap spreads t's effect elsewhere
    why = {"t": "within np.allclose's tolerance"}
    result = compare_results(values, expected, reference, expected, outputs, reference_constant=why)
    assert not result.match
    assert result.reasons == ["shap zeroes 't': within np.allclose's tolerance"]
    assert result.to_dict()["reference_constant"] == why
