"""Mask reading: binary masks read exactly, others thresholded and listed, sizes checked against the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrnet.data.images import ImageReadError
from cxrnet.data.masks import mask_problems, read_mask

from fixtures import SHAPE, box_mask, save


@pytest.mark.parametrize("on", [255, 1])
def test_binary_masks_read_exactly(tmp_path: Path, on: int) -> None:
    pixels = box_mask(slice(2, 5), slice(3, 9), on=on)
    mask = read_mask(save(tmp_path / "m.png", pixels), shape=SHAPE)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, pixels > 0)


def test_rgb_mask_is_any_channel(tmp_path: Path) -> None:
    pixels = np.zeros((*SHAPE, 3), np.uint8)
    pixels[1, 1, 0] = 255
    pixels[2, 2, 2] = 255
    mask = read_mask(save(tmp_path / "m.png", pixels))
    assert mask.sum() == 2 and mask[1, 1] and mask[2, 2]


def test_non_binary_mask_is_thresholded_and_reported(tmp_path: Path) -> None:
    pixels = box_mask(slice(2, 10), slice(3, 12))
    path = save(tmp_path / "m.jpg", pixels, quality=60)
    assert len(np.unique(np.asarray(Image.open(path)))) > 2  # JPEG added intermediate values
    mask = read_mask(path)
    assert np.mean(mask == (pixels > 0)) > 0.95
    with pytest.raises(ImageReadError, match="distinct values"):
        read_mask(path, strict=True)
    problems = mask_problems(path, SHAPE)
    assert len(problems) == 1 and "distinct values; expected binary" in problems[0]


def test_mask_size_mismatch_names_both_sizes(tmp_path: Path) -> None:
    path = save(tmp_path / "m.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(ImageReadError, match="mask 10x12 differs from image 20x24") as info:
        read_mask(path, shape=SHAPE)
    assert str(path) in str(info.value)
    assert mask_problems(path, SHAPE) == [info.value.reason]
    assert mask_problems(save(tmp_path / "ok.png", np.zeros(SHAPE, np.uint8)), SHAPE) == []
