"""Decode PNG, JPEG, BMP and TIFF files to their stored pixels, and those to float gray in [0, 1].

:func:`read_raster` keeps the stored depth (16-bit data stays 16-bit; layouts Pillow would reduce to 8 bits
go through OpenCV) and recovers files that end a few rows early (:data:`MAX_MISSING_ROWS`);
:func:`to_unit_gray` applies the pixel conventions of :mod:`cxrnet.data.images`. DICOM files are read by
:mod:`cxrnet.data.dicom` instead.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrnet.data.limits import MAX_IMAGE_PIXELS_ENV, ImageReadError, check_file, check_size
from cxrnet.data.reduction import area_reduce, reduction_factor

__all__ = ["LUMA", "MAX_MISSING_ROWS", "Raster", "min_max", "read_raster", "reduced_gray", "to_unit_gray"]

MAX_MISSING_ROWS = 0.02
"""Largest share of image rows a truncated file may lack and still be read (with a warning).

Public collections hold JPEGs that end a few bytes early (the covid-chestxray-dataset has one that ends 26
bytes short): viewers and OpenCV show them whole, and dropping them loses annotated films. A file cut
in half, by contrast, decodes to a flat grey lower half and is refused.
"""

LUMA = np.array([0.299, 0.587, 0.114])
"""Luminance weights of R, G and B (ITU-R BT.601, as Pillow's ``"L"`` conversion), float64."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Raster:
    """Pixels as stored: HxW or HxWxC, native dtype; ``channels`` names the layout.

    ``notes`` lists what was recovered on the way (a truncated file read anyway), without the path.
    """

    pixels: np.ndarray
    channels: str  # "L", "LA", "RGB" or "RGBA"
    notes: tuple[str, ...] = ()
    factor: int = 1  # the reduction the decoder already applied (libjpeg DCT scaling)
    shape: tuple[int, int] | None = None  # the file's full (H, W) when ``factor`` > 1


def read_raster(path: Path, limit: int, target_size: int | None = None) -> Raster:
    """Decode a non-DICOM image to its stored pixels, keeping 16-bit precision.

    With ``target_size``, a JPEG is decoded at the scale :func:`~cxrnet.data.reduction.reduction_factor`
    allows (``factor`` and ``shape`` of the raster say so); every other format, and a truncated JPEG, comes
    back at full size.

    Args:
        path: the file.
        limit: largest height x width to decode, checked from the header.
        target_size: the size the image is letterboxed to next, or ``None`` for full size.

    Raises:
        ImageReadError: the file cannot be read (see :func:`cxrnet.data.images.read_image`).
    """
    check_file(path)
    with open(path, "rb") as handle:
        head = handle.read(26)
    if head[:8] == _PNG_MAGIC and len(head) == 26:
        # The IHDR size is checked before Pillow or OpenCV allocate anything; OpenCV has no limit of its own.
        width, height = struct.unpack(">II", head[16:24])
        check_size(path, height, width, limit)
    if _is_16bit_colour_png(head):
        return _read_16bit_colour_png(path)
    try:
        with Image.open(path) as im:
            check_size(path, im.height, im.width, limit)
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":
                raise ImageReadError(
                    path, f"has {frames} frames (a volume or an animation); expected one 2D radiograph"
                )
            full = (im.height, im.width)
            factor = reduction_factor(*full, target_size) if target_size else 1
            scaled = None
            if factor > 1 and im.format == "JPEG":
                # libjpeg's DCT scaling; Pillow answers with the box of the full image it decodes to
                scaled = im.draft(im.mode, (im.width // factor, im.height // factor))
            im.load()
            raster = _pil_to_raster(im)
            if scaled is None:
                return raster
            return replace(raster, factor=round(full[1] / scaled[1][2]), shape=full)
    except UnidentifiedImageError:
        raise ImageReadError(
            path,
            f"unsupported or unrecognised image format (suffix {path.suffix!r}); "
            "cxrnet reads PNG, JPEG, BMP, TIFF and DICOM",
        ) from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (PIL.Image.MAX_IMAGE_PIXELS) fired while opening, before cxrnet saw the size.
        raise ImageReadError(
            path,
            f"{exc}; refused before decoding. Both Pillow's limit (PIL.Image.MAX_IMAGE_PIXELS) and cxrnet's "
            f"({limit} pixels, {MAX_IMAGE_PIXELS_ENV}) apply; raise both if the file is genuine",
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        if "truncated" in str(exc):
            return _read_truncated(path, str(exc))
        raise ImageReadError(path, f"truncated or corrupt image data ({exc})") from exc


def _read_truncated(path: Path, error: str) -> Raster:
    """Decode a file that ends early with OpenCV, which keeps what was decoded; refuse it if rows are lost."""
    raster = _read_with_opencv(path)
    if raster is None:
        raise ImageReadError(path, f"truncated or corrupt image data ({error})")
    pixels = raster.pixels.reshape(raster.pixels.shape[0], -1)
    # The decoder fills what is missing with flat rows; count them from the bottom.
    flat = np.all(pixels == pixels[:, :1], axis=1)
    missing = int(np.argmin(flat[::-1])) if not flat.all() else len(flat)
    if missing > MAX_MISSING_ROWS * len(flat):
        raise ImageReadError(
            path,
            f"truncated image: the file ends early and the bottom {missing} of {len(flat)} rows are missing "
            f"({error}); re-copy or re-download it",
        )
    note = f"file ends early ({error}); read anyway, {missing} of {len(flat)} rows missing"
    return Raster(raster.pixels, raster.channels, (note,))


def _pil_to_raster(im: Image.Image) -> Raster:
    mode = im.mode
    if mode in ("1", "L"):
        return Raster(np.asarray(im), "L")
    if mode.startswith("I;16"):
        return Raster(np.asarray(im).astype(np.uint16), "L")
    if mode in ("I", "F"):
        return Raster(np.asarray(im), "L")
    if mode in ("LA", "La", "PA", "P"):
        has_alpha = mode != "P" or "transparency" in im.info
        if mode.startswith("L"):
            return Raster(np.asarray(im.convert("LA")), "LA")
        return Raster(np.asarray(im.convert("RGBA" if has_alpha else "RGB")), "RGBA" if has_alpha else "RGB")
    if mode in ("RGBA", "RGBa"):
        return Raster(np.asarray(im.convert("RGBA")), "RGBA")
    return Raster(np.asarray(im.convert("RGB")), "RGB")


def _is_16bit_colour_png(head: bytes) -> bool:
    """Whether the first 26 bytes of a file are a 16-bit RGB(A) or gray+alpha PNG's signature and IHDR."""
    # Pillow reduces these layouts to 8 bits; OpenCV keeps their depth.
    return head[:8] == _PNG_MAGIC and len(head) == 26 and head[24] == 16 and head[25] in (2, 4, 6)


def _read_16bit_colour_png(path: Path) -> Raster:
    raster = _read_with_opencv(path)
    if raster is None:
        raise ImageReadError(path, "truncated or corrupt 16-bit PNG")
    return raster


def _read_with_opencv(path: Path) -> Raster | None:
    """Stored pixels through OpenCV (native depth, RGB order), or ``None`` when it cannot decode the file."""
    import cv2  # opencv comes with albumentations; only needed for rare layouts and damaged files

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        return None
    if pixels.ndim == 2:
        return Raster(pixels, "L")
    colour = pixels[..., 2::-1]  # OpenCV stores BGR(A)
    if pixels.shape[-1] == 4:
        return Raster(np.concatenate([colour, pixels[..., 3:]], axis=-1), "RGBA")
    return Raster(np.ascontiguousarray(colour), "RGB")


def to_unit_gray(raster: Raster) -> np.ndarray:
    """Stored pixels → float HxW in [0, 1] (luminance, alpha over black, divided by the dtype max).

    Returns:
        float32 HxW for integer data, float64 HxW for float data (min-max scaled unless already in [0, 1]).
    """
    pixels = raster.pixels
    if pixels.dtype == bool:
        return pixels.astype(np.float32)
    if np.issubdtype(pixels.dtype, np.floating):
        values = pixels.astype(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            # NaN counts as 0; an infinity as the image's finite extreme (a saturated pixel): left in, it
            # would turn the scaling below into NaN.
            low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0, 0)
            values = np.nan_to_num(values, nan=0.0, posinf=high, neginf=low)
        if values.min() >= 0.0 and values.max() <= 1.0:
            return values
        return min_max(values)
    top = _dtype_max(pixels)
    values = pixels.astype(np.float32)  # 24-bit mantissa: exact for 16-bit data, half the memory of float64
    if raster.channels in ("L", "LA"):
        gray = values[..., 0] if values.ndim == 3 else values
    else:
        gray = values[..., :3] @ LUMA.astype(np.float32)
    if raster.channels.endswith("A"):
        gray = gray * (values[..., -1] / np.float32(top))
    return np.clip(gray / np.float32(top), 0.0, 1.0)


def reduced_gray(raster: Raster, factor: int) -> np.ndarray:
    """:func:`to_unit_gray` of the raster, then reduced by ``factor`` (1: the decoder already reduced it).

    Returns:
        float HxW in [0, 1], ``factor`` times smaller on each side than the raster.
    """
    pixels = raster.pixels
    if factor > 1 and raster.channels == "L" and pixels.dtype in (np.uint8, np.uint16):
        # Division by the dtype's maximum commutes with averaging: average the stored values, then divide
        # the small array (the full-size float image is never made).
        small = area_reduce(pixels.astype(np.float32), factor)
        return np.clip(small / np.float32(_dtype_max(pixels)), 0.0, 1.0)
    gray = to_unit_gray(raster)
    return area_reduce(gray.astype(np.float32), factor) if factor > 1 else gray


def _dtype_max(pixels: np.ndarray) -> float:
    if pixels.dtype == np.uint8:
        return 255.0
    if pixels.dtype == np.uint16:
        return 65535.0
    # 32-bit integer images (Pillow mode "I"): 16-bit data when it fits, else its own range
    low, high = int(pixels.min()), int(pixels.max())
    if low >= 0 and high <= 65535:
        return 65535.0
    return float(max(high, 1))


def min_max(values: np.ndarray) -> np.ndarray:
    """Scale float values linearly onto [0, 1] (all zeros when they are constant).

    Args:
        values: float64 array of any shape, finite.

    Returns:
        float64 array of the same shape in [0, 1].
    """
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    if not math.isfinite(high - low):  # float64 extremes: halved first, or the span overflows to infinity
        values, low, high = values / 2, low / 2, high / 2
    return (values - low) / (high - low)
