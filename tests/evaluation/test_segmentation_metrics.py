"""Dice, IoU and HD95 on small masks with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrnet.evaluation.segmentation import dice, hausdorff95, iou, segmentation_metrics


def _square(top: int, left: int, size: int, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_dice_iou_overlapping_squares():
    a, b = _square(10, 10, 10), _square(10, 13, 10)  # overlap 10 x 7
    assert dice(a, b) == pytest.approx(2 * 70 / 200)
    assert iou(a, b) == pytest.approx(70 / 130)


def test_empty_conventions():
    empty, full = np.zeros((8, 8)), _square(2, 2, 3, (8, 8))
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and iou(full, empty) == 0.0
    assert hausdorff95(empty, empty) == 0.0
    assert math.isnan(hausdorff95(empty, full)) and math.isnan(hausdorff95(full, empty))


def test_probabilities_are_binarised_at_half():
    pred = np.array([[0.2, 0.7], [0.51, 0.5]])
    target = np.array([[0, 1], [1, 0]])
    assert dice(pred, target) == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))


@pytest.mark.parametrize("k", [1, 4, 7])
def test_hd95_parallel_segments_offset_by_k(k):
    # One-pixel-thick segments are their own boundary; every point is exactly k rows from the other.
    a, b = np.zeros((20, 30), bool), np.zeros((20, 30), bool)
    a[5, 5:25] = True
    b[5 + k, 5:25] = True
    assert hausdorff95(a, b) == pytest.approx(k)
    assert hausdorff95(a, b, spacing=(0.5, 2.0)) == pytest.approx(0.5 * k)


def test_hd95_single_points():
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[1, 1], b[4, 5] = True, True
    assert hausdorff95(a, b) == pytest.approx(5.0)


def test_hd95_offset_squares_against_brute_force_perimeters():
    k = 3
    a, b = _square(10, 10, 10), _square(10, 10 + k, 10)

    def perimeter(top: int, left: int, size: int) -> np.ndarray:
        pts = {
            (top + i, left + j)
            for i in range(size)
            for j in range(size)
            if i in (0, size - 1) or j in (0, size - 1)
        }
        return np.array(sorted(pts), dtype=float)

    pa, pb = perimeter(10, 10, 10), perimeter(10, 10 + k, 10)
    d = np.linalg.norm(pa[:, None] - pb[None], axis=2)
    expected = np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)
    assert hausdorff95(a, b) == pytest.approx(expected)
    # The largest surface distance is k (left edge of A to left edge of B), so the 95th percentile is k.
    assert expected == pytest.approx(k)
    assert hausdorff95(a, a) == 0.0


def test_mask_touching_the_image_border_has_a_boundary_there():
    a = np.ones((6, 6), bool)
    b = np.ones((6, 6), bool)
    b[:, 0] = False
    assert hausdorff95(a, b) == pytest.approx(1.0)


def test_segmentation_metrics_aggregates():
    preds = [_square(10, 10, 10), np.zeros((20, 20)), np.zeros((40, 40)), _square(0, 0, 4, (8, 8))]
    targets = [_square(10, 13, 10), _square(5, 5, 4, (20, 20)), np.zeros((40, 40)), _square(0, 0, 4, (8, 8))]
    out = segmentation_metrics(preds, targets)
    np.testing.assert_allclose(out["per_image/dice"], [0.7, 0.0, 1.0, 1.0])
    assert out["dice/mean"] == pytest.approx(2.7 / 4)
    assert out["dice/median"] == pytest.approx(0.85)
    # Pooled: intersections 70 + 0 + 0 + 16, sizes (100 + 100) + (0 + 16) + 0 + (16 + 16).
    assert out["dice/pooled"] == pytest.approx(2 * 86 / 248)
    assert out["iou/pooled"] == pytest.approx(86 / (130 + 16 + 16))
    assert out["hd95/n_undefined"] == 1
    assert math.isnan(out["per_image/hd95"][1])
    assert out["hd95/mean"] == pytest.approx(np.mean([3.0, 0.0, 0.0]))
    assert out["n"] == 4 and out["n_empty_target"] == 1
