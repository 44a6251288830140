"""Explanation metrics against known answers and against scikit-learn on seeded random maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, jaccard_score

from cxrnet.explain.metrics import (
    explanation_in_region_share,
    explanation_scores,
    pointing_game,
    saliency_average_precision,
    topk_f1,
    topk_iou,
    topk_mask,
)


def square_mask(
    shape: tuple[int, int] = (32, 32), rows: slice = slice(8, 16), cols: slice = slice(8, 16)
) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def random_case(seed: int, shape: tuple[int, int] = (24, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A saliency map correlated with a random blobby mask, so the scores are neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.15
    saliency = rng.normal(size=shape) + 1.5 * mask
    return saliency, mask


# --- pointing game ---------------------------------------------------------------------------------


def test_pointing_game_hit_and_miss() -> None:
    mask = square_mask()
    saliency = np.zeros(mask.shape)
    saliency[10, 10] = 1.0
    assert pointing_game(saliency, mask) is True
    saliency[10, 10], saliency[25, 25] = 0.0, 1.0
    assert pointing_game(saliency, mask) is False


def test_pointing_game_tolerance_is_euclidean() -> None:
    mask = square_mask()  # rows/cols 8..15
    saliency = np.zeros(mask.shape)
    saliency[18, 18] = 1.0  # 3 px below and 3 px right of the corner (15, 15): distance ~4.24
    assert not pointing_game(saliency, mask, tolerance=4)
    assert pointing_game(saliency, mask, tolerance=5)


def test_pointing_game_ties_need_every_maximum_inside() -> None:
    mask = square_mask()
    assert not pointing_game(np.ones(mask.shape), mask), "a flat map must not score a hit"
    saliency = np.zeros(mask.shape)
    saliency[9, 9] = saliency[12, 12] = 1.0
    assert pointing_game(saliency, mask)
    saliency[30, 30] = 1.0
    assert not pointing_game(saliency, mask)


def test_pointing_game_rejects_empty_mask() -> None:
    with pytest.raises(ValueError, match="empty"):
        pointing_game(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8), dtype=bool))


# --- top-k -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k_percent", "expected"), [(5, 51), (10, 102), (20, 205), (100, 1024), (0.01, 1)])
def test_topk_mask_exact_count(k_percent: float, expected: int) -> None:
    saliency = np.random.default_rng(1).random((32, 32))
    top = topk_mask(saliency, k_percent)
    assert top.dtype == np.bool_ and top.shape == saliency.shape
    assert top.sum() == expected  # round(k/100 * 1024), halves up, at least one pixel
    assert saliency[top].min() >= saliency[~top].max(initial=-np.inf)


def test_topk_mask_ties_are_taken_in_row_major_order() -> None:
    saliency = np.zeros((4, 5))
    top = topk_mask(saliency, 10)  # 2 of 20 pixels, all tied
    assert np.flatnonzero(top).tolist() == [0, 1]


@pytest.mark.parametrize("bad", [0, -5, 101])
def test_topk_mask_rejects_bad_k(bad: float) -> None:
    with pytest.raises(ValueError, match="k_percent"):
        topk_mask(np.zeros((4, 4)), bad)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k_percent", [5, 10, 20])
def test_topk_iou_and_f1_match_sklearn(seed: int, k_percent: float) -> None:
    saliency, mask = random_case(seed)
    top = topk_mask(saliency, k_percent).ravel()
    assert topk_iou(saliency, mask, k_percent) == pytest.approx(jaccard_score(mask.ravel(), top))
    assert topk_f1(saliency, mask, k_percent) == pytest.approx(f1_score(mask.ravel(), top))


def test_topk_perfect_map() -> None:
    mask = square_mask()  # 64 of 1024 pixels = 6.25 %
    assert topk_iou(mask.astype(float), mask, 6.25) == 1.0
    assert topk_f1(mask.astype(float), mask, 6.25) == 1.0


# --- average precision -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_sklearn(seed: int) -> None:
    saliency, mask = random_case(seed)
    expected = average_precision_score(mask.ravel(), saliency.ravel())
    assert saliency_average_precision(saliency, mask) == pytest.approx(expected, abs=1e-12)


def test_average_precision_with_ties_matches_sklearn() -> None:
    saliency, mask = random_case(7)
    quantised = np.round(saliency * 2) / 2  # a handful of distinct values, many ties
    expected = average_precision_score(mask.ravel(), quantised.ravel())
    assert saliency_average_precision(quantised, mask) == pytest.approx(expected, abs=1e-12)


def test_average_precision_is_invariant_to_monotone_rescaling() -> None:
    saliency, mask = random_case(3)
    assert saliency_average_precision(saliency, mask) == pytest.approx(
        saliency_average_precision(np.exp(3 * saliency) - 10, mask)
    )


def test_average_precision_perfect_and_flat_maps() -> None:
    mask = square_mask()
    assert saliency_average_precision(mask.astype(float), mask) == 1.0
    # A flat map ranks nothing: AP equals the positive share.
    assert saliency_average_precision(np.zeros(mask.shape), mask) == pytest.approx(mask.mean())


# --- mass share ------------------------------------------------------------------------------------


def test_region_share_known_values() -> None:
    region = np.zeros((2, 2), dtype=bool)
    region[0] = True
    saliency = np.array([[3.0, 1.0], [1.0, 0.0]])  # rescaled: [[1, 1/3], [1/3, 0]]
    assert explanation_in_region_share(saliency, region) == pytest.approx((1 + 1 / 3) / (1 + 2 / 3))
    assert explanation_in_region_share(10 * saliency - 7, region) == pytest.approx(
        explanation_in_region_share(saliency, region)
    )
    assert explanation_in_region_share(np.full((2, 2), 5.0), region) == 0.5


def test_scores_on_empty_mask_are_nan() -> None:
    saliency = np.random.default_rng(2).random((8, 8))
    empty = np.zeros((8, 8), dtype=bool)
    assert math.isnan(topk_iou(saliency, empty))
    assert math.isnan(topk_f1(saliency, empty))
    assert math.isnan(saliency_average_precision(saliency, empty))
    assert math.isnan(explanation_in_region_share(saliency, empty))


# --- all scores ------------------------------------------------------------------------------------


def test_explanation_scores_keys_and_values() -> None:
    saliency, mask = random_case(4, shape=(32, 32))
    lungs = np.zeros(mask.shape, dtype=bool)
    lungs[:, 4:28] = True
    scores = explanation_scores(saliency, mask, lungs)
    assert list(scores) == [
        "pointing_game",
        "average_precision",
        "infection_share",
        "top5_iou",
        "top5_f1",
        "top10_iou",
        "top10_f1",
        "top20_iou",
        "top20_f1",
        "lung_share",
    ]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in scores.values())
    assert scores["pointing_game"] == float(pointing_game(saliency, mask))
    assert scores["top10_f1"] == topk_f1(saliency, mask, 10)
    assert scores["lung_share"] == explanation_in_region_share(saliency, lungs)
    assert list(explanation_scores(saliency, mask, k_percent=(2.5,))) == [
        "pointing_game",
        "average_precision",
        "infection_share",
        "top2.5_iou",
        "top2.5_f1",
    ]


def test_explanation_scores_empty_infection_gives_nan_but_lung_share() -> None:
    saliency = np.random.default_rng(5).random((16, 16))
    lungs = square_mask((16, 16), slice(2, 14), slice(2, 14))
    scores = explanation_scores(saliency, np.zeros((16, 16), dtype=bool), lungs)
    assert all(math.isnan(v) for k, v in scores.items() if k != "lung_share")
    assert 0.0 < scores["lung_share"] < 1.0


def test_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(4, 4\)"):
        topk_iou(np.zeros((4, 4)), np.zeros((8, 8), dtype=bool))
    with pytest.raises(ValueError, match="2-D"):
        saliency_average_precision(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        explanation_scores(np.full((4, 4), np.nan), np.ones((4, 4), dtype=bool))
