"""Read radiographs from disk into numpy arrays with one pixel convention, and find them in folders.

Images come back as float32 HxW in [0, 1]. Every failure raises :class:`ImageReadError`, which names the file
and says what is wrong with it. Masks are read by :mod:`cxrnet.data.masks`, a dataset item (image and masks)
by :mod:`cxrnet.data.items`.

Conventions (the same for every dataset):

* 8- and 16-bit PNG/JPEG/BMP/TIFF are divided by their dtype's maximum (255 or 65535); a 12-bit
  image stored in a 16-bit container therefore looks dark, as it does in any viewer.
  Float TIFFs already in [0, 1] are kept, other float images are min-max scaled.
* Colour images are reduced to luminance, ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, as
  Pillow's ``"L"`` conversion), at full bit depth.
* An alpha channel is composited over black: opaque pixels keep their value, transparent ones
  become 0 (the background of a radiograph). For the usual fully opaque RGBA export this is the
  same as dropping alpha.
* DICOM: LUTs and windowing as :mod:`cxrnet.data.dicom` says; MONOCHROME1 is inverted so that bone is always
  bright. Multi-frame files are refused.
* No EXIF rotation is applied: pixels are returned as stored, so masks stored alongside stay aligned.

Every reader is bounded: an image larger than :data:`~cxrnet.data.limits.MAX_IMAGE_PIXELS` (PNG, JPEG, TIFF,
BMP, 16-bit colour PNG through OpenCV, DICOM of any transfer syntax, deflated DICOM included) is refused from
its header, before its pixels are decoded; a DICOM header whose geometry cannot describe its pixel data is
refused too. Only regular files are opened (a FIFO or a device would block the reader).

Reduced reads: a consumer that only needs the image letterboxed to ``target_size`` (training, the cache) reads
it with :func:`decode_image` (or :func:`cxrnet.data.items.load_record`) and ``target_size=``. The image then
comes back reduced by ``factor`` (:func:`~cxrnet.data.reduction.reduction_factor`; 1 when no factor fits):
``H / factor x W / factor``, each pixel the mean of a ``factor`` x ``factor`` block. JPEGs are decoded at that
scale by libjpeg (DCT scaling: the inverse DCT runs at the reduced size, only the entropy decoding reads the
whole file); every other format is decoded whole and area-averaged right after decoding. Its masks are reduced
by the same factor after thresholding (block fractions above 0.5, as the letterbox does), so image and masks
keep one geometry. Every check (pixel limit, truncation, mask size) applies to the full-size file, before
anything is reduced. Without ``target_size`` nothing changes: full size, as above.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrnet.data.dicom import is_dicom, read_dicom_image
from cxrnet.data.limits import MAX_IMAGE_PIXELS_ENV, ImageReadError, decoder_errors, max_image_pixels
from cxrnet.data.raster import read_raster, reduced_gray, to_unit_gray
from cxrnet.data.reduction import area_reduce, reduction_factor

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS_ENV",
    "DecodedImage",
    "ImageReadError",
    "TruncatedImageWarning",
    "decode_image",
    "find_images",
    "is_dicom",
    "max_image_pixels",
    "read_image",
    "read_image_noting",
    "reduction_factor",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)
"""Lower-case suffixes :func:`find_images` treats as images (suffix-less DICOM files are found too)."""


class TruncatedImageWarning(UserWarning):
    """An image file ends early but decodes (almost) whole; it is read, and a data report lists it."""


@dataclass(frozen=True)
class DecodedImage:
    """An image as :func:`decode_image` returns it.

    Attributes:
        image: float32 h x w in [0, 1], ``h = H / factor`` and ``w = W / factor``.
        shape: the file's full-size (H, W).
        factor: 1 (full size), 2, 4 or 8: each pixel of ``image`` is the mean of a ``factor``² block.
        notes: what was recovered on the way (as :func:`read_image_noting` lists it).
    """

    image: np.ndarray
    shape: tuple[int, int]
    factor: int = 1
    notes: tuple[str, ...] = ()


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Read a radiograph as float32 HxW in [0, 1].

    Args:
        path: PNG, JPEG, BMP, TIFF (8/16-bit, grayscale, RGB, RGBA, palette) or DICOM file.
        max_pixels: largest height x width to decode; ``None`` uses :func:`max_image_pixels`.

    Returns:
        float32 array of shape HxW with values in [0, 1] (see the module docstring for the conventions).

    Warns:
        TruncatedImageWarning: the file ends early but decodes with at most
            :data:`~cxrnet.data.raster.MAX_MISSING_ROWS` of its rows missing; the image is returned.

    Raises:
        ImageReadError: the file is missing, empty, not a regular file, larger than the pixel limit, truncated
            beyond recovery, corrupt, of an unsupported format, or holds more than one 2D frame; a DICOM whose
            Rows/Columns cannot describe its pixel data. Whatever the decoder raised, the file is named.
        ValueError: ``max_pixels`` or :data:`MAX_IMAGE_PIXELS_ENV` is not a positive whole number.
    """
    image, notes = read_image_noting(path, max_pixels=max_pixels)
    for note in notes:
        warnings.warn(TruncatedImageWarning(f"{path}: {note}"), stacklevel=2)
    return image


