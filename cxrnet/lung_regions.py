"""The patient's right and left lung in a lung mask, and their upper, middle and lower zones.

The regions that :mod:`cxrnet.severity` scores; pure functions of numpy arrays, with the conventions given
there: frontal radiographs as displayed (the patient's **right** lung on the **image left**), ``(H, W)``
masks with row 0 at the top. Connected components come from :func:`skimage.measure.label` (their sizes and
sides from counts over the label image); distances to a lung from :func:`scipy.ndimage.distance_transform_edt`
(scikit-image has no exact Euclidean distance transform of its own).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage import measure

__all__ = [
    "ATTACH_DISTANCE_FRACTION",
    "CUT_SEARCH_BAND",
    "MERGED_MIN_SIDE_SHARE",
    "SPURIOUS_AREA_FRACTION",
    "STRADDLE_MAX_SHARE",
    "VALLEY_MAX_RATIO",
    "lung_zones",
    "split_lungs",
]

BoolMask = npt.NDArray[np.bool_]

# --- split_lungs heuristics ---------------------------------------------------------------------
# A component smaller than this share of the total lung area is treated as spurious (a speck of a
# predicted mask), not as a lung. Even a collapsed lung is well above 5 % of the lung area.
SPURIOUS_AREA_FRACTION = 0.05
# A spurious component is attached to the nearest lung if it lies within this fraction of the image's
# smaller side from it; farther specks (outside the thorax) are dropped, since attaching them would
# stretch that lung's vertical extent and shift its zones.
ATTACH_DISTANCE_FRACTION = 0.05
# Without a gap, two touching lungs show a waist in the column-occupancy profile (the mediastinum),
# while one lung's profile is unimodal (valley/peak ratio >= 1). A valley below this share of the lower
# of the two peaks beside it is taken as the waist between two lungs.
VALLEY_MAX_RATIO = 0.5
# Without a gap or a waist, a mask with at least this share of its area on each side of the image
# centre is still two touching lungs; with less, it is one lung and the other is missing.
MERGED_MIN_SIDE_SHARE = 0.20
# A component with less than this share of its area across the cut is one lung whose edge pokes past
# it (separate lungs overlapping in columns) and goes whole to its side; with more, it is split at the
# cut, which keeps a small (e.g. collapsed) lung merged with a large one.
STRADDLE_MAX_SHARE = 0.05
# Touching lungs are cut at the column of minimum lung occupancy within this central band of the mask's
# column extent, where the mediastinum lies; searching the whole extent could cut a lung's thin apex.
CUT_SEARCH_BAND = (0.30, 0.70)


# --- input checks, shared with cxrnet.severity ---------------------------------------------------


def check_2d(array: np.ndarray, name: str) -> None:
    """Refuse an array that is not 2-D, saying how to get the HxW mask out of it."""
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D HxW array, got shape {array.shape}; "
            "squeeze channel/batch axes before calling (e.g. mask[0, 0] for a 1x1xHxW tensor)"
        )


def as_mask(array: npt.ArrayLike, name: str, threshold: float = 0.5) -> BoolMask:
    """Boolean HxW mask from a bool array or a numeric array of scores/probabilities (``> threshold``)."""
    array = np.asarray(array)
    check_2d(array, name)
    if array.dtype == np.bool_:
        return array
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be boolean or numeric, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array > threshold


def _column_runs(values: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` index runs where the 1-D bool array ``values`` is True."""
    padded = np.concatenate(([False], values, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _cut_column(core: BoolMask) -> int | None:
    """Column separating two lungs in ``core``, or None if ``core`` looks like a single lung.

    Pixels with column < cut belong to the image-left (right) lung.
    """
    width = core.shape[1]
    occupancy = core.sum(axis=0)
    occupied = np.flatnonzero(occupancy)
    x0, x1 = int(occupied[0]), int(occupied[-1]) + 1
    extent_centre = (x0 + x1 - 1) / 2

    # Separate lungs: the mediastinum leaves empty columns inside the extent. With several gaps (a
    # fragmented mask), the widest is the mediastinum; ties go to the one nearest the extent's centre.
    gaps = _column_runs(occupancy[x0:x1] == 0)
    if gaps:
        start, stop = min(gaps, key=lambda g: (-(g[1] - g[0]), abs((g[0] + g[1] - 1) / 2 - extent_centre)))
        return x0 + (start + stop) // 2

    # No gap: either one lung alone or two lungs touching across the midline.
    lo = x0 + math.floor(CUT_SEARCH_BAND[0] * (x1 - x0))
    hi = max(lo + 1, x0 + math.ceil(CUT_SEARCH_BAND[1] * (x1 - x0)))
    band = occupancy[lo:hi]
    # A flat valley is cut in the middle of its run nearest the band's centre, for determinism.
    runs = _column_runs(band == band.min())
    band_centre = (hi - lo - 1) / 2
    start, stop = min(runs, key=lambda r: abs((r[0] + r[1] - 1) / 2 - band_centre))
    cut = lo + (start + stop) // 2

    beside = min(occupancy[x0:cut].max(initial=0), occupancy[cut + 1 : x1].max(initial=0))
    has_waist = occupancy[cut] < VALLEY_MAX_RATIO * beside
    image_left_share = occupancy[: math.ceil(width / 2)].sum() / occupancy.sum()
    on_both_sides = min(image_left_share, 1 - image_left_share) >= MERGED_MIN_SIDE_SHARE
    return cut if has_waist or on_both_sides else None


def split_lungs(lung_mask: npt.ArrayLike) -> tuple[BoolMask, BoolMask]:
    """Split a lung mask into the patient's right and left lung.

    The right lung is on the image left (see module docstring). The split is robust to:

    * two separate lungs (any gap between them, also off-centre): cut in the widest empty column gap;
    * lungs touching across the midline (one component): cut at the column of minimum lung occupancy
      in the central band of the mask's extent (:data:`CUT_SEARCH_BAND`), not at the image centre;
      taken as two lungs if that column is a waist (:data:`VALLEY_MAX_RATIO`) or the mask has a fair
      share of its area on both sides of the image centre (:data:`MERGED_MIN_SIDE_SHARE`);
    * one lung missing (no gap, no waist, mask mainly on one side of the image centre): the other
      lung is empty;
    * more than two components: grouped by side of the cut; a component straddling the cut with
      less than :data:`STRADDLE_MAX_SHARE` of its area on one side goes whole to its main side;
    * spurious components (< :data:`SPURIOUS_AREA_FRACTION` of the lung area): attached to the
      nearest lung if close to it (:data:`ATTACH_DISTANCE_FRACTION`), otherwise dropped.

    A lung fragmented into pieces side by side with empty columns between them can be mistaken for two
    lungs; fragments above one another (the usual failure of predicted masks) are handled.

    Args:
        lung_mask: HxW mask of both lungs; bool, or numeric where values > 0.5 are lung.

    Returns:
        ``(right_lung, left_lung)``, two bool HxW masks, disjoint; both empty for an empty mask.
    """
    mask = as_mask(lung_mask, "lung_mask")
    right = np.zeros_like(mask)
    left = np.zeros_like(mask)
    if not mask.any():
        return right, left

    # 8-connectivity: diagonal contact along a jagged predicted border is still one piece.
    labels = measure.label(mask, connectivity=2)
    # Per-component sums over the label image (one pass each), not a RegionProperties object per
    # component: an untrained or confused model's mask can hold hundreds of specks.
    ids = np.arange(1, int(labels.max()) + 1)
    areas = np.bincount(labels.ravel(), minlength=len(ids) + 1)[1:]
    is_major = areas >= SPURIOUS_AREA_FRACTION * areas.sum()
    if not is_major.any():  # a mask shattered into many specks: keep them all rather than nothing
        is_major[:] = True
    majors, minors = ids[is_major], ids[~is_major]

    core = _members(labels, majors)
    cut = _cut_column(core)
    if cut is None:
        cx = np.nonzero(core)[1].mean()
        (right if cx < mask.shape[1] / 2 else left)[core] = True
    else:
        on_image_left = np.bincount(labels[:, :cut].ravel(), minlength=len(ids) + 1)[1:]
        image_left_share = on_image_left[is_major] / areas[is_major]
        right |= _members(labels, majors[image_left_share >= 1 - STRADDLE_MAX_SHARE])
        left |= _members(labels, majors[image_left_share <= STRADDLE_MAX_SHARE])
        straddling = (image_left_share > STRADDLE_MAX_SHARE) & (image_left_share < 1 - STRADDLE_MAX_SHARE)
        if straddling.any():
            split = _members(labels, majors[straddling])
            right[:, :cut] |= split[:, :cut]
            left[:, cut:] |= split[:, cut:]

    if len(minors):
        max_distance = max(1.0, ATTACH_DISTANCE_FRACTION * min(mask.shape))
        # Distance of every pixel to each lung; inf where the lung is absent.
        dist_right = ndimage.distance_transform_edt(~right) if right.any() else np.full(mask.shape, np.inf)
        dist_left = ndimage.distance_transform_edt(~left) if left.any() else np.full(mask.shape, np.inf)
        d_right = _label_minimum(dist_right, labels)[minors]
        d_left = _label_minimum(dist_left, labels)[minors]
        near = np.minimum(d_right, d_left) <= max_distance
        to_right = near & (d_right <= d_left)
        to_left = near & (d_right > d_left)
        if to_right.any():
            right |= _members(labels, minors[to_right])
        if to_left.any():
            left |= _members(labels, minors[to_left])
    return right, left


def _label_minimum(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The minimum of ``values`` over each label of ``labels`` (index = label; inf for an absent label).

    One unbuffered pass (``np.minimum.at``): ``ndimage.minimum`` with an index sorts the whole image
    first, about 25x slower on a speckled 128 px mask and most of ``split_lungs``' time.
    """
    out = np.full(int(labels.max()) + 1, np.inf)
    np.minimum.at(out, labels.ravel(), values.ravel())
    return out


def _members(labels: np.ndarray, ids: np.ndarray) -> BoolMask:
    """Where ``labels`` is one of ``ids`` (a lookup table: faster than ``np.isin`` for many labels)."""
    table = np.zeros(int(labels.max()) + 1, dtype=bool)
    table[ids] = True
    return table[labels]


def lung_zones(lung: npt.ArrayLike) -> tuple[BoolMask, BoolMask, BoolMask]:
    """Upper, middle and lower zones of one lung: thirds of its vertical extent.

    The lung's extent runs from its top row to its bottom row; rows are split into thirds by height
    (exactly, for a height divisible by three), each intersected with the lung, as an approximation of
    the Brixia zones (see module docstring).

    Args:
        lung: HxW mask of a single lung; bool, or numeric where values > 0.5 are lung.

    Returns:
        ``(upper, middle, lower)``, bool HxW masks that partition the lung; all empty for an empty lung.
    """
    mask = as_mask(lung, "lung")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        empty = np.zeros_like(mask)
        return empty, empty.copy(), empty.copy()
    top, height = int(rows[0]), int(rows[-1] - rows[0] + 1)
    # Integer comparisons (3·offset < height) keep the thirds exact, free of float rounding.
    offset = np.arange(mask.shape[0]) - top
    upper_rows = 3 * offset < height
    middle_rows = ~upper_rows & (3 * offset < 2 * height)
    lower_rows = ~upper_rows & ~middle_rows
    return (
        mask & upper_rows[:, None],
        mask & middle_rows[:, None],
        mask & lower_rows[:, None],
    )
