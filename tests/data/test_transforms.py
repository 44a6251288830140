"""The one resize and the one normalisation: each kind interpolates as its callers rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrnet.data.transforms import (
    Preprocessing,
    letterbox,
    letterbox_geometry,
    normalize,
    resize,
    unletterbox,
)

CHECKERBOARD = (np.indices((60, 60)).sum(axis=0) % 2).astype(np.float32)


def test_an_image_shrinks_by_area_averaging_so_fine_detail_does_not_alias() -> None:
    shrunk = resize(CHECKERBOARD, 20, 20)  # each output pixel averages a 3x3 block: 4/9 or 5/9
    assert shrunk.dtype == np.float32 and np.abs(shrunk - 0.5).max() < 0.06
    sampled = resize(CHECKERBOARD, 20, 20, kind="map")  # a map is sampled instead: cheaper, aliases here
    assert np.abs(sampled - 0.5).max() > 0.4


def test_an_image_is_enlarged_bilinearly() -> None:
    ramp = np.array([[0.0, 1.0]], np.float32)
    assert np.allclose(resize(ramp, 1, 4), [[0.0, 0.25, 0.75, 1.0]])


def test_a_mask_is_resized_as_fractions_and_thresholded() -> None:
    mask = np.zeros((8, 8), bool)
    mask[:, :5] = True  # the third output column covers one lung and one background column
    out = resize(mask, 4, 4, kind="mask")
    assert out.dtype == np.bool_ and out[0].tolist() == [True, True, False, False]  # half is not more
    assert resize(mask, 4, 4, kind="nearest")[0].tolist() == [True, True, True, False]  # sampled instead


@pytest.mark.parametrize(
    ("kind", "dtype", "expected"),
    [
        ("image", np.float64, np.float32),
        ("image", np.uint8, np.uint8),
        ("map", np.bool_, np.float32),
        ("mask", np.uint8, np.bool_),
        ("nearest", np.bool_, np.bool_),
        ("nearest", np.uint16, np.uint16),
    ],
)
def test_the_result_dtype_follows_the_kind(kind: str, dtype: type, expected: type) -> None:
    array = (np.arange(36).reshape(6, 6) % 2).astype(dtype)
    out = resize(array, 9, 3, kind=kind)
    assert out.shape == (9, 3) and out.dtype == expected


def test_a_bool_map_comes_back_as_zeros_and_ones() -> None:
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    assert set(np.unique(resize(mask, 13, 11, kind="map")).tolist()) == {0.0, 1.0}


def test_a_colour_picture_keeps_its_channels() -> None:
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 200
    out = resize(bgr, 8, 8, kind="nearest")
    assert out.shape == (8, 8, 3) and (out[..., 2] == 200).all() and not out[..., :2].any()


def test_an_unknown_kind_or_an_empty_size_is_refused() -> None:
    with pytest.raises(ValueError, match="valid: image, map, mask, nearest"):
        resize(CHECKERBOARD, 8, 8, kind="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1 pixel"):
        resize(CHECKERBOARD, 0, 8)


def test_unletterbox_returns_a_map_to_the_letterboxed_image_size() -> None:
    image = np.random.default_rng(0).random((90, 60)).astype(np.float32)
    square = letterbox(image, 32)
    back = unletterbox(square, letterbox_geometry(90, 60, 32))
    assert back.shape == (90, 60) and back.dtype == np.float32
    assert np.abs(back.mean() - image.mean()) < 0.02


def test_normalize_is_the_same_on_arrays_and_tensors() -> None:
    pre = Preprocessing(image_size=32, mean=0.4, std=0.2)
    image = np.random.default_rng(0).random((1, 1, 8, 8)).astype(np.float32)
    as_array = normalize(image, pre)
    as_tensor = normalize(torch.from_numpy(image), pre)
    assert as_array.dtype == np.float32 and as_tensor.dtype == torch.float32
    assert np.array_equal(as_array, as_tensor.numpy())
    assert np.allclose(as_array * pre.std + pre.mean, image, atol=1e-6)
