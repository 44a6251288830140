"""Severity from masks: lung split, zones, scores and grades on hand-built masks with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrnet.severity import (
    ZONE_NAMES,
    Severity,
    assess_severity,
    extent_score,
    grade,
    infected_fraction,
    lung_zones,
    severity_targets,
    split_lungs,
    zone_score,
)

H, W = 96, 96
# Right lung on the image left, left lung on the image right; heights divisible by 3 for exact thirds.
RIGHT_ROWS, RIGHT_COLS = slice(15, 75), slice(10, 40)
LEFT_ROWS, LEFT_COLS = slice(18, 72), slice(56, 84)


def two_lungs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(both, right, left) bool masks of two separate rectangular lungs."""
    right = np.zeros((H, W), dtype=bool)
    right[RIGHT_ROWS, RIGHT_COLS] = True
    left = np.zeros((H, W), dtype=bool)
    left[LEFT_ROWS, LEFT_COLS] = True
    return right | left, right, left


def ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


# --- split_lungs -----------------------------------------------------------------------------------


def test_split_two_components_image_left_is_right_lung() -> None:
    both, right, left = two_lungs()
    got_right, got_left = split_lungs(both)
    np.testing.assert_array_equal(got_right, right)
    np.testing.assert_array_equal(got_left, left)


def test_split_two_components_off_centre() -> None:
    # Both lungs left of the image centre (patient shifted in the field): still split between them.
    both, right, left = two_lungs()
    shifted = np.zeros((H, 2 * W), dtype=bool)
    shifted[:, :W] = both
    got_right, got_left = split_lungs(shifted)
    assert got_right[:, :W].sum() == right.sum() and got_right[:, :W][right].all()
    assert got_left[:, :W].sum() == left.sum() and got_left[:, :W][left].all()


def test_split_empty_mask() -> None:
    right, left = split_lungs(np.zeros((H, W), dtype=bool))
    assert right.shape == left.shape == (H, W)
    assert not right.any() and not left.any()


@pytest.mark.parametrize("missing", ["left", "right"])
def test_split_one_lung_missing(missing: str) -> None:
    _, right, left = two_lungs()
    present = right if missing == "left" else left
    got_right, got_left = split_lungs(present)
    if missing == "left":
        np.testing.assert_array_equal(got_right, right)
        assert not got_left.any()
    else:
        np.testing.assert_array_equal(got_left, left)
        assert not got_right.any()


def test_split_touching_rectangles_cut_in_bridge_not_image_centre() -> None:
    # Lungs of unequal width joined by a thin bridge at columns 40-47; the image centre (column 64
    # of 128) lies inside the left lung, so a centre cut would be wrong by ~16 columns.
    mask = np.zeros((96, 128), dtype=bool)
    mask[15:75, 6:40] = True  # right lung, 34 columns
    mask[18:72, 48:72] = True  # left lung, 24 columns
    mask[40:43, 40:48] = True  # bridge
    right, left = split_lungs(mask)
    assert not (right & left).any() and ((right | left) == mask).all()
    assert right[:, :40].sum() == mask[:, :40].sum() and not right[:, 48:].any()
    assert left[:, 48:].sum() == mask[:, 48:].sum() and not left[:, :40].any()


def test_split_small_lung_touching_a_large_one_is_kept() -> None:
    # A small (e.g. collapsed) left lung, ~12 % of the lung area, merged with the right lung by a bridge.
    mask = np.zeros((H, W), dtype=bool)
    mask[15:75, 10:50] = True
    mask[30:60, 60:70] = True
    mask[44:46, 50:60] = True
    right, left = split_lungs(mask)
    assert right[:, :50].sum() == mask[:, :50].sum() and not right[:, 60:].any()
    assert left[:, 60:].sum() == mask[:, 60:].sum() and not left[:, :50].any()