def read_image_noting(
    path: str | os.PathLike[str], *, max_pixels: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """:func:`read_image`, returning what was recovered on the way instead of warning.

    Data scans use this (from several threads, where catching warnings is not safe) to list recovered files
    in their report.

    Returns:
        ``(image, notes)``: the float32 HxW image and human-readable notes without the path, e.g.
        ``"file ends early (image file is truncated (26 bytes not processed)); read anyway, 0 of 776 rows
        missing"``.
    """
    decoded = decode_image(path, max_pixels=max_pixels)
    return decoded.image, list(decoded.notes)


def decode_image(
    path: str | os.PathLike[str], *, target_size: int | None = None, max_pixels: int | None = None
) -> DecodedImage:
    """Read a radiograph, at reduced scale when it is only needed letterboxed to ``target_size``.

    Every image reader of cxrnet decodes through this function.

    Args:
        path: as :func:`read_image`.
        target_size: the square size the image is letterboxed to next (the training size); the image comes
            back reduced by :func:`reduction_factor` (see the module docstring). ``None``: full size, exactly
            as :func:`read_image`.
        max_pixels: largest height x width of the full-size file; ``None`` uses :func:`max_image_pixels`.

    Returns:
        :class:`DecodedImage`: the image, the file's full size, the factor applied and the recovery notes.

    Raises:
        ImageReadError: as :func:`read_image`; the checks apply to the full-size file whatever the reduction.
        ValueError: a ``target_size`` below 1, or a bad pixel limit.
    """
    path = Path(path)
    limit = max_image_pixels(max_pixels)
    if target_size is not None and int(target_size) < 1:
        raise ValueError(f"target_size={target_size!r} must be a positive number of pixels (or None)")
    with decoder_errors(path):
        if is_dicom(path):
            values = read_dicom_image(path, limit)
            shape = (int(values.shape[0]), int(values.shape[1]))
            factor = reduction_factor(*shape, target_size) if target_size else 1
            if factor > 1:
                values = area_reduce(values.astype(np.float32), factor)
            return DecodedImage(np.ascontiguousarray(values, dtype=np.float32), shape, factor)
        raster = read_raster(path, limit, target_size)
        shape = raster.shape or (int(raster.pixels.shape[0]), int(raster.pixels.shape[1]))
        factor = reduction_factor(*shape, target_size) if target_size else 1
        if factor == 1:
            image = to_unit_gray(raster)
        else:
            image = reduced_gray(raster, factor // raster.factor)
        return DecodedImage(np.ascontiguousarray(image, dtype=np.float32), shape, factor, raster.notes)


def find_images(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """List the image files under a folder, sorted.

    Files count as images by suffix (:data:`IMAGE_SUFFIXES`, case-insensitive); files without a suffix
    (or named by a DICOM UID) count when they carry the DICOM magic. Hidden files and folders (names starting
    with ``.``, such as macOS ``._x.png`` resource forks) are skipped.

    Args:
        root: a folder, or a single image file (returned as the only item).
        recursive: also look in sub-folders.

    Returns:
        Sorted image paths.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or folder: {root}")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = []
    for path in candidates:
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        suffix = path.suffix.lower()
        # DICOM files are often named without a suffix, or by a UID ending in digits
        if suffix in IMAGE_SUFFIXES or ((suffix == "" or suffix[1:].isdigit()) and is_dicom(path)):
            found.append(path)
    return sorted(found)
