"""Agreement between a severity estimate and a reference score (e.g. predicted infected fraction vs a
radiologist's geographic-extent score).

Correlation alone hides bias and scale errors, so the MAE and the mean difference are reported with it.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

#: Below this many complete pairs a correlation coefficient is not reported (it would be ±1 or undefined).
MIN_PAIRS_FOR_CORRELATION = 3


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if denom == 0:
        return float("nan")  # a constant input has no correlation (scipy also returns NaN)
    # Clipping removes rounding excursions such as 1.0000000000000002.
    return float(np.clip(np.sum(dx * dy) / denom, -1.0, 1.0))


def agreement(estimate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Agreement statistics of paired scores.

    Pairs where either value is NaN are dropped first (a reference missing for some images is normal).

    Args:
        estimate: float (N,) estimated scores.
        reference: float (N,) reference scores, same unit.

    Returns:
        ``n`` (complete pairs), ``mae`` (mean |estimate - reference|), ``bias`` (mean estimate - reference),
        ``pearson_r``, ``spearman_rho`` (Pearson correlation of average ranks, so ties are treated as in
        ``scipy.stats.spearmanr``). MAE and bias are NaN when n = 0; the correlations are NaN when
        n < 3 or either input is constant.
    """
    x = np.asarray(estimate, dtype=np.float64).ravel()
    y = np.asarray(reference, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"estimate ({x.size} values) and reference ({y.size} values) differ in length")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = x.size
    nan = float("nan")
    out = {
        "n": float(n),
        "mae": float(np.mean(np.abs(x - y))) if n else nan,
        "bias": float(np.mean(x - y)) if n else nan,
        "pearson_r": nan,
        "spearman_rho": nan,
    }
    if n >= MIN_PAIRS_FOR_CORRELATION:
        out["pearson_r"] = _pearson(x, y)
        out["spearman_rho"] = _pearson(rankdata(x), rankdata(y))
    return out
