"""Scores that measure how well an explanation (saliency) map points at the infection.

Every function takes a saliency map, a float array of shape ``(H, W)`` in any range (higher = more
important), and a reference mask of the same shape (nonzero = inside). Only the *ranking* of pixels
matters for the pointing game, top-k and average precision; the mass share rescales the map to
``[0, 1]`` first (see :func:`explanation_in_region_share`).

Undefined cases: a score against an empty mask measures nothing, so every float score returns NaN
when its reference mask is empty (and :func:`explanation_scores` reports NaN for all mask-based keys);
:func:`pointing_game`, whose result is a bool, raises ``ValueError`` instead. Average NaN-aware
(``np.nanmean``) over a dataset of images, some of which have no infection.

Ties are broken deterministically: the pointing game requires *every* maximal pixel to hit (a flat
map scores no hit), top-k selects tied pixels in row-major order, and average precision treats tied
pixels as one threshold, as ``sklearn.metrics.average_precision_score`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "explanation_in_region_share",
    "explanation_scores",
    "pointing_game",
    "saliency_average_precision",
    "topk_f1",
    "topk_iou",
    "topk_mask",
]

BoolMask = npt.NDArray[np.bool_]

DEFAULT_K_PERCENT: tuple[float, ...] = (5, 10, 20)


def _check_saliency(saliency: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(saliency)
    if array.ndim != 2:
        raise ValueError(
            f"saliency must be a 2-D HxW map, got shape {array.shape}; "
            "squeeze channel/batch axes and upsample the map to the image size first"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"saliency must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError("saliency contains NaN or infinite values")
    return array


def _check_mask(mask: npt.ArrayLike, shape: tuple[int, ...], name: str) -> BoolMask:
    array = np.asarray(mask)
    if array.shape != shape:
        raise ValueError(
            f"{name} shape {array.shape} differs from saliency shape {shape}; "
            "resize the saliency map to the mask's size"
        )
    return array.astype(bool)


def _dilate_disk(mask: BoolMask, radius: int) -> BoolMask:
    """Binary dilation of ``mask`` by a Euclidean disk of ``radius`` pixels (numpy only)."""
    if radius <= 0:
        return mask.copy()
    height, width = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
    return out


def pointing_game(saliency: npt.ArrayLike, mask: npt.ArrayLike, tolerance: int = 0) -> bool:
    """Whether the map's maximum falls inside the mask (Zhang et al., 2018).

    Args:
        saliency: HxW saliency map, any range.
        mask: HxW reference mask (nonzero = inside), e.g. the infection mask.
        tolerance: the maximum may lie up to this many pixels (Euclidean) outside the mask; the
            original protocol uses 15 pixels at 224 px.

    Returns:
        True if every pixel attaining the maximum lies in the mask dilated by ``tolerance``. Requiring
        all of them keeps the result independent of pixel order and makes a flat map a miss.

    Raises:
        ValueError: if the mask is empty (the game is undefined) or the inputs are malformed.
    """
    sal = _check_saliency(saliency)
    target = _check_mask(mask, sal.shape, "mask")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if not target.any():
        raise ValueError("mask is empty: the pointing game is undefined without a target")
    maxima = sal == sal.max()
    return bool(_dilate_disk(target, int(tolerance))[maxima].all())


def topk_mask(saliency: npt.ArrayLike, k_percent: float) -> BoolMask:
    """The top ``k_percent`` % of pixels of a saliency map.

    Args:
        saliency: HxW saliency map, any range.
        k_percent: share of pixels to keep, in ``(0, 100]``.

    Returns:
        Bool HxW mask with exactly ``max(1, round(k_percent / 100 * H * W))`` True pixels (halves
        round up). Pixels tied at the cut-off are taken in row-major order.
    """
    sal = _check_saliency(saliency)
    return _topk_from_order(_descending_order(sal), sal.shape, k_percent)


def _descending_order(sal: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """Flat pixel indices by decreasing saliency; a stable sort keeps row-major order among ties."""
    return np.argsort(-sal.ravel(), kind="stable")


def _topk_from_order(order: npt.NDArray[np.intp], shape: tuple[int, ...], k_percent: float) -> BoolMask:
    if not 0 < k_percent <= 100:
        raise ValueError(f"k_percent must lie in (0, 100], got {k_percent}")
    count = max(1, math.floor(k_percent * order.size / 100 + 0.5))
    selected = np.zeros(order.size, dtype=bool)
    selected[order[:count]] = True
    return selected.reshape(shape)


def _iou(top: BoolMask, target: BoolMask) -> float:
    if not target.any():
        return math.nan
    return int((top & target).sum()) / int((top | target).sum())


def _f1(top: BoolMask, target: BoolMask) -> float:
    if not target.any():
        return math.nan
    return 2 * int((top & target).sum()) / (int(top.sum()) + int(target.sum()))


def topk_iou(saliency: npt.ArrayLike, mask: npt.ArrayLike, k_percent: float = 10.0) -> float:
    """Intersection over union of the top-k % saliency pixels with the mask.

    Args:
        saliency: HxW saliency map, any range.
        mask: HxW reference mask (nonzero = inside).
        k_percent: share of pixels taken from the map, in ``(0, 100]``.

    Returns:
        IoU in ``[0, 1]`` (equal to ``sklearn.metrics.jaccard_score`` on the flattened masks); NaN for
        an empty mask. The best attainable value is below 1 unless the mask covers ``k_percent`` %.
    """
    top = topk_mask(saliency, k_percent)
    return _iou(top, _check_mask(mask, top.shape, "mask"))


def topk_f1(saliency: npt.ArrayLike, mask: npt.ArrayLike, k_percent: float = 10.0) -> float:
    """F1 (Dice) of the top-k % saliency pixels against the mask.

    Args:
        saliency: HxW saliency map, any range.
        mask: HxW reference mask (nonzero = inside).
        k_percent: share of pixels taken from the map, in ``(0, 100]``.

    Returns:
        F1 in ``[0, 1]`` (equal to ``sklearn.metrics.f1_score`` on the flattened masks); NaN for an
        empty mask.
    """
    top = topk_mask(saliency, k_percent)
    return _f1(top, _check_mask(mask, top.shape, "mask"))


def saliency_average_precision(saliency: npt.ArrayLike, mask: npt.ArrayLike) -> float:
    """Average precision of the saliency map as a pixel-wise score for the mask.

    ``AP = Σ_n (R_n - R_{n-1}) P_n`` over the distinct saliency values taken as thresholds, in
    decreasing order; the same (non-interpolated) definition as
    ``sklearn.metrics.average_precision_score``, to which it is equal.

    Args:
        saliency: HxW saliency map, any range.
        mask: HxW reference mask (nonzero = positive pixel).

    Returns:
        AP in ``[0, 1]``; a random map scores about the mask's area share. NaN for an empty mask.
    """
    sal = _check_saliency(saliency)
    target = _check_mask(mask, sal.shape, "mask")
    return _average_precision(sal, target, _descending_order(sal))


def _average_precision(sal: npt.NDArray[np.float64], target: BoolMask, order: npt.NDArray[np.intp]) -> float:
    if not target.any():
        return math.nan
    scores, hits = sal.ravel()[order], target.ravel()[order]
    # Last index of each run of equal scores: tied pixels enter together at one threshold.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_pos = np.cumsum(hits)[last_of_run]
    precision = true_pos / (last_of_run + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def explanation_in_region_share(saliency: npt.ArrayLike, region: npt.ArrayLike) -> float:
    """Share of the explanation's mass that lies inside a region (e.g. the lungs).

    The map is first min-max rescaled to ``[0, 1]``, so that an offset or a negative range (signed
    attributions, logits) does not count as mass; the share is invariant to ``a·s + b`` with ``a > 0``.
    A flat map is treated as uniform, giving the region's area share.

    Args:
        saliency: HxW saliency map, any range.
        region: HxW region mask (nonzero = inside).

    Returns:
        ``Σ_region s / Σ s`` in ``[0, 1]``; NaN for an empty region.
    """
    sal = _check_saliency(saliency)
    inside = _check_mask(region, sal.shape, "region")
    if not inside.any():
        return math.nan
    low, high = sal.min(), sal.max()
    if high == low:
        return int(inside.sum()) / inside.size
    mass = (sal - low) / (high - low)
    return float(mass[inside].sum() / mass.sum())


def _k_label(k: float) -> str:
    return f"{k:g}"


def explanation_scores(
    saliency: npt.ArrayLike,
    infection_mask: npt.ArrayLike,
    lung_mask: npt.ArrayLike | None = None,
    k_percent: Sequence[float] = DEFAULT_K_PERCENT,
    *,
    tolerance: int = 0,
) -> dict[str, float]:
    """All explanation scores of one map, as a flat dict with stable keys.

    Keys:
        ``pointing_game`` (1.0 hit / 0.0 miss), ``average_precision``, ``infection_share``,
        ``top{k}_iou`` and ``top{k}_f1`` for each ``k`` in ``k_percent`` (e.g. ``top5_iou``,
        ``top2.5_f1``), and ``lung_share`` when ``lung_mask`` is given.

    Args:
        saliency: HxW saliency map, any range.
        infection_mask: HxW infection mask (nonzero = infected).
        lung_mask: optional HxW lung mask; adds the share of explanation mass inside the lungs, which
            measures reliance on shortcuts outside the lung fields (markers, borders, devices).
        k_percent: top-k shares, in percent, for the top-k scores.
        tolerance: pointing-game tolerance in pixels.

    Returns:
        Scores as Python floats. With an empty infection mask every infection-based score is NaN;
        ``lung_share`` is NaN for an empty lung mask.
    """
    sal = _check_saliency(saliency)
    infection = _check_mask(infection_mask, sal.shape, "infection_mask")
    scores: dict[str, float] = {}
    if infection.any():
        scores["pointing_game"] = float(pointing_game(sal, infection, tolerance))
    else:
        scores["pointing_game"] = math.nan
    # One sort serves average precision and every top-k: it dominates the cost on large maps.
    order = _descending_order(sal)
    scores["average_precision"] = _average_precision(sal, infection, order)
    scores["infection_share"] = explanation_in_region_share(sal, infection)
    for k in k_percent:
        top = _topk_from_order(order, sal.shape, k)
        scores[f"top{_k_label(k)}_iou"] = _iou(top, infection)
        scores[f"top{_k_label(k)}_f1"] = _f1(top, infection)
    if lung_mask is not None:
        scores["lung_share"] = explanation_in_region_share(
            sal, _check_mask(lung_mask, sal.shape, "lung_mask")
        )
    return scores
