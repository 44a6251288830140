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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrnet.data.records import RawItem, Record

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "check_record",
    "find_images",
    "is_dicom",
    "load_record",
    "mask_problems",
    "read_image",
    "read_mask",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)
"""Lower-case suffixes :func:`find_images` treats as images (suffix-less DICOM files are found too)."""

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


@dataclass
class _Raster:
    """Pixels as stored: HxW or HxWxC, native dtype; ``channels`` names the layout."""

    pixels: np.ndarray
    channels: str  # "L", "LA", "RGB" or "RGBA"


# ----------------------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a radiograph as float32 HxW in [0, 1].

    Args:
        path: PNG, JPEG, BMP, TIFF (8/16-bit, grayscale, RGB, RGBA, palette) or DICOM file.

    Returns:
        float32 array of shape HxW with values in [0, 1] (see the module docstring for the conventions).

    Raises:
        ImageReadError: the file is missing, empty, truncated, corrupt, of an unsupported format, or holds
            more than one 2D frame.
    """
    path = Path(path)
    if is_dicom(path):
        image = _read_dicom_image(path)
    else:
        image = _to_unit_gray(_read_raster(path))
    return np.ascontiguousarray(image, dtype=np.float32)


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` suffix or the ``DICM`` magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
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
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes); re-copy or re-download it")


def _read_raster(path: Path) -> _Raster:
    """Decode a non-DICOM image to its stored pixels, keeping 16-bit precision."""
    _check_file(path)
    if _is_16bit_colour_png(path):
        return _read_16bit_colour_png(path)
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":
                raise ImageReadError(
                    path, f"has {frames} frames (a volume or an animation); expected one 2D radiograph"
                )
            im.load()
            return _pil_to_raster(im)
    except UnidentifiedImageError:
        raise ImageReadError(
            path,
            f"unsupported or unrecognised image format (suffix {path.suffix!r}); "
            "cxrnet reads PNG, JPEG, BMP, TIFF and DICOM",
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(path, f"truncated or corrupt image data ({exc})") from exc


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


def _is_16bit_colour_png(path: Path) -> bool:
    # Pillow reduces 16-bit RGB(A) and gray+alpha PNGs to 8 bits; detect them from the IHDR chunk.
    with open(path, "rb") as handle:
        head = handle.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[24] == 16 and head[25] in (2, 4, 6)


def _read_16bit_colour_png(path: Path) -> _Raster:
    import cv2  # opencv comes with albumentations; only needed for this rare layout

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageReadError(path, "truncated or corrupt 16-bit PNG")
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
        values = np.nan_to_num(pixels.astype(np.float64))
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
    return (values - low) / (high - low)


# ------------------------------------------------------------------------------------------ DICOM


def _read_dicom_pixels(path: Path):  # -> tuple[pydicom.Dataset, np.ndarray]
    """Open a DICOM file and decode its single frame (raw stored values)."""
    import pydicom

    _check_file(path)
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageReadError(path, f"not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (not an image, or not DICOM at all)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            path, f"multi-frame DICOM ({frames} frames); expected a single radiograph (export one frame)"
        )
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = ""
        if syntax is not None and syntax.is_compressed:
            hint = f"; compressed transfer syntax {syntax.name}: `pip install pylibjpeg[all]` may decode it"
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({exc}){hint}") from exc
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        raise ImageReadError(path, f"DICOM pixel data has shape {pixels.shape}; expected one 2D image")
    return ds, pixels


def _read_dicom_image(path: Path) -> np.ndarray:
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    ds, pixels = _read_dicom_pixels(path)
    if pixels.ndim == 3:  # RGB DICOM (rare for radiographs): no LUTs apply to colour data
        return _min_max(pixels[..., :3].astype(np.float64) @ _LUMA)
    modality = np.asarray(apply_modality_lut(pixels, ds))
    values = modality.astype(np.float64)
    if "VOILUTSequence" in ds:
        indices = np.rint(modality).astype(np.int64)  # a LUT is indexed by integer values
        values = _min_max(np.asarray(apply_voi_lut(indices, ds, index=0, prefer_lut=True), np.float64))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), ds.get("VOILUTFunction"))
    else:
        values = _min_max(values)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = 1.0 - values
    return values


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


def _read_mask_values(path: Path) -> np.ndarray:
    """A mask file → one numeric HxW array (colour: the brightest channel; alpha only if colour is flat)."""
    if is_dicom(path):
        return _read_dicom_pixels(path)[1]
    raster = _read_raster(path)
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
    path: str | os.PathLike[str], shape: tuple[int, int] | None = None, *, strict: bool = False
) -> np.ndarray:
    """Read a binary mask as bool HxW.

    0/255 and 0/1 masks are read exactly; in colour masks a pixel is set when any colour channel is.
    A mask with more than two distinct values (typically a JPEG-compressed mask) is thresholded at half
    its dtype's range, or refused when ``strict``; :func:`mask_problems` lists such files for a data check.

    Args:
        path: mask file (PNG, JPEG, BMP, TIFF or DICOM).
        shape: expected (H, W), normally the image's; ``None`` skips the check.
        strict: raise instead of thresholding a non-binary mask.

    Returns:
        bool array of shape HxW.

    Raises:
        ImageReadError: unreadable file, size different from ``shape``, or (``strict``) non-binary values.
    """
    path = Path(path)
    values = _read_mask_values(path)
    if shape is not None and tuple(values.shape) != tuple(shape):
        raise ImageReadError(path, _size_message(values.shape, shape))
    mask, was_binary = _binarise(values)
    if strict and not was_binary:
        count = len(np.unique(values))
        raise ImageReadError(
            path,
            f"mask has {count} distinct values; expected a binary mask (0/255 or 0/1). Re-save it "
            "losslessly (PNG) or read it with strict=False to threshold at half range",
        )
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


def load_record(record: Record) -> RawItem:
    """Read a record's image and masks at the image's own size.

    The lung mask is the union of ``record.lung_mask`` files. A record without an infection mask file whose
    ``meta["infection_mask_empty"]`` is true (e.g. a QaTa control image) gets an all-zero infection mask,
    because its dataset guarantees it has no infection.

    Args:
        record: a dataset item from a reader in :mod:`cxrnet.data.sources`.

    Returns:
        RawItem with float32 HxW image in [0, 1], bool HxW masks or ``None``, and ``meta`` holding the
        record's meta plus ``path``, ``patient_id``, ``source``, ``raw_label`` and ``split``.

    Raises:
        ImageReadError: an image or mask cannot be read, or a mask's size differs from the image's.
    """
    image = read_image(record.path)
    lung = None
    for mask_path in record.lung_mask:
        part = read_mask(mask_path, shape=image.shape)
        lung = part if lung is None else lung | part
    infection = None
    if record.infection_mask is not None:
        infection = read_mask(record.infection_mask, shape=image.shape)
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


def check_record(record: Record) -> list[str]:
    """Read a record's files and list every problem found (for a data check); empty when all is well.

    Returns:
        Problems as ``"<file>: <problem>"`` strings.
    """
    try:
        shape = read_image(record.path).shape
    except ImageReadError as exc:
        return [f"{exc.path}: {exc.reason}"]
    masks = [*record.lung_mask, *([record.infection_mask] if record.infection_mask else [])]
    return [f"{mask}: {problem}" for mask in masks for problem in mask_problems(mask, shape)]


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
