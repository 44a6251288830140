"""Read radiographs and masks from disk into numpy arrays with one pixel convention.

Images come back as float32 HxW in [0, 1]; masks as bool HxW. Every failure raises
:class:`ImageReadError`, which names the file and says what is wrong with it.

Conventions (the same for every dataset):

* 8- and 16-bit PNG/JPEG/BMP/TIFF are divided by their dtype's maximum (255 or 65535); a 12-bit
  image stored in a 16-bit container therefore looks dark, as it does in any viewer.
  Float TIFFs already in [0, 1] are kept, other float images are min-max scaled.
* Colour images are reduced to luminance, ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, as
  Pillow's ``"L"`` conversion), at full bit depth.
* An alpha channel is composited over black: opaque pixels keep their value, transparent ones
  become 0 (the background of a radiograph). For the usual fully opaque RGBA export this is the
  same as dropping alpha.
* DICOM: the modality LUT (rescale slope/intercept) is applied, then the first VOI LUT when the file
  has one (then min-max), or else the first window centre/width (which maps the window onto [0, 1]
  and clips outside it), or else min-max over the image; MONOCHROME1 is inverted last so that
  bone is always bright. Multi-frame files are refused.
* No EXIF rotation is applied: pixels are returned as stored, so masks stored alongside stay aligned.

Every reader is bounded: an image larger than :data:`MAX_IMAGE_PIXELS` (PNG, JPEG, TIFF, BMP, 16-bit colour
PNG through OpenCV, DICOM of any transfer syntax, deflated DICOM included) is refused from its header, before
its pixels are decoded; a DICOM header whose geometry cannot describe its pixel data is refused too. Only
regular files are opened (a FIFO or a device would block the reader).

Reduced reads: a consumer that only needs the image letterboxed to ``target_size`` (training, the cache) reads
it with :func:`decode_image` (or :func:`load_record`) and ``target_size=``. The image then comes back reduced
by ``factor`` = the largest of 8, 4 and 2 that divides both its height and width and keeps its shorter side at
least :data:`REDUCED_READ_MARGIN` x ``target_size`` (:func:`reduction_factor`; 1 when none does):
``H / factor x W / factor``, each pixel the mean of a ``factor`` x ``factor`` block. Dividing exactly keeps
the aspect ratio, so the letterbox places the reduced image exactly where it places the full one. JPEGs are
decoded at that scale by libjpeg (DCT scaling: the inverse DCT runs at the reduced size, only the entropy
decoding reads the whole file); every other format is decoded whole and area-averaged right after decoding. Its masks are reduced by the same factor after thresholding
(block fractions above 0.5, as the letterbox does), so image and masks keep one geometry. Every check (pixel
limit, truncation, mask size) applies to the full-size file, before anything is reduced. Without
``target_size`` nothing changes: full size, as above.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrnet.data.records import RawItem, Record

__all__ = [
    "DICOM_MAX_ASPECT",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_PIXELS_ENV",
    "MAX_MISSING_ROWS",
    "REDUCED_READ_MARGIN",
    "DecodedImage",
    "ImageReadError",
    "TruncatedImageWarning",
    "decode_image",
    "find_images",
    "is_dicom",
    "load_record",
    "mask_problems",
    "max_image_pixels",
    "read_image",
    "read_image_noting",
    "read_mask",
    "reduction_factor",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)
"""Lower-case suffixes :func:`find_images` treats as images (suffix-less DICOM files are found too)."""

MAX_MISSING_ROWS = 0.02
"""Largest share of image rows a truncated file may lack and still be read (with a warning).

Public collections hold JPEGs that end a few bytes early (the covid-chestxray-dataset has one that ends 26
bytes short): viewers and OpenCV show them whole, and dropping them loses annotated films. A file cut
in half, by contrast, decodes to a flat grey lower half and is refused.
"""

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image, in pixels (height x width), that any reader decodes: 67 megapixels.

Chest radiographs are at most about 4300 x 4300 (18 megapixels); a file announcing more is a scan of
something else or a decompression bomb (a 1 MB PNG can announce 14000 x 14000 16-bit RGB: 1.2 GB once
decoded, several GB as float). Such files are refused from their header, before any pixel is decoded, with an
:class:`ImageReadError` naming the file, its size and the limit. Per call, pass ``max_pixels=`` to
:func:`read_image` / :func:`read_mask`; for a whole run (DataLoader workers and subprocesses included) set the
environment variable :data:`MAX_IMAGE_PIXELS_ENV`. Decoding needs up to about 24 bytes per pixel at the peak
(16-bit RGB: stored pixels, their float copy and the result), so the default bounds one decode to ~1.6 GB.
"""

