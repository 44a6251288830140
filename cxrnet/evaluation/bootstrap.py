"""Patient-level (cluster) bootstrap confidence intervals for any metric.

Radiographs of one patient are correlated (follow-up films, both views, near-duplicates). Resampling items
treats them as independent and gives intervals that are too narrow, the more so the more images per patient.
Here whole patients are drawn with replacement and every image of a drawn patient comes along, so the
interval reflects the number of patients, which is what the result generalises over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Upper bound on the number of item indices built at once (int64, so ~32 MB), to bound memory on big splits.
_INDEX_BUDGET = 4_000_000


@dataclass(frozen=True)
class CI:
    """A point estimate with its bootstrap percentile interval.

    Attributes:
        estimate: the metric on the full data.
        low: lower bound of the interval (NaN if no resample gave a value).
        high: upper bound of the interval.
        n_resamples: resamples that gave a value and make up the interval.
        n_groups: patients (groups) in the data.
        n_dropped: resamples whose value was NaN (e.g. a resample without any positive case); a large
            count means the interval describes only the resamples where the metric exists.
        confidence: nominal coverage, e.g. 0.95.
    """

    estimate: float
    low: float
    high: float
    n_resamples: int
    n_groups: int
    n_dropped: int = 0
    confidence: float = 0.95

    def format(self, digits: int = 3) -> str:
        """``"0.912 (0.880-0.940)"`` (with an en dash); ``"n/a"`` for an undefined estimate."""
        if np.isnan(self.estimate):
            return "n/a"
        est = f"{self.estimate:.{digits}f}"
        if np.isnan(self.low) or np.isnan(self.high):
            return est
        return f"{est} ({self.low:.{digits}f}\u2013{self.high:.{digits}f})"

    def __str__(self) -> str:
        return self.format()

    def as_dict(self) -> dict[str, float]:
        """Plain floats, for ``metrics.json``."""
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "n_resamples": float(self.n_resamples),
            "n_groups": float(self.n_groups),
            "n_dropped": float(self.n_dropped),
            "confidence": self.confidence,
        }


def group_bootstrap_indices(
    groups: np.ndarray, n_resamples: int, seed: int | np.random.Generator = 0
) -> Iterator[np.ndarray]:
    """Item indices of successive patient-level bootstrap resamples.

    Each resample draws as many groups as there are, with replacement, and lists the indices of all items
    of every drawn group (a group drawn twice appears twice). Index arrays are built for many resamples at
    once with array arithmetic rather than a Python loop over patients.

    Args:
        groups: (N,) group label of each item (patient id: str or int).
        n_resamples: number of resamples.
        seed: seed or generator; the same seed gives the same resamples.

    Yields:
        int64 index arrays into the N items; lengths vary with the sizes of the drawn groups.
    """
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")  # items grouped together, group by group
    counts = np.bincount(inverse)
    starts = np.cumsum(counts) - counts
    n_groups, n_items = counts.size, inverse.size
    if n_groups == 0:
        raise ValueError("cannot bootstrap an empty data set")
    per_chunk = max(1, _INDEX_BUDGET // max(n_items, 1))
    done = 0
    while done < n_resamples:
        chunk = min(per_chunk, n_resamples - done)
        draws = rng.integers(0, n_groups, size=(chunk, n_groups)).ravel()
        lens = counts[draws]
        run_start = np.repeat(np.cumsum(lens) - lens, lens)
        within = np.arange(run_start.size) - run_start
        idx = order[np.repeat(starts[draws], lens) + within]
        bounds = np.cumsum(lens.reshape(chunk, n_groups).sum(axis=1))[:-1]
        yield from np.split(idx, bounds)
        done += chunk


def _as_indexable(name: str, value: Any, n: int) -> np.ndarray:
    if isinstance(value, np.ndarray):
        arr = value
    else:
        # Lists of differently sized masks become a 1-D object array, so they can be indexed like the rest.
        arr = np.empty(len(value), dtype=object)
        for i, item in enumerate(value):
            arr[i] = item
    if arr.shape[0] != n:
        raise ValueError(f"data[{name!r}] has {arr.shape[0]} items but groups has {n}")
    return arr


def _interval(values: np.ndarray, estimate: float, confidence: float, n_groups: int) -> CI:
    valid = values[~np.isnan(values)]
    alpha = 1.0 - confidence
    if valid.size:
        low, high = np.percentile(valid, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    else:
        low = high = float("nan")
    return CI(
        estimate=float(estimate),
        low=float(low),
        high=float(high),
        n_resamples=int(valid.size),
        n_groups=n_groups,
        n_dropped=int(values.size - valid.size),
        confidence=confidence,
    )


def bootstrap_ci(
    metric_fn: Callable[..., float | Mapping[str, float]],
    data: Mapping[str, Any],
    groups: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CI | dict[str, CI]:
    """Percentile confidence interval of ``metric_fn(**data)`` by resampling patients.

    Args:
        metric_fn: called as ``metric_fn(**resampled_data)``; returns a float, or a dict of floats (then each
            scalar key gets its own interval, e.g. the whole output of ``classification_metrics``; array
            values are ignored).
        data: arrays whose first axis runs over the same N items, e.g.
            ``{"y_true": y, "probs": p}``; lists (e.g. masks of varying size) are indexed as object arrays.
        groups: (N,) patient id of each item.
        n_resamples: bootstrap resamples; 1000 is a common choice for 95 % intervals, 2000+ for 99 %.
        confidence: nominal coverage in (0, 1).
        seed: random seed; intervals are reproducible.

    Returns:
        A :class:`CI`, or ``{key: CI}`` if ``metric_fn`` returns a dict. Resamples giving NaN are dropped
        and counted in ``CI.n_dropped``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    groups = np.asarray(groups).ravel()
    n = groups.size
    arrays = {k: _as_indexable(k, v, n) for k, v in data.items()}
    n_groups = np.unique(groups).size
    full = metric_fn(**data)
    # Non-scalar entries (e.g. the per-image arrays of segmentation_metrics) have no interval; skip them.
    keys = [k for k, v in full.items() if np.ndim(v) == 0] if isinstance(full, Mapping) else None
    values = np.full((n_resamples, len(keys) if keys is not None else 1), np.nan)
    for r, idx in enumerate(group_bootstrap_indices(groups, n_resamples, seed)):
        result = metric_fn(**{k: v[idx] for k, v in arrays.items()})
        if keys is None:
            values[r, 0] = float(result)
        else:
            values[r] = [float(result.get(k, np.nan)) for k in keys]
    if keys is None:
        return _interval(values[:, 0], float(full), confidence, n_groups)
    return {k: _interval(values[:, j], float(full[k]), confidence, n_groups) for j, k in enumerate(keys)}
