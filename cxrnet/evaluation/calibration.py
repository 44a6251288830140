"""Calibration: do predicted probabilities mean what they say?

Top-label expected calibration error and reliability curves (Guo et al., 2017), the multiclass Brier score,
and temperature scaling (one scalar T fitted on held-out logits by minimising the negative log-likelihood).
Inputs follow :mod:`cxrnet.evaluation.classification`: ``y_true`` int (N,) with -1 for absent labels (dropped),
``probs`` float (N, C).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from cxrnet.evaluation.classification import check_labels_and_probs

#: Number of equal-width confidence bins; 15 is the value of Guo et al. and most later work.
DEFAULT_N_BINS = 15
#: Temperatures are searched on a log scale in [0.01, 100], far beyond what trained networks need.
_LOG_T_BOUNDS = (np.log(0.01), np.log(100.0))
_LOG_T_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of the top-label confidence.

    Attributes:
        edges: float (B+1,) bin edges on [0, 1]; bin b holds confidences in (edges[b], edges[b+1]] (the first
            bin also holds 0).
        confidence: float (B,) mean top-label probability in each bin; NaN for an empty bin.
        accuracy: float (B,) fraction of correct arg-max predictions in each bin; NaN for an empty bin.
        counts: int (B,) items per bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error, ``sum_b counts_b / N * |accuracy_b - confidence_b|``; NaN if N = 0."""
        n = self.counts.sum()
        if n == 0:
            return float("nan")
        used = self.counts > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float(np.sum(self.counts[used] * gaps) / n)


def reliability_curve(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_N_BINS
) -> ReliabilityCurve:
    """Bin items by their top-label confidence and compare confidence with accuracy in each bin.

    Args:
        y_true: int (N,), -1 for absent.
        probs: float (N, C) probabilities.
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        A :class:`ReliabilityCurve`.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, p, _ = check_labels_and_probs(y_true, probs)
    confidence = p.max(axis=1) if p.shape[0] else np.zeros(0)
    correct = (p.argmax(axis=1) == y).astype(np.float64) if p.shape[0] else np.zeros(0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted on the inner edges puts a confidence equal to an edge into the lower bin: (lo, hi].
    which = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / counts
    return ReliabilityCurve(edges=edges, confidence=mean_conf, accuracy=accuracy, counts=counts)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> float:
    """Top-label expected calibration error with equal-width bins (in [0, 1]; 0 is perfectly calibrated).

    Args:
        y_true: int (N,), -1 for absent.
        probs: float (N, C).
        n_bins: number of equal-width bins.

    Returns:
        ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``; NaN when no item is labelled.
    """
    return reliability_curve(y_true, probs, n_bins).ece


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Multiclass Brier score: mean over items of the summed squared error against the one-hot label.

    Ranges over [0, 2]. For two classes it is twice the binary Brier score ``mean((p_1 - y)^2)`` that
    ``sklearn.metrics.brier_score_loss`` returns by default, because both columns' errors are counted.

    Args:
        y_true: int (N,), -1 for absent.
        probs: float (N, C) probabilities.

    Returns:
        The score; NaN when no item is labelled.
    """
    y, p, _ = check_labels_and_probs(y_true, probs)
    if y.size == 0:
        return float("nan")
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled softmax.

    Args:
        logits: float (N, C) unnormalised class scores.
        temperature: T > 0; T > 1 softens over-confident predictions.

    Returns:
        float64 (N, C) probabilities ``softmax(logits / T)``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    log_p = log_softmax(logits / temperature, axis=1)
    return float(-np.mean(log_p[np.arange(y.size), y]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Fit the temperature that minimises the negative log-likelihood of held-out labels.

    Fit on a validation split and apply to the test split; fitting on the test split itself makes the
    calibration look better than it will be. The NLL is convex in 1/T, so a bounded scalar search over log T
    finds the global minimum. Items with label -1 are ignored.

    Args:
        logits: float (N, C) unnormalised class scores.
        y_true: int (N,), -1 for absent.

    Returns:
        T in [0.01, 100]; a value at a bound means the logits carry (almost) no usable information or are
        separable.
    """
    y, z, _ = check_labels_and_probs(y_true, logits)
    if y.size == 0:
        raise ValueError("fit_temperature needs at least one labelled item")
    result = minimize_scalar(
        lambda log_t: _nll(z, y, float(np.exp(log_t))),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": _LOG_T_TOLERANCE},
    )
    return float(np.exp(result.x))
