from __future__ import annotations

import numpy as np
import pytest

from app.compare import compare_results

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
