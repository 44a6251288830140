"""Reduced reads: by how much an image that is letterboxed to the training size next may shrink as it is read.

A consumer that only needs the image letterboxed to ``target_size`` (training, the cache) reads it reduced by
``factor`` = the largest of 8, 4 and 2 that divides both its height and width and keeps its shorter side at
least :data:`REDUCED_READ_MARGIN` x ``target_size`` (:func:`reduction_factor`; 1 when none does). Dividing
exactly keeps the aspect ratio, so the letterbox places the reduced image exactly where it places the full
one. :func:`area_reduce` is the block mean every format but JPEG (which libjpeg decodes at that scale) uses.
"""

from __future__ import annotations

import numpy as np

from cxrnet.data.transforms import resize

__all__ = ["REDUCED_READ_MARGIN", "area_reduce", "reduction_factor"]

REDUCED_READ_MARGIN = 2
"""A reduced read keeps the image's shorter side at least this many times its ``target_size``.

The letterbox then still shrinks the reduced image by 2x or more, so the reduction adds little blur to the
letterbox's own. Measured on 1/f-noise images (more fine detail than a radiograph), the network's input moves
by 0.0015 on average (0.4 grey levels of 255) and 0.011 at most for a 2000 x 1600 JPEG read for 128 px, and by
0.005 on average, 0.024 at most, where the reduced side is just twice the target; perceptual hashes move by 0
to 2 bits of 256. Changing it changes what the cache stores (it is part of the cache key).
"""

_REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at; the other formats use the same ones


def reduction_factor(height: int, width: int, target_size: int) -> int:
    """By how much a reduced read shrinks an H x W image that is letterboxed to ``target_size`` next.

    Args:
        height: the full-size image's rows.
        width: the full-size image's columns.
        target_size: the square size, in pixels, the image is letterboxed to next.

    Returns:
        The largest of 8, 4 and 2 that divides both ``height`` and ``width`` and keeps the shorter side,
        ``min(H, W) / factor``, at least :data:`REDUCED_READ_MARGIN` x ``target_size``; 1 when none does.
    """
    needed = REDUCED_READ_MARGIN * int(target_size)
    for factor in _REDUCTIONS:
        if height % factor == 0 and width % factor == 0 and min(height, width) // factor >= needed:
            return factor
    return 1


def area_reduce(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of a float32 H x W array.

    Args:
        array: float32 H x W; ``factor`` divides H and W.
        factor: block side in pixels.

    Returns:
        float32 ``H / factor`` x ``W / factor``.
    """
    height, width = array.shape[:2]
    # whole blocks: area averaging's exact block-mean path, and the geometry of libjpeg's scaled decoding
    return resize(array, height // factor, width // factor, kind="image")
