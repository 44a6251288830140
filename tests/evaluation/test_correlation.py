"""Severity agreement against scipy.stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cxrnet.evaluation.correlation import agreement


def test_matches_scipy_with_ties_and_nans():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 9, 120).astype(float)  # integer scores, many ties (e.g. 0-8 extent)
    estimate = reference / 8 + rng.normal(scale=0.15, size=120)
    estimate = np.round(estimate, 1)
    estimate[[3, 50]] = np.nan
    reference[[7]] = np.nan
    out = agreement(estimate, reference)
    keep = ~(np.isnan(estimate) | np.isnan(reference))
    assert out["n"] == keep.sum() == 117
    assert out["pearson_r"] == pytest.approx(stats.pearsonr(estimate[keep], reference[keep])[0])
    assert out["spearman_rho"] == pytest.approx(stats.spearmanr(estimate[keep], reference[keep])[0])
    assert out["mae"] == pytest.approx(np.mean(np.abs(estimate[keep] - reference[keep])))
    assert out["bias"] == pytest.approx(np.mean(estimate[keep] - reference[keep]))


def test_too_few_pairs_and_constant_inputs_give_nan():
    out = agreement(np.array([1.0, 2.0, np.nan]), np.array([1.5, 2.0, 3.0]))
    assert out["n"] == 2 and math.isnan(out["pearson_r"]) and math.isnan(out["spearman_rho"])
    assert out["mae"] == pytest.approx(0.25)
    out = agreement(np.ones(5), np.arange(5.0))
    assert math.isnan(out["pearson_r"]) and math.isnan(out["spearman_rho"])
    assert math.isnan(agreement(np.array([]), np.array([]))["mae"])


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="differ in length"):
        agreement(np.zeros(3), np.zeros(4))
