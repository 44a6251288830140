"""Overlap and boundary metrics for binary masks (lung fields, infection regions).

Masks may be bool, {0, 1} integers or probabilities; anything that is not bool is binarised with
``> 0.5``. Each pair must have the same shape (2-D or 3-D); different pairs may differ in size.

Conventions for empty masks, which are common for infection masks of normal radiographs:

- Dice and IoU of two empty masks are 1.0 (the prediction is exactly right); an empty prediction of a
  non-empty target scores 0.0.
- HD95 of two empty masks is 0.0; if exactly one is empty there is no surface to measure against and HD95
  is NaN. :func:`segmentation_metrics` counts those NaNs (``hd95/n_undefined``) because leaving them out of
  a mean silently flatters a model that misses lesions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Percentile of the surface distances reported as the robust Hausdorff distance.
HAUSDORFF_PERCENTILE = 95.0


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask > 0.5


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_bool(pred), _as_bool(target)
    if p.shape != t.shape:
        raise ValueError(
            f"predicted mask {p.shape} and target mask {t.shape} differ in shape; resize the "
            "prediction to the target's size (nearest neighbour) first"
        )
    return p, t


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient ``2|P and T| / (|P| + |T|)`` in [0, 1]; 1.0 when both masks are empty.

    Args:
        pred: predicted mask, HxW (or DxHxW).
        target: reference mask of the same shape.
    """
    p, t = _pair(pred, target)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``|P and T| / |P or T|`` in [0, 1]; 1.0 when both masks are empty.

    Args:
        pred: predicted mask, HxW (or DxHxW).
        target: reference mask of the same shape.
    """
    p, t = _pair(pred, target)
    union = int(np.logical_or(p, t).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, t).sum()) / union


def _surface(mask: np.ndarray) -> np.ndarray:
    # Pixels of the mask with a face-neighbour outside it; border_value=0 makes the image edge a boundary.
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(
    pred: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each boundary pixel of one mask to the nearest boundary pixel of the other.

    Args:
        pred: predicted mask.
        target: reference mask of the same shape; both must be non-empty.
        spacing: pixel size (one number, or one per axis, e.g. ``(row_mm, col_mm)``); distances are in its unit.

    Returns:
        ``(pred_to_target, target_to_pred)``, float arrays with one entry per boundary pixel.
    """
    p, t = _pair(pred, target)
    if not p.any() or not t.any():
        raise ValueError("surface distances need two non-empty masks")
    sp, st = _surface(p), _surface(t)
    # Distance transform of the complement of a surface = distance of every pixel to that surface.
    to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return to_t[sp], to_p[st]


def hausdorff95(pred: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] = 1.0) -> float:
    """95th percentile of the symmetric surface distances between two masks.

    The distances from the predicted boundary to the reference boundary and back are pooled and their 95th
    percentile taken (the convention of ``medpy.metric.hd95``; MONAI instead takes the larger of the two
    directed percentiles, which can be slightly higher).

    Args:
        pred: predicted mask, HxW (or DxHxW).
        target: reference mask of the same shape.
        spacing: pixel size, one number or one per axis; the result is in its unit (pixels by default).

    Returns:
        The distance; 0.0 when both masks are empty, NaN when exactly one is.
    """
    p, t = _pair(pred, target)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("nan")
    d_pt, d_tp = surface_distances(p, t, spacing)
    return float(np.percentile(np.concatenate([d_pt, d_tp]), HAUSDORFF_PERCENTILE))


def segmentation_metrics(
    preds: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    spacing: float | Sequence[float] = 1.0,
) -> dict[str, float | np.ndarray]:
    """Per-image Dice, IoU and HD95 over a set of images, with their aggregates.

    Args:
        preds: N predicted masks (each H_ixW_i; sizes may differ between images).
        targets: N reference masks, each the size of its prediction.
        spacing: pixel size for HD95 (same for all images).

    Returns:
        Flat dict. Arrays, float (N,): ``per_image/dice``, ``per_image/iou``, ``per_image/hd95``. Floats:
        ``n``, ``n_empty_target``, ``{dice,iou,hd95}/mean`` and ``/median`` (HD95 over defined values
        only), ``dice/pooled`` and ``iou/pooled`` (micro average: intersections and sizes summed over all
        pixels of all images before dividing; 1.0 if every mask is empty), ``hd95/n_undefined`` (images where
        exactly one mask is empty).
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
    n = len(preds)
    dices, ious, hd95s = np.empty(n), np.empty(n), np.empty(n)
    inter = pred_sum = target_sum = union = n_empty = 0
    for i, (pred, target) in enumerate(zip(preds, targets)):
        p, t = _pair(pred, target)
        dices[i], ious[i], hd95s[i] = dice(p, t), iou(p, t), hausdorff95(p, t, spacing)
        inter += int(np.logical_and(p, t).sum())
        union += int(np.logical_or(p, t).sum())
        pred_sum += int(p.sum())
        target_sum += int(t.sum())
        n_empty += int(not t.any())
    out: dict[str, float | np.ndarray] = {
        "per_image/dice": dices,
        "per_image/iou": ious,
        "per_image/hd95": hd95s,
        "n": float(n),
        "n_empty_target": float(n_empty),
    }
    for name, values in (("dice", dices), ("iou", ious), ("hd95", hd95s)):
        defined = values[~np.isnan(values)]
        out[f"{name}/mean"] = float(defined.mean()) if defined.size else float("nan")
        out[f"{name}/median"] = float(np.median(defined)) if defined.size else float("nan")
    out["hd95/n_undefined"] = float(np.isnan(hd95s).sum())
    if n == 0:
        out["dice/pooled"] = out["iou/pooled"] = float("nan")
    else:
        out["dice/pooled"] = 1.0 if pred_sum + target_sum == 0 else 2.0 * inter / (pred_sum + target_sum)
        out["iou/pooled"] = 1.0 if union == 0 else inter / union
    return out
