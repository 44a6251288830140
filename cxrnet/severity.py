"""Severity of lung involvement derived from a lung mask and an infection map.

Everything here is a pure function of numpy arrays (no model, no torch): the same code scores the
network's predicted maps and generates ground-truth severity targets from annotated masks.

Conventions:
    * Images are frontal (PA/AP) radiographs *as displayed*: the patient's **right** lung appears on
      the **image left** (low column indices) and the left lung on the image right.
    * Masks are 2-D arrays of shape ``(H, W)``; row 0 is the top of the image (apex side).
    * Fractions are unitless, in ``[0, 1]``, and count pixels, not physical area or volume.

Scores:
    * **Zones** (Brixia-like), from :mod:`cxrnet.lung_regions`, which also splits the mask into the
      two lungs (:func:`split_lungs`). Each lung is divided into upper, middle and lower thirds of its own
      vertical extent. The Brixia score (Borghesi & Maroldi, 2020) places the zone limits at anatomical
      landmarks (inferior wall of the aortic arch, inferior wall of the right inferior pulmonary vein);
      equal thirds of the lung's height approximate them without landmark detection.
    * **Zone score** 0-3 from the infected fraction of a zone (:data:`ZONE_SCORE_THRESHOLDS`). Brixia
      grades each zone by the *type* of opacity (interstitial vs alveolar); a segmentation map has no
      such information, so this is a map-derived analogue that grades *extent* within the zone instead.
      The six zone scores add up to ``brixia_total`` in ``[0, 18]``.
    * **Extent score** 0-4 per lung from its infected fraction (:data:`EXTENT_SCORE_THRESHOLDS`), the
      geographic-extent scale used by Cohen et al. (2020) after Wong et al. (2020); both lungs add up to
      ``geographic_extent`` in ``[0, 8]``.
    * **Grade** none / mild / moderate / severe from ``brixia_total`` (:data:`GRADE_THRESHOLDS`).

A lung absent from the mask contributes zero to every score; :class:`Severity` reports each lung's
area so that a caller can tell "clear" from "missing".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cxrnet.lung_regions import as_mask, check_2d, lung_zones, split_lungs

__all__ = [
    "EXTENT_SCORE_THRESHOLDS",
    "GRADE_THRESHOLDS",
    "NOISE_FLOOR",
    "ZONE_NAMES",
    "ZONE_SCORE_THRESHOLDS",
    "Severity",
    "assess_severity",
    "extent_score",
    "grade",
    "infected_fraction",
    "lung_zones",
    "severity_targets",
    "split_lungs",
    "zone_score",
]

# Below 1 % infected, a region is scored as clear: a predicted map always has a few stray pixels and
# a thresholded annotation has anti-aliasing specks, neither of which a reader would call disease.
NOISE_FLOOR = 0.01

# Lower bounds of zone scores 1, 2, 3 on the zone's infected fraction: noise floor, then equal thirds
# of the zone, so that a score reads "up to a third / two thirds / more of the zone is involved".
ZONE_SCORE_THRESHOLDS: tuple[float, float, float] = (NOISE_FLOOR, 1 / 3, 2 / 3)

# Lower bounds of extent scores 1, 2, 3, 4 on a lung's infected fraction (Cohen et al. 2020:
# 0 none, 1 <25 %, 2 25-50 %, 3 50-75 %, 4 >75 %); "none" uses the same noise floor as the zones.
EXTENT_SCORE_THRESHOLDS: tuple[float, float, float, float] = (NOISE_FLOOR, 0.25, 0.50, 0.75)

# (lowest brixia_total, grade), ascending. Zero is "none"; the remaining 1-18 range is cut into equal
# sixes, i.e. on average up to 1, 1-2, or 2-3 points per zone over all six zones. These are descriptive
# bands for reporting, not clinically validated cut-offs; pass other thresholds to `grade` if needed.
GRADE_THRESHOLDS: tuple[tuple[int, str], ...] = ((0, "none"), (1, "mild"), (7, "moderate"), (13, "severe"))

MAX_BRIXIA = 18

ZONE_NAMES: tuple[str, ...] = (
    "right_upper",
    "right_middle",
    "right_lower",
    "left_upper",
    "left_middle",
    "left_lower",
)


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} shape {a.shape} differs from {name_b} shape {b.shape}; "
            "resize one to the other's size before scoring"
        )


def infected_fraction(region: npt.ArrayLike, infection: npt.ArrayLike) -> float:
    """Share of a region's pixels that are infected.

    Args:
        region: HxW mask (nonzero = inside), e.g. a lung or a zone.
        infection: HxW infection mask (nonzero = infected), same shape.

    Returns:
        ``|region ∩ infection| / |region|`` in ``[0, 1]``; 0.0 for an empty region.
    """
    region = np.asarray(region, dtype=bool)
    infection = np.asarray(infection, dtype=bool)
    check_2d(region, "region")
    _check_same_shape(region, infection, "region", "infection")
    area = int(region.sum())
    if area == 0:
        return 0.0
    return int((region & infection).sum()) / area


def _score(fraction: float, thresholds: tuple[float, ...], name: str) -> int:
    if not 0.0 <= fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} fraction must lie in [0, 1], got {fraction}")
    return sum(fraction >= t for t in thresholds)


def zone_score(fraction: float) -> int:
    """Brixia-like 0-3 score of one zone from its infected fraction.

    Thresholds (:data:`ZONE_SCORE_THRESHOLDS`, lower bounds inclusive): 0 below 1 % (noise floor),
    1 below 1/3, 2 below 2/3, 3 from 2/3 of the zone.

    Args:
        fraction: infected fraction of the zone, in ``[0, 1]``.

    Returns:
        Zone score in ``{0, 1, 2, 3}``.
    """
    return _score(fraction, ZONE_SCORE_THRESHOLDS, "zone")


def extent_score(fraction: float) -> int:
    """Geographic-extent 0-4 score of one lung (Cohen et al. 2020) from its infected fraction.

    Thresholds (:data:`EXTENT_SCORE_THRESHOLDS`, lower bounds inclusive): 0 below 1 % (noise floor),
    1 below 25 %, 2 below 50 %, 3 below 75 %, 4 from 75 %.

    Args:
        fraction: infected fraction of the lung, in ``[0, 1]``.

    Returns:
        Extent score in ``{0, 1, 2, 3, 4}``.
    """
    return _score(fraction, EXTENT_SCORE_THRESHOLDS, "extent")


def grade(brixia_total: float, thresholds: tuple[tuple[int, str], ...] = GRADE_THRESHOLDS) -> str:
    """Severity grade from a Brixia-like total.

    Default bands (:data:`GRADE_THRESHOLDS`): none 0, mild 1-6, moderate 7-12, severe 13-18. Zero is
    kept apart so that "none" means no zone reached the noise floor; the rest of the scale is cut into
    equal thirds. They are descriptive reporting bands, not clinically validated cut-offs. A fractional
    total (e.g. a regressed score) falls in the band whose lower bound it reaches.

    Args:
        brixia_total: total in ``[0, 18]``.
        thresholds: ``(lowest total, grade)`` pairs in ascending order, the first starting at 0.

    Returns:
        The grade name, e.g. ``"moderate"``.
    """
    if not 0 <= brixia_total <= MAX_BRIXIA:  # also rejects NaN
        raise ValueError(f"brixia_total must lie in [0, {MAX_BRIXIA}], got {brixia_total}")
    name = thresholds[0][1]
    for lowest, candidate in thresholds:
        if brixia_total >= lowest:
            name = candidate
    return name


@dataclass(frozen=True)
class Severity:
    """Severity of one radiograph. All fractions are in ``[0, 1]``; zone tuples follow :data:`ZONE_NAMES`.

    Attributes:
        fraction_right: infected fraction of the right lung (image left); 0 if the lung is absent.
        fraction_left: infected fraction of the left lung (image right); 0 if the lung is absent.
        fraction_total: infected fraction of both lungs together (pixel-weighted, not a mean of lungs).
        zone_fractions: infected fraction of the six zones (right upper/middle/lower, left ...).
        zone_scores: 0-3 score of the six zones.
        brixia_total: sum of the zone scores, 0-18.
        extent_right: 0-4 geographic-extent score of the right lung.
        extent_left: 0-4 geographic-extent score of the left lung.
        geographic_extent: ``extent_right + extent_left``, 0-8.
        grade: ``"none"``, ``"mild"``, ``"moderate"`` or ``"severe"`` from ``brixia_total``.
        area_right: right-lung area in pixels (0 means the lung is missing from the mask, not clear).
        area_left: left-lung area in pixels.
    """

    fraction_right: float
    fraction_left: float
    fraction_total: float
    zone_fractions: tuple[float, ...]
    zone_scores: tuple[int, ...]
    brixia_total: int
    extent_right: int
    extent_left: int
    geographic_extent: int
    grade: str
    area_right: int
    area_left: int

    def __post_init__(self) -> None:
        if len(self.zone_fractions) != len(ZONE_NAMES) or len(self.zone_scores) != len(ZONE_NAMES):
            raise ValueError(f"zone_fractions and zone_scores need {len(ZONE_NAMES)} values, {ZONE_NAMES}")

    def to_dict(self) -> dict[str, float | int | str]:
        """Flat, JSON-ready dict with stable keys.

        Keys: ``fraction_right``, ``fraction_left``, ``fraction_total``, ``zone_fraction_<zone>`` and
        ``zone_score_<zone>`` for each zone in :data:`ZONE_NAMES` (e.g. ``zone_score_right_upper``),
        ``brixia_total``, ``extent_right``, ``extent_left``, ``geographic_extent``, ``grade``,
        ``area_right``, ``area_left``. Values are Python ``float``, ``int`` or ``str``.
        """
        out: dict[str, float | int | str] = {
            "fraction_right": float(self.fraction_right),
            "fraction_left": float(self.fraction_left),
            "fraction_total": float(self.fraction_total),
        }
        out.update({f"zone_fraction_{z}": float(f) for z, f in zip(ZONE_NAMES, self.zone_fractions)})
        out.update({f"zone_score_{z}": int(s) for z, s in zip(ZONE_NAMES, self.zone_scores)})
        out.update(
            brixia_total=int(self.brixia_total),
            extent_right=int(self.extent_right),
            extent_left=int(self.extent_left),
            geographic_extent=int(self.geographic_extent),
            grade=str(self.grade),
            area_right=int(self.area_right),
            area_left=int(self.area_left),
        )
        return out


def assess_severity(
    lung_mask: npt.ArrayLike, infection_map: npt.ArrayLike, *, threshold: float = 0.5
) -> Severity:
    """Score the severity of a radiograph from its lung mask and infection map.

    Infection outside the lung mask is ignored. The lungs are separated with :func:`split_lungs` and
    zoned with :func:`lung_zones`.

    Args:
        lung_mask: HxW lung mask; bool, or numeric where values > 0.5 are lung.
        infection_map: HxW infection mask (bool) or probabilities/scores (numeric, infected where
            ``> threshold``), same shape as ``lung_mask``.
        threshold: probability above which a pixel of a numeric ``infection_map`` is infected.

    Returns:
        A :class:`Severity`.

    Raises:
        ValueError: if an input is not 2-D, the shapes differ, or a map holds NaN.
    """
    lung_arr, infection_arr = np.asarray(lung_mask), np.asarray(infection_map)
    check_2d(lung_arr, "lung_mask")
    check_2d(infection_arr, "infection_map")
    _check_same_shape(lung_arr, infection_arr, "lung_mask", "infection_map")
    lungs = as_mask(lung_arr, "lung_mask")
    infection = as_mask(infection_arr, "infection_map", threshold) & lungs

    right, left = split_lungs(lungs)
    zones = (*lung_zones(right), *lung_zones(left))
    zone_fractions = tuple(infected_fraction(z, infection) for z in zones)
    zone_scores = tuple(zone_score(f) for f in zone_fractions)
    fraction_right = infected_fraction(right, infection)
    fraction_left = infected_fraction(left, infection)
    extent_right, extent_left = extent_score(fraction_right), extent_score(fraction_left)
    brixia_total = sum(zone_scores)
    return Severity(
        fraction_right=fraction_right,
        fraction_left=fraction_left,
        # Over the split lungs, so that dropped specks do not count here but not in the per-lung scores.
        fraction_total=infected_fraction(right | left, infection),
        zone_fractions=zone_fractions,
        zone_scores=zone_scores,
        brixia_total=brixia_total,
        extent_right=extent_right,
        extent_left=extent_left,
        geographic_extent=extent_right + extent_left,
        grade=grade(brixia_total),
        area_right=int(right.sum()),
        area_left=int(left.sum()),
    )


def severity_targets(lung_mask: npt.ArrayLike, infection_mask: npt.ArrayLike) -> dict[str, float]:
    """Ground-truth severity targets from annotated masks (for datasets and synthetic phantoms).

    Args:
        lung_mask: HxW lung mask (bool, or numeric > 0.5 = lung).
        infection_mask: HxW infection mask (bool, or numeric > 0.5 = infected), same shape.

    Returns:
        ``{"geographic_extent": 0-8, "brixia": 0-18, "infected_fraction": 0-1}`` as floats, the form
        the dataset's ``severity`` vector takes.
    """
    severity = assess_severity(lung_mask, infection_mask)
    return {
        "geographic_extent": float(severity.geographic_extent),
        "brixia": float(severity.brixia_total),
        "infected_fraction": float(severity.fraction_total),
    }