MAX_IMAGE_PIXELS_ENV = "CXRNET_MAX_IMAGE_PIXELS"
"""Environment variable that replaces :data:`MAX_IMAGE_PIXELS` (a positive integer number of pixels)."""

DICOM_MAX_ASPECT = 16.0
"""Longest-to-shortest side ratio above which a DICOM's Rows/Columns are taken to lie.

Uncompressed DICOM pixel data is a flat run of values: only the Rows and Columns elements give it a shape,
so a 256 x 256 image whose header says 16384 x 4 decodes without error into a strip. No radiograph is that
shape (stitched full-leg films are about 1:4), so such a header is refused rather than read as a nonsense
image.
"""

REDUCED_READ_MARGIN = 2
"""A reduced read keeps the image's shorter side at least this many times its ``target_size``.

The letterbox then still shrinks the reduced image by 2x or more, so the reduction adds little blur to the
letterbox's own. Measured on 1/f-noise images (more fine detail than a radiograph), the network's input moves
by 0.0015 on average (0.4 grey levels of 255) and 0.011 at most for a 2000 x 1600 JPEG read for 128 px, and by
0.005 on average, 0.024 at most, where the reduced side is just twice the target; perceptual hashes move by 0
to 2 bits of 256. Changing it changes what the cache stores (it is part of the cache key).
"""

_REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at; the other formats use the same ones

_DICOM_SUFFIXES = (".dcm", ".dicom")
_LUMA = np.array([0.299, 0.587, 0.114])