def test_split_overlapping_ellipses_near_true_boundary() -> None:
    shape = (128, 128)
    right_true = ellipse(shape, cy=64, cx=42, ry=45, rx=22)
    left_true = ellipse(shape, cy=66, cx=82, ry=42, rx=20)
    assert (right_true & left_true).any(), "the test needs overlapping lungs"
    right, left = split_lungs(right_true | left_true)
    assert right.sum() == pytest.approx(right_true.sum(), rel=0.03)
    assert left.sum() == pytest.approx(left_true.sum(), rel=0.03)
    assert (right & right_true).sum() / right_true.sum() > 0.97


def test_split_groups_fragments_by_side_and_handles_specks() -> None:
    both, right, left = two_lungs()
    mask = both.copy()
    mask[44, RIGHT_COLS] = False  # right lung broken into upper and lower pieces
    mask[15:17, 60:62] = True  # speck just above the left lung: attached to it
    mask[90:92, 2:4] = True  # speck far from both lungs: dropped
    got_right, got_left = split_lungs(mask)
    np.testing.assert_array_equal(got_right, right & mask)
    assert got_left[15:17, 60:62].all()
    assert (got_left & ~left).sum() == 4
    assert not got_right[90:, :].any() and not got_left[90:, :].any()


def test_split_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        split_lungs(np.zeros((1, H, W), dtype=bool))


# --- zones, fractions, scores ----------------------------------------------------------------------


def test_lung_zones_are_exact_thirds_of_the_vertical_extent() -> None:
    _, right, _ = two_lungs()
    upper, middle, lower = lung_zones(right)
    assert not (upper & middle).any() and not (middle & lower).any() and not (upper & lower).any()
    np.testing.assert_array_equal(upper | middle | lower, right)
    assert [np.flatnonzero(z.any(axis=1)).tolist() for z in (upper, middle, lower)] == [
        list(range(15, 35)),
        list(range(35, 55)),
        list(range(55, 75)),
    ]


def test_lung_zones_of_empty_lung_are_empty() -> None:
    assert not any(z.any() for z in lung_zones(np.zeros((H, W), dtype=bool)))


def test_infected_fraction() -> None:
    region = np.zeros((4, 4), dtype=bool)
    region[:2] = True
    infection = np.zeros((4, 4), dtype=bool)
    infection[0, :2] = True
    infection[3] = True  # outside the region: not counted
    assert infected_fraction(region, infection) == pytest.approx(0.25)
    assert infected_fraction(np.zeros((4, 4), dtype=bool), infection) == 0.0


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, 0), (0.009, 0), (0.01, 1), (0.33, 1), (1 / 3, 2), (0.66, 2), (2 / 3, 3), (1.0, 3)],
)
def test_zone_score_thresholds(fraction: float, expected: int) -> None:
    assert zone_score(fraction) == expected


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, 0), (0.009, 0), (0.01, 1), (0.249, 1), (0.25, 2), (0.5, 3), (0.749, 3), (0.75, 4), (1.0, 4)],
)
def test_extent_score_thresholds(fraction: float, expected: int) -> None:
    assert extent_score(fraction) == expected


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_scores_reject_fractions_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        zone_score(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extent_score(bad)


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (0, "none"),
        (1, "mild"),
        (6, "mild"),
        (7, "moderate"),
        (12, "moderate"),
        (13, "severe"),
        (18, "severe"),
    ],
)
def test_grade_bands(total: int, expected: str) -> None:
    assert grade(total) == expected


def test_grade_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="brixia_total"):
        grade(19)


# --- assess_severity -------------------------------------------------------------------------------


def test_lower_third_of_right_lung_infected() -> None:
    both, right, _ = two_lungs()
    infection = np.zeros_like(both)
    infection[55:75, RIGHT_COLS] = True  # exactly the right lung's lower third
    severity = assess_severity(both, infection)
    assert severity.zone_scores == (0, 0, 3, 0, 0, 0)
    assert severity.zone_fractions[2] == 1.0
    assert severity.fraction_right == pytest.approx(1 / 3)
    assert severity.fraction_left == 0.0
    assert severity.extent_right == 2 and severity.extent_left == 0
    assert severity.geographic_extent == 2
    assert severity.brixia_total == 3
    assert severity.grade == "mild"
    assert severity.fraction_total == pytest.approx(infection.sum() / both.sum())
    assert severity.area_right == right.sum()


