"""Read binary masks (lung, infection) from disk as bool arrays, and list what is wrong with a mask file.

A mask is read from the same formats as an image (:mod:`cxrnet.data.images`), under the same pixel limit, and
reduced like its image when the image was read reduced (``factor``). 0/255 and 0/1 masks are read exactly; a
mask with more values (typically a JPEG-compressed mask) is thresholded at half its dtype's range.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxrnet.data.dicom import is_dicom, read_dicom_pixels
from cxrnet.data.limits import ImageReadError, decoder_errors, max_image_pixels
from cxrnet.data.raster import read_raster
from cxrnet.data.reduction import area_reduce

__all__ = ["MaskSizeError", "mask_problems", "read_mask", "read_mask_noting"]


class MaskSizeError(ImageReadError):
    """A mask file is readable but its size differs from its image's (``reason`` gives both sizes)."""


def read_mask(
    path: str | os.PathLike[str],
    shape: tuple[int, int] | None = None,
    *,
    strict: bool = False,
    max_pixels: int | None = None,
    factor: int = 1,
) -> np.ndarray:
    """Read a binary mask as bool HxW.

    0/255 and 0/1 masks are read exactly; in colour masks a pixel is set when any colour channel is.
    A mask with more than two distinct values (typically a JPEG-compressed mask) is thresholded at half
    its dtype's range, or refused when ``strict``; :func:`mask_problems` lists such files for a data check.

    Args:
        path: mask file (PNG, JPEG, BMP, TIFF or DICOM).
        shape: expected (H, W), normally the image's; ``None`` skips the check.
        strict: raise instead of thresholding a non-binary mask.
        max_pixels: largest height x width to decode; ``None`` uses
            :func:`~cxrnet.data.limits.max_image_pixels`.
        factor: reduce the mask like its image (:attr:`cxrnet.data.images.DecodedImage.factor`): a pixel of
            the result is set when more than half of its ``factor`` x ``factor`` block is. ``shape``,
            ``strict`` and the thresholding apply to the full-size mask first.

    Returns:
        bool array of shape HxW, or ``H / factor x W / factor``.

    Raises:
        ImageReadError: unreadable file (also one above the pixel limit), size different from ``shape``
            (:class:`MaskSizeError`), or (``strict``) non-binary values.
        ValueError: ``factor`` is not a whole number >= 1 that divides the mask's height and width.
    """
    path = Path(path)
    values = _checked_values(path, shape, max_pixels, factor)
    mask, was_binary = _binarise(values)
    if strict and not was_binary:
        count = len(np.unique(values))
        raise ImageReadError(
            path,
            f"mask has {count} distinct values; expected a binary mask (0/255 or 0/1). Re-save it "
            "losslessly (PNG) or read it with strict=False to threshold at half range",
        )
    return _reduce(mask, factor)


def read_mask_noting(
    path: str | os.PathLike[str],
    shape: tuple[int, int] | None = None,
    *,
    max_pixels: int | None = None,
    factor: int = 1,
) -> tuple[np.ndarray, list[str]]:
    """:func:`read_mask` (thresholding, not strict), also returning what was handled on the way.

    Item readers use this to read each mask once and still list non-binary masks in a data report.

    Returns:
        ``(mask, notes)``: the bool mask as :func:`read_mask` returns it, and human-readable notes without the
        path (empty for a binary mask), e.g. ``"mask has 37 distinct values; expected binary (it is
        thresholded at half range when loaded)"``.

    Raises:
        ImageReadError: as :func:`read_mask`.
        ValueError: as :func:`read_mask`.
    """
    path = Path(path)
    values = _checked_values(path, shape, max_pixels, factor)
    mask, was_binary = _binarise(values)
    return _reduce(mask, factor), [] if was_binary else [_non_binary_note(values)]


def mask_problems(path: str | os.PathLike[str], image_shape: tuple[int, int] | None = None) -> list[str]:
    """List what is wrong with a mask file, for a data check; an empty list means the mask is fine.

    Args:
        path: mask file.
        image_shape: (H, W) of the image the mask belongs to; ``None`` skips the size check.

    Returns:
        Human-readable problems (without the path), e.g. ``"mask has 37 distinct values; expected binary"``.
    """
    try:
        values = _read_mask_values(Path(path))
    except ImageReadError as exc:
        return [exc.reason]
    problems = []
    if image_shape is not None and tuple(values.shape) != tuple(image_shape):
        problems.append(_size_message(values.shape, image_shape))
    if not _binarise(values)[1]:
        problems.append(_non_binary_note(values))
    return problems


def _checked_values(
    path: Path, shape: tuple[int, int] | None, max_pixels: int | None, factor: int
) -> np.ndarray:
    """The mask's values at full size, checked against ``shape`` and ``factor`` (see :func:`read_mask`)."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor={factor!r} must be a whole number >= 1 (1: full size)")
    values = _read_mask_values(path, max_pixels)
    if shape is not None and tuple(values.shape) != tuple(shape):
        raise MaskSizeError(path, _size_message(values.shape, shape))
    if values.shape[0] % factor or values.shape[1] % factor:
        raise ValueError(
            f"factor={factor} does not divide the size {values.shape[0]}x{values.shape[1]} of {path}; pass "
            "the factor its image was read with (cxrnet.data.images.DecodedImage.factor)"
        )
    return values


def _read_mask_values(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """A mask file → one numeric HxW array (colour: the brightest channel; alpha only if colour is flat)."""
    limit = max_image_pixels(max_pixels)
    with decoder_errors(path):
        if is_dicom(path):
            return read_dicom_pixels(path, limit)[1]
        raster = read_raster(path, limit)
    pixels = raster.pixels
    if pixels.ndim == 2:
        return pixels
    colour = pixels[..., :1] if raster.channels.startswith("L") else pixels[..., :3]
    values = colour.max(axis=-1)
    if raster.channels.endswith("A") and values.min() == values.max():
        return pixels[..., -1]  # a mask drawn into the alpha channel of a flat colour
    return values


def _binarise(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """Return (mask, was_binary). Two-valued masks keep their brighter value; others are thresholded."""
    low, high = values.min(), values.max()
    if low == high:
        return np.full(values.shape, bool(high > 0)), True
    if np.all((values == low) | (values == high)):
        return values == high, True
    if np.issubdtype(values.dtype, np.integer) and values.dtype.itemsize <= 2:
        half = np.iinfo(values.dtype).max / 2
    elif np.issubdtype(values.dtype, np.floating) and high <= 1.0:
        half = 0.5
    else:
        half = (float(low) + float(high)) / 2
    return values > half, False


def _reduce(mask: np.ndarray, factor: int) -> np.ndarray:
    if factor > 1:
        return area_reduce(mask.astype(np.float32), int(factor)) > 0.5  # the letterbox's rule for masks
    return mask


def _size_message(mask_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> str:
    return (
        f"mask {mask_shape[0]}x{mask_shape[1]} differs from image {image_shape[0]}x{image_shape[1]} (HxW); "
        "masks must be stored at the image's size (resize with nearest-neighbour interpolation)"
    )


def _non_binary_note(values: np.ndarray) -> str:
    count = len(np.unique(values))
    return f"mask has {count} distinct values; expected binary (it is thresholded at half range when loaded)"