class ImageReadError(ValueError):
    """An image or mask file cannot be read as a radiograph.

    Attributes:
        path: the file.
        reason: what is wrong with it and, where possible, how to fix it.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path}: {reason}")


class TruncatedImageWarning(UserWarning):
    """An image file ends early but decodes (almost) whole; it is read, and a data report lists it."""


@dataclass
class _Raster:
    """Pixels as stored: HxW or HxWxC, native dtype; ``channels`` names the layout.

    ``notes`` lists what was recovered on the way (a truncated file read anyway), without the path.
    """

    pixels: np.ndarray
    channels: str  # "L", "LA", "RGB" or "RGBA"
    notes: tuple[str, ...] = ()
    factor: int = 1  # the reduction the decoder already applied (libjpeg DCT scaling)
    shape: tuple[int, int] | None = None  # the file's full (H, W) when ``factor`` > 1


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


# ----------------------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Read a radiograph as float32 HxW in [0, 1].

    Args:
        path: PNG, JPEG, BMP, TIFF (8/16-bit, grayscale, RGB, RGBA, palette) or DICOM file.
        max_pixels: largest height x width to decode; ``None`` uses :func:`max_image_pixels`.

    Returns:
        float32 array of shape HxW with values in [0, 1] (see the module docstring for the conventions).

    Warns:
        TruncatedImageWarning: the file ends early but decodes with at most :data:`MAX_MISSING_ROWS` of its
            rows missing; the image is returned.

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

    Every image reader of this module decodes through this function.

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
    with _decoding(path):
        if is_dicom(path):
            values = _read_dicom_image(path, limit)
            shape = (int(values.shape[0]), int(values.shape[1]))
            factor = reduction_factor(*shape, target_size) if target_size else 1
            if factor > 1:
                values = _area_reduce(values.astype(np.float32), factor)
            return DecodedImage(np.ascontiguousarray(values, dtype=np.float32), shape, factor)
        raster = _read_raster(path, limit, target_size)
        shape = raster.shape or (int(raster.pixels.shape[0]), int(raster.pixels.shape[1]))
        factor = reduction_factor(*shape, target_size) if target_size else 1
        if factor == 1:
            image = _to_unit_gray(raster)
        else:
            image = _reduced_gray(raster, factor // raster.factor)
        return DecodedImage(np.ascontiguousarray(image, dtype=np.float32), shape, factor, raster.notes)


def reduction_factor(height: int, width: int, target_size: int) -> int:
    """By how much a reduced read shrinks an H x W image that is letterboxed to ``target_size`` next.

    Returns:
        The largest of 8, 4 and 2 that divides both ``height`` and ``width`` and keeps the shorter side,
        ``min(H, W) / factor``, at least :data:`REDUCED_READ_MARGIN` x ``target_size``; 1 when none does.
    """
    needed = REDUCED_READ_MARGIN * int(target_size)
    for factor in _REDUCTIONS:
        if height % factor == 0 and width % factor == 0 and min(height, width) // factor >= needed:
            return factor
    return 1


def _area_reduce(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of a float32 H x W array (``factor`` divides H and W)."""
    import cv2  # opencv comes with albumentations

    height, width = array.shape[:2]
    # whole blocks: OpenCV's exact block-mean path, and the geometry of libjpeg's scaled decoding
    return cv2.resize(array, (width // factor, height // factor), interpolation=cv2.INTER_AREA)


def _reduced_gray(raster: _Raster, factor: int) -> np.ndarray:
    """:func:`_to_unit_gray` of the raster, then reduced by ``factor`` (1: the decoder already reduced it)."""
    pixels = raster.pixels
    if factor > 1 and raster.channels == "L" and pixels.dtype in (np.uint8, np.uint16):
        # Division by the dtype's maximum commutes with averaging: average the stored values, then divide
        # the small array (the full-size float image is never made).
        small = _area_reduce(pixels.astype(np.float32), factor)
        return np.clip(small / np.float32(_dtype_max(pixels)), 0.0, 1.0)
    gray = _to_unit_gray(raster)
    return _area_reduce(gray.astype(np.float32), factor) if factor > 1 else gray


def max_image_pixels(override: int | None = None) -> int:
    """The pixel limit in force: ``override``, else :data:`MAX_IMAGE_PIXELS_ENV`, else the module constant.

    Raises:
        ValueError: the override or the environment variable is not a positive integer.
    """
    if override is None:
        setting = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
        if not setting:
            return int(MAX_IMAGE_PIXELS)
        try:
            override = int(setting.replace("_", ""))
        except ValueError:
            override = 0
        if override <= 0:
            raise ValueError(
                f"{MAX_IMAGE_PIXELS_ENV}={setting!r} is not a positive whole number of pixels "
                f"(e.g. {MAX_IMAGE_PIXELS_ENV}=100000000 for 100 megapixels); unset it for the default "
                f"{MAX_IMAGE_PIXELS}"
            )
        return override
    if int(override) <= 0:
        raise ValueError(f"max_pixels={override!r} must be a positive number of pixels")
    return int(override)


def _check_size(path: Path, height: int, width: int, limit: int) -> None:
    """Refuse an image announcing more than ``limit`` pixels, before anything is decoded."""
    if height * width > limit:
        raise ImageReadError(
            path,
            f"image is {height}x{width} (HxW), {height * width / 1e6:.1f} megapixels, above the limit of "
            f"{limit / 1e6:.1f} megapixels ({limit} pixels); refused before decoding (a decompression bomb, "
            "or far larger than any radiograph). If the file is genuine, raise the limit with "
            f"{MAX_IMAGE_PIXELS_ENV}=<pixels> or read_image(..., max_pixels=<pixels>)",
        )


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn any decoder failure into an :class:`ImageReadError` naming the file.

    Pillow, OpenCV, pydicom and zlib raise many exception types on malformed input; a caller that skips
    unreadable files (``data.on_error=skip``, predict) must be able to rely on a single one.
    """
    try:
        yield
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(
            path, "ran out of memory while decoding it; lower the pixel limit or free memory"
        ) from None
    except Exception as exc:
        raise ImageReadError(path, f"the decoder failed ({type(exc).__name__}: {exc})") from exc


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` suffix or the ``DICM`` magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # opening a FIFO would block until a writer appears
            return False
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file does not exist (check the dataset root and the file name)")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(
            path,
            "is not a regular file (a FIFO, socket or device, which would block the reader); pass an image "
            "file",
        )
    if info.st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes); re-copy or re-download it")


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_raster(path: Path, limit: int, target_size: int | None = None) -> _Raster:
    """Decode a non-DICOM image to its stored pixels, keeping 16-bit precision.

    With ``target_size``, a JPEG is decoded at the scale :func:`reduction_factor` allows (``factor`` and
    ``shape`` of the raster say so); every other format, and a truncated JPEG, comes back at full size.
    """
    _check_file(path)
    with open(path, "rb") as handle:
        head = handle.read(26)
    if head[:8] == _PNG_MAGIC and len(head) == 26:
        # The IHDR size is checked before Pillow or OpenCV allocate anything; OpenCV has no limit of its own.
        width, height = struct.unpack(">II", head[16:24])
        _check_size(path, height, width, limit)
    if _is_16bit_colour_png(head):
        return _read_16bit_colour_png(path)
    try:
        with Image.open(path) as im:
            _check_size(path, im.height, im.width, limit)
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


def _read_truncated(path: Path, error: str) -> _Raster:
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
    return _Raster(raster.pixels, raster.channels, (note,))


def _pil_to_raster(im: Image.Image) -> _Raster:
    mode = im.mode
    if mode in ("1", "L"):
        return _Raster(np.asarray(im), "L")
    if mode.startswith("I;16"):
        return _Raster(np.asarray(im).astype(np.uint16), "L")
    if mode in ("I", "F"):
        return _Raster(np.asarray(im), "L")
    if mode in ("LA", "La", "PA", "P"):
        has_alpha = mode != "P" or "transparency" in im.info
        if mode.startswith("L"):
            return _Raster(np.asarray(im.convert("LA")), "LA")
        return _Raster(np.asarray(im.convert("RGBA" if has_alpha else "RGB")), "RGBA" if has_alpha else "RGB")
    if mode in ("RGBA", "RGBa"):
        return _Raster(np.asarray(im.convert("RGBA")), "RGBA")
    return _Raster(np.asarray(im.convert("RGB")), "RGB")


def _is_16bit_colour_png(head: bytes) -> bool:
    """Whether the first 26 bytes of a file are a 16-bit RGB(A) or gray+alpha PNG's signature and IHDR."""
    # Pillow reduces these layouts to 8 bits; OpenCV keeps their depth.
    return head[:8] == _PNG_MAGIC and len(head) == 26 and head[24] == 16 and head[25] in (2, 4, 6)


def _read_16bit_colour_png(path: Path) -> _Raster:
    raster = _read_with_opencv(path)
    if raster is None:
        raise ImageReadError(path, "truncated or corrupt 16-bit PNG")
    return raster


def _read_with_opencv(path: Path) -> _Raster | None:
    """Stored pixels through OpenCV (native depth, RGB order), or ``None`` when it cannot decode the file."""
    import cv2  # opencv comes with albumentations; only needed for rare layouts and damaged files

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        return None
    if pixels.ndim == 2:
        return _Raster(pixels, "L")
    colour = pixels[..., 2::-1]  # OpenCV stores BGR(A)
    if pixels.shape[-1] == 4:
        return _Raster(np.concatenate([colour, pixels[..., 3:]], axis=-1), "RGBA")
    return _Raster(np.ascontiguousarray(colour), "RGB")


def _to_unit_gray(raster: _Raster) -> np.ndarray:
    """Stored pixels → float HxW in [0, 1] (luminance, alpha over black, divided by the dtype max)."""
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
        return _min_max(values)
    top = _dtype_max(pixels)
    values = pixels.astype(np.float32)  # 24-bit mantissa: exact for 16-bit data, half the memory of float64
    if raster.channels in ("L", "LA"):
        gray = values[..., 0] if values.ndim == 3 else values
    else:
        gray = values[..., :3] @ _LUMA.astype(np.float32)
    if raster.channels.endswith("A"):
        gray = gray * (values[..., -1] / np.float32(top))
    return np.clip(gray / np.float32(top), 0.0, 1.0)


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


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    if not math.isfinite(high - low):  # float64 extremes: halved first, or the span overflows to infinity
        values, low, high = values / 2, low / 2, high / 2
    return (values - low) / (high - low)


# ------------------------------------------------------------------------------------------ DICOM

_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset is zlib-deflated
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_DEFER_BYTES = 1 << 20  # elements above this (the pixel data) are read only once the header has been checked
_META_MAX_BYTES = 1 << 20  # file meta information is a few hundred bytes; more is not a radiograph file
_HEADER_MAX_BYTES = 64 << 20  # inflated header (everything before the pixel data) of a deflated file
_TRAILER_MAX_BYTES = 1 << 20  # inflated elements after the pixel data (padding, signatures)


def _dicom_meta(path: Path) -> tuple[str | None, int, bytes | None]:
    """Transfer syntax, offset of the dataset and preamble, read from the file meta group without pydicom.

    pydicom inflates a deflated dataset whole before anything can be checked: the syntax must be known first.

    Returns:
        ``(transfer_syntax_uid or None, dataset_offset, preamble or None)``.
    """
    with open(path, "rb") as handle:
        data = handle.read(_META_MAX_BYTES)
    preamble = data[:128] if data[128:132] == b"DICM" else None
    pos = 132 if preamble is not None else 0
    syntax = None
    while len(data) >= pos + 8:
        group, element = struct.unpack("<HH", data[pos : pos + 4])
        if group != 0x0002:
            return syntax, pos, preamble
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if len(data) < pos + 12:
                break
            (length,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            start = pos + 12
        else:
            (length,) = struct.unpack("<H", data[pos + 6 : pos + 8])
            start = pos + 8
        if element == 0x0010:
            syntax = data[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    if len(data) >= _META_MAX_BYTES:
        raise ImageReadError(path, "DICOM file meta information is larger than 1 MB; not a radiograph file")
    return syntax, pos, preamble


class _Inflater:
    """Inflates a raw deflate stream from an open file on demand, never past the length asked for."""

    def __init__(self, handle: object) -> None:
        self.handle = handle
        self.zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self.data = bytearray()
        self.done = False

    def fill(self, size: int) -> None:
        """Inflate until ``size`` bytes are held or the stream ends."""
        while len(self.data) < size and not self.done:
            chunk = self.zlib.unconsumed_tail or self.handle.read(1 << 16)  # type: ignore[attr-defined]
            if not chunk:
                self.data += self.zlib.flush()
                self.done = True
                break
            self.data += self.zlib.decompress(chunk, size - len(self.data))
            self.done = self.zlib.eof


def _parse_header(data: bytes):  # -> tuple[pydicom Dataset | None, int | None, int | None]
    """Parse inflated explicit-VR little-endian bytes up to the pixel data.

    Returns:
        ``(header, end, length)``: the elements before the pixel data, the offset just past the PixelData
        element's tag and length, and that length; ``end`` and ``length`` are ``None`` when the bytes stop
        before the pixel data, ``header`` is ``None`` when they stop inside an element.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    buffer = DicomBytesIO(data)
    found: dict[str, int] = {}

    def at_pixels(tag: int, vr: str | None, length: int) -> bool:
        if tag == _PIXEL_DATA:
            found.update(end=buffer.tell(), length=length)
        return tag == _PIXEL_DATA

    try:
        header = read_dataset(buffer, False, True, stop_when=at_pixels)
    except EOFError:
        header = None
    return header, found.get("end"), found.get("length")


def _read_deflated_dicom(
    path: Path, offset: int, preamble: bytes | None, limit: int
):  # -> pydicom FileDataset
    """Read a deflated DICOM, inflating only as far as its (checked) header says the file can reach."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    with open(path, "rb") as handle:
        handle.seek(offset)
        stream = _Inflater(handle)
        size = 1 << 16
        while True:  # inflate the header (everything before the pixel data), a little more each round
            stream.fill(size)
            header, end, length = _parse_header(bytes(stream.data))
            if end is not None or stream.done:
                break
            if size >= _HEADER_MAX_BYTES:
                raise ImageReadError(
                    path, "deflated DICOM header is larger than 64 MB; not a radiograph file"
                )
            size *= 4
        if header is None or end is None or length is None:
            raise ImageReadError(path, "deflated DICOM file has no pixel data (or its header is damaged)")
        _check_dicom_geometry(path, header, limit, length)
        # All the file may inflate to: its header, the pixel data the header describes and a small trailer.
        cap = end + (length if length != _UNDEFINED_LENGTH else 0) + _TRAILER_MAX_BYTES
        stream.fill(cap + 1)
        if len(stream.data) > cap:
            raise ImageReadError(
                path,
                f"deflated DICOM inflates to more than its header describes (over {cap} bytes for a "
                f"{header.Rows}x{header.Columns} image): a decompression bomb or a damaged file",
            )
    data = bytes(stream.data)
    del stream
    dataset = read_dataset(DicomBytesIO(data), False, True)
    with open(path, "rb") as handle:  # the file meta group, which is never deflated
        handle.seek(132 if preamble is not None else 0)
        meta_bytes = handle.read(offset - (132 if preamble is not None else 0))
    file_meta = FileMetaDataset(read_dataset(DicomBytesIO(meta_bytes), False, True))
    return FileDataset(str(path), dataset, preamble, file_meta, is_implicit_VR=False, is_little_endian=True)


def _check_dicom_geometry(path: Path, ds: object, limit: int, data_length: int | None) -> None:
    """Refuse a header whose pixel data is too large or cannot have the shape Rows x Columns claims.

    Args:
        ds: the pydicom dataset (header elements at least).
        data_length: length of the PixelData element in bytes (undefined for compressed data), if known.
    """
    get = ds.get  # type: ignore[attr-defined]
    rows, columns = int(get("Rows", 0) or 0), int(get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise ImageReadError(
            path, f"DICOM Rows x Columns is {rows}x{columns}; the header does not say the image size"
        )
    _check_size(path, rows, columns, limit)
    samples = int(get("SamplesPerPixel", 1) or 1)
    if samples not in (1, 3):
        raise ImageReadError(
            path,
            f"DICOM SamplesPerPixel is {samples}; a radiograph has 1 (grayscale) or 3 (RGB) samples per "
            "pixel",
        )
    aspect = max(rows, columns) / min(rows, columns)
    if aspect > DICOM_MAX_ASPECT:
        raise ImageReadError(
            path,
            f"DICOM Rows x Columns is {rows}x{columns}, a {aspect:.0f}:1 strip: no radiograph has that "
            "shape, so the header's Rows/Columns do not describe its pixel data (a crafted or damaged file); "
            f"refused (cxrnet.data.io.DICOM_MAX_ASPECT = {DICOM_MAX_ASPECT:g})",
        )
    bits = int(get("BitsAllocated", 0) or 0)
    if data_length is None or data_length == _UNDEFINED_LENGTH or bits not in (1, 8, 16, 32):
        return  # compressed (encapsulated) data: the codec's own header gives its size; pydicom checks it
    frames = int(get("NumberOfFrames", 1) or 1)
    # Uncompressed YBR_FULL_422 stores two chroma samples per pair of pixels: 2 values per pixel, not 3.
    stored = (
        2 if samples == 3 and str(get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422" else samples
    )
    expected = (rows * columns * stored * frames * bits + 7) // 8
    row_bytes = (columns * stored * bits + 7) // 8
    # One pad byte keeps the length even; some writers pad to a block, but never by a whole row.
    if not expected <= data_length < expected + max(2, row_bytes):
        raise ImageReadError(
            path,
            f"DICOM pixel data holds {data_length} bytes, but Rows x Columns x SamplesPerPixel x "
            f"BitsAllocated ({rows}x{columns}x{samples}x{bits} bits, {frames} frame(s)) needs {expected}: "
            "the header does not describe the pixel data (a crafted or damaged file)",
        )


def _pixel_data_length(ds: object) -> int | None:
    """Length in bytes of the PixelData element, without reading a deferred value."""
    element = ds.get_item("PixelData")  # type: ignore[attr-defined]
    if element is None:
        return None
    length = getattr(element, "length", None)  # a raw (possibly deferred) element knows its length
    if length is None and getattr(element, "value", None) is not None:
        length = len(element.value)
    return None if length is None else int(length)


def _read_dicom_pixels(path: Path, limit: int):  # -> tuple[pydicom.Dataset, np.ndarray]
    """Open a DICOM file, check its header, then decode its single frame (raw stored values)."""
    import pydicom

    _check_file(path)
    syntax, offset, preamble = _dicom_meta(path)
    try:
        if syntax == _DEFLATED:
            ds = _read_deflated_dicom(path, offset, preamble, limit)
        else:
            # The pixel data is deferred: it is read from disk only after the header has passed the checks.
            ds = pydicom.dcmread(path, force=True, defer_size=_DEFER_BYTES)
    except ImageReadError:
        raise
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageReadError(path, f"not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (not an image, or not DICOM at all)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            path, f"multi-frame DICOM ({frames} frames); expected a single radiograph (export one frame)"
        )
    _check_dicom_geometry(path, ds, limit, _pixel_data_length(ds))
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax_uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = ""
        if syntax_uid is not None and syntax_uid.is_compressed:
            hint = (
                f"; compressed transfer syntax {syntax_uid.name}: `pip install pylibjpeg[all]` may decode it"
            )
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({exc}){hint}") from exc
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
        raise ImageReadError(path, f"DICOM pixel data has shape {pixels.shape}; expected one 2D image")
    return ds, pixels


def _read_dicom_image(path: Path, limit: int) -> np.ndarray:
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    ds, pixels = _read_dicom_pixels(path, limit)
    if pixels.ndim == 3:  # RGB DICOM (rare for radiographs): no LUTs apply to colour data
        return _min_max(pixels[..., :3].astype(np.float64) @ _LUMA)
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if ds.get(keyword) is not None:
            _finite_header_number(path, keyword, ds.get(keyword))
    modality = np.asarray(apply_modality_lut(pixels, ds))
    values = modality.astype(np.float64)
    if "VOILUTSequence" in ds:
        indices = np.rint(modality).astype(np.int64)  # a LUT is indexed by integer values
        values = _min_max(np.asarray(apply_voi_lut(indices, ds, index=0, prefer_lut=True), np.float64))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = _finite_header_number(path, "WindowCenter", ds.WindowCenter)
        width = _finite_header_number(path, "WindowWidth", ds.WindowWidth)
        values = _window(values, center, width, ds.get("VOILUTFunction"))
    else:
        values = _min_max(values)
    # One reduction, no copy: float pixel data holding NaN, or a rescale that overflows, would otherwise
    # come back as an image of NaN that every later step silently carries.
    if not math.isfinite(float(values.sum())):
        raise ImageReadError(
            path,
            "DICOM pixel values are not finite after rescaling and windowing (NaN or infinity in the pixel "
            "data, or a rescale slope so large that it overflows): the file is damaged or crafted",
        )
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = 1.0 - values
    return values


def _finite_header_number(path: Path, keyword: str, value: object) -> float:
    """The (first) value of a DICOM element that scales pixel values; NaN or infinity would blank them."""
    number = _first(value)
    if not math.isfinite(number):
        raise ImageReadError(
            path,
            f"DICOM {keyword} is {number}: the pixel values cannot be scaled by it (a damaged or crafted "
            "header); fix the element or re-export the image",
        )
    return number


def _first(value: object) -> float:
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _window(values: np.ndarray, center: float, width: float, function: str | None) -> np.ndarray:
    """Map a DICOM window onto [0, 1] (PS3.3 C.11.2.1.2), clipping values outside it."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        return np.clip((values - (center - width / 2)) / max(width, 1e-6), 0.0, 1.0)
    if width <= 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


# ------------------------------------------------------------------------------------------ masks


def _read_mask_values(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """A mask file → one numeric HxW array (colour: the brightest channel; alpha only if colour is flat)."""
    limit = max_image_pixels(max_pixels)
    with _decoding(path):
        if is_dicom(path):
            return _read_dicom_pixels(path, limit)[1]
        raster = _read_raster(path, limit)
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
        max_pixels: largest height x width to decode; ``None`` uses :func:`max_image_pixels`.
        factor: reduce the mask like its image (:attr:`DecodedImage.factor`): a pixel of the result is set
            when more than half of its ``factor`` x ``factor`` block is. ``shape``, ``strict`` and the
            thresholding apply to the full-size mask first.

    Returns:
        bool array of shape HxW, or ``H / factor x W / factor``.

    Raises:
        ImageReadError: unreadable file (also one above the pixel limit), size different from ``shape``, or
            (``strict``) non-binary values.
        ValueError: ``factor`` is not a whole number >= 1 that divides the mask's height and width.
    """
    path = Path(path)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor={factor!r} must be a whole number >= 1 (1: full size)")
    values = _read_mask_values(path, max_pixels)
    if shape is not None and tuple(values.shape) != tuple(shape):
        raise ImageReadError(path, _size_message(values.shape, shape))
    if values.shape[0] % factor or values.shape[1] % factor:
        raise ValueError(
            f"factor={factor} does not divide the size {values.shape[0]}x{values.shape[1]} of {path}; pass "
            "the factor its image was read with (cxrnet.data.io.DecodedImage.factor)"
        )
    mask, was_binary = _binarise(values)
    if strict and not was_binary:
        count = len(np.unique(values))
        raise ImageReadError(
            path,
            f"mask has {count} distinct values; expected a binary mask (0/255 or 0/1). Re-save it "
            "losslessly (PNG) or read it with strict=False to threshold at half range",
        )
    if factor > 1:
        mask = _area_reduce(mask.astype(np.float32), int(factor)) > 0.5  # the letterbox's rule for masks
    return mask


def _size_message(mask_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> str:
    return (
        f"mask {mask_shape[0]}x{mask_shape[1]} differs from image {image_shape[0]}x{image_shape[1]} (HxW); "
        "masks must be stored at the image's size (resize with nearest-neighbour interpolation)"
    )


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
        count = len(np.unique(values))
        problems.append(
            f"mask has {count} distinct values; expected binary (it is thresholded at half range when loaded)"
        )
    return problems


# ---------------------------------------------------------------------------------------- records


def load_record(record: Record, *, target_size: int | None = None) -> RawItem:
    """Read a record's image and masks at the image's own size, or reduced for ``target_size``.

    The lung mask is the union of ``record.lung_mask`` files. A record without an infection mask file whose
    ``meta["infection_mask_empty"]`` is true (e.g. a QaTa control image) gets an all-zero infection mask,
    because its dataset guarantees it has no infection.

    Args:
        record: a dataset item from a reader in :mod:`cxrnet.data.sources`.
        target_size: the size the item is letterboxed to next (the training size): image and masks come back
            reduced alike, as :func:`decode_image` says. ``None``: full size.

    Returns:
        RawItem with float32 HxW image in [0, 1], bool HxW masks or ``None``, and ``meta`` holding the
        record's meta plus ``path``, ``patient_id``, ``source``, ``raw_label`` and ``split``.

    Warns:
        TruncatedImageWarning: as :func:`read_image`.

    Raises:
        ImageReadError: an image or mask cannot be read, or a mask's size differs from the image's (both
            at full size).
    """
    decoded = decode_image(record.path, target_size=target_size)
    for note in decoded.notes:
        warnings.warn(TruncatedImageWarning(f"{record.path}: {note}"), stacklevel=2)
    image, shape, factor = decoded.image, decoded.shape, decoded.factor
    lung = None
    for mask_path in record.lung_mask:
        part = read_mask(mask_path, shape=shape, factor=factor)
        lung = part if lung is None else lung | part
    infection = None
    if record.infection_mask is not None:
        infection = read_mask(record.infection_mask, shape=shape, factor=factor)
    elif record.meta.get("infection_mask_empty", False):
        infection = np.zeros(image.shape, dtype=bool)
    meta = {
        **record.meta,
        "path": record.path,
        "patient_id": record.patient_id,
        "source": record.source,
        "raw_label": record.raw_label,
        "split": record.split,
    }
    return RawItem(
        image=image,
        lung_mask=lung,
        infection_mask=infection,
        label=record.label,
        severity=dict(record.severity),
        meta=meta,
    )


# ------------------------------------------------------------------------------------- discovery


def find_images(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """List the image files under a folder, sorted.

    Files count as images by suffix (:data:`IMAGE_SUFFIXES`, case-insensitive); files without a suffix
    (or named by a DICOM UID) count when they carry the DICOM magic. Hidden files and folders (names starting with ``.``, such as macOS
    ``._x.png`` resource forks) are skipped.

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