def test_clear_lungs_score_zero() -> None:
    both, _, _ = two_lungs()
    severity = assess_severity(both, np.zeros_like(both))
    assert severity.zone_scores == (0,) * 6
    assert severity.brixia_total == 0 and severity.geographic_extent == 0
    assert severity.fraction_total == 0.0
    assert severity.grade == "none"


def test_fully_infected_lungs_score_maximum() -> None:
    both, right, left = two_lungs()
    severity = assess_severity(both, np.ones_like(both))
    assert severity.zone_scores == (3,) * 6
    assert severity.brixia_total == 18
    assert severity.geographic_extent == 8
    assert severity.grade == "severe"
    assert (severity.area_right, severity.area_left) == (right.sum(), left.sum())


def test_infection_outside_the_lungs_is_ignored() -> None:
    both, _, _ = two_lungs()
    severity = assess_severity(both, ~both)
    assert severity.brixia_total == 0 and severity.fraction_total == 0.0


def test_probabilities_are_thresholded() -> None:
    both, _, _ = two_lungs()
    probabilities = np.full(both.shape, 0.4, dtype=np.float32)
    probabilities[55:75, RIGHT_COLS] = 0.6
    assert assess_severity(both, probabilities).zone_scores == (0, 0, 3, 0, 0, 0)
    assert assess_severity(both, probabilities, threshold=0.3).brixia_total == 18
    # Uint8 masks (0/255) and float lung masks (0.0/1.0) are read as masks too.
    as_uint8 = (probabilities > 0.5).astype(np.uint8) * 255
    assert assess_severity(both.astype(np.float32), as_uint8).zone_scores == (0, 0, 3, 0, 0, 0)


def test_missing_lung_reports_zero_area() -> None:
    _, right, _ = two_lungs()
    severity = assess_severity(right, right)
    assert severity.area_left == 0 and severity.extent_left == 0
    assert severity.zone_scores == (3, 3, 3, 0, 0, 0)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(96, 96\).*\(48, 48\)"):
        assess_severity(np.zeros((96, 96), dtype=bool), np.zeros((48, 48), dtype=bool))


def test_non_2d_and_nan_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="infection_map must be a 2-D"):
        assess_severity(np.zeros((H, W), dtype=bool), np.zeros((1, H, W)))
    with pytest.raises(ValueError, match="NaN"):
        assess_severity(np.zeros((H, W), dtype=bool), np.full((H, W), np.nan))


def test_to_dict_has_stable_json_ready_keys() -> None:
    both, _, _ = two_lungs()
    out = assess_severity(both, np.zeros_like(both)).to_dict()
    expected = [
        "fraction_right",
        "fraction_left",
        "fraction_total",
        *(f"zone_fraction_{z}" for z in ZONE_NAMES),
        *(f"zone_score_{z}" for z in ZONE_NAMES),
        "brixia_total",
        "extent_right",
        "extent_left",
        "geographic_extent",
        "grade",
        "area_right",
        "area_left",
    ]
    assert list(out) == expected
    assert json.loads(json.dumps(out)) == out
    assert "zone_score_right_upper" in out


def test_severity_rejects_wrong_zone_count() -> None:
    with pytest.raises(ValueError, match="zone"):
        Severity(0.0, 0.0, 0.0, (0.0,) * 5, (0,) * 5, 0, 0, 0, 0, "none", 1, 1)


def test_severity_targets() -> None:
    both, _, _ = two_lungs()
    infection = np.zeros_like(both)
    infection[55:75, RIGHT_COLS] = True
    targets = severity_targets(both, infection)
    assert targets == {
        "geographic_extent": 2.0,
        "brixia": 3.0,
        "infected_fraction": pytest.approx(infection.sum() / both.sum()),
    }
    assert all(isinstance(v, float) for v in targets.values())
