"""Calibration metrics and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import brier_score_loss

from cxrnet.evaluation.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)


def _sample_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One label per row drawn from that row's categorical distribution (inverse-CDF sampling)."""
    return (rng.uniform(size=(probs.shape[0], 1)) > np.cumsum(probs, axis=1)).sum(axis=1)


def test_ece_hand_computed():
    # Two bins, [0, 0.5] and (0.5, 1]; two items in each, one right and one wrong.
    probs = np.array(
        [
            [0.3, 0.3, 0.4],  # conf 0.4, pred 2, correct
            [0.4, 0.3, 0.3],  # conf 0.4, pred 0, wrong
            [0.9, 0.05, 0.05],  # conf 0.9, pred 0, correct
            [0.9, 0.05, 0.05],  # conf 0.9, pred 0, wrong
        ]
    )
    y = np.array([2, 1, 0, 1])
    # bin [0, 0.5]: acc 0.5, conf 0.4 -> gap 0.1; bin (0.5, 1]: acc 0.5, conf 0.9 -> gap 0.4.
    assert expected_calibration_error(y, probs, n_bins=2) == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    curve = reliability_curve(y, probs, n_bins=2)
    np.testing.assert_array_equal(curve.counts, [2, 2])
    np.testing.assert_allclose(curve.confidence, [0.4, 0.9])
    np.testing.assert_allclose(curve.accuracy, [0.5, 0.5])


def test_bin_edges_are_right_closed_and_empty_bins_nan():
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    curve = reliability_curve(np.array([0, 0]), probs, n_bins=4)
    # 0.5 is the upper edge of bin (0.25, 0.5]; 1.0 belongs to the last bin.
    np.testing.assert_array_equal(curve.counts, [0, 1, 0, 1])
    assert np.isnan(curve.accuracy[0]) and np.isnan(curve.confidence[2])


def test_perfectly_calibrated_sampling_has_small_ece():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=(20000, 3)) * 2, axis=1)
    y = _sample_labels(rng, p)
    assert expected_calibration_error(y, p) < 0.02


def test_brier_matches_sklearn():
    rng = np.random.default_rng(1)
    p1 = rng.uniform(size=200)
    y = (rng.uniform(size=200) < p1).astype(int)
    probs = np.stack([1 - p1, p1], axis=1)
    # Our multiclass definition counts both columns: twice the customary binary score.
    assert brier_score(y, probs) == pytest.approx(2 * brier_score_loss(y, p1))
    p3 = softmax(rng.normal(size=(200, 3)), axis=1)
    y3 = rng.integers(0, 3, 200)
    assert brier_score(y3, p3) == pytest.approx(
        brier_score_loss(y3, p3, labels=[0, 1, 2], scale_by_half=False)
    )


def test_unlabelled_items_ignored():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    assert brier_score(np.array([0, 1, -1]), probs) == pytest.approx(brier_score(np.array([0, 1]), probs[:2]))


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(t_true):
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(5000, 4))
    probs = apply_temperature(logits, t_true)
    y = _sample_labels(rng, probs)
    t_hat = fit_temperature(logits, y)
    assert t_hat == pytest.approx(t_true, rel=0.1)
    # Temperature scaling can only lower the NLL it minimises; calibration should improve too.
    assert expected_calibration_error(y, apply_temperature(logits, t_hat)) <= expected_calibration_error(
        y, softmax(logits, axis=1)
    )


def test_apply_temperature_rejects_nonpositive():
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(np.zeros((1, 2)), 0.0)
