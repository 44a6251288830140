"""Read a DICOM file's single frame as float gray in [0, 1], checking its header before any pixel is read.

The modality LUT (rescale slope/intercept) is applied, then the first VOI LUT when the file has one (then
min-max), or else the first window centre/width (which maps the window onto [0, 1] and clips outside it), or
else min-max over the image; MONOCHROME1 is inverted last so that bone is always bright. Multi-frame files are
refused. The header's Rows x Columns must fit the pixel limit (:mod:`cxrnet.data.limits`) and describe the
pixel data; a deflated file is inflated only as far as its checked header says it can reach.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrnet.data.limits import ImageReadError, check_file, check_size
from cxrnet.data.raster import LUMA, min_max

__all__ = ["DICOM_MAX_ASPECT", "is_dicom", "read_dicom_image", "read_dicom_pixels"]

DICOM_MAX_ASPECT = 16.0
"""Longest-to-shortest side ratio above which a DICOM's Rows/Columns are taken to lie.

Uncompressed DICOM pixel data is a flat run of values: only the Rows and Columns elements give it a shape,
so a 256 x 256 image whose header says 16384 x 4 decodes without error into a strip. No radiograph is that
shape (stitched full-leg films are about 1:4), so such a header is refused rather than read as a nonsense
image.
"""

_DICOM_SUFFIXES = (".dcm", ".dicom")
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
    check_size(path, rows, columns, limit)
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
            f"refused (cxrnet.data.dicom.DICOM_MAX_ASPECT = {DICOM_MAX_ASPECT:g})",
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


def read_dicom_pixels(path: Path, limit: int):  # -> tuple[pydicom.Dataset, np.ndarray]
    """Open a DICOM file, check its header, then decode its single frame (raw stored values).

    Args:
        path: the file.
        limit: largest Rows x Columns to decode (:func:`~cxrnet.data.limits.max_image_pixels`).

    Returns:
        ``(dataset, pixels)``: the pydicom dataset and its stored values, HxW or HxWx3, native dtype.

    Raises:
        ImageReadError: unreadable, multi-frame, too large, or a header that does not describe its pixel data.
    """
    import pydicom

    check_file(path)
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


def read_dicom_image(path: Path, limit: int) -> np.ndarray:
    """A DICOM radiograph as float64 HxW in [0, 1], with the LUTs applied (see the module docstring).

    Raises:
        ImageReadError: as :func:`read_dicom_pixels`, or pixel values that are not finite once rescaled.
    """
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    ds, pixels = read_dicom_pixels(path, limit)
    if pixels.ndim == 3:  # RGB DICOM (rare for radiographs): no LUTs apply to colour data
        return min_max(pixels[..., :3].astype(np.float64) @ LUMA)
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if ds.get(keyword) is not None:
            _finite_header_number(path, keyword, ds.get(keyword))
    modality = np.asarray(apply_modality_lut(pixels, ds))
    values = modality.astype(np.float64)
    if "VOILUTSequence" in ds:
        indices = np.rint(modality).astype(np.int64)  # a LUT is indexed by integer values
        values = min_max(np.asarray(apply_voi_lut(indices, ds, index=0, prefer_lut=True), np.float64))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = _finite_header_number(path, "WindowCenter", ds.WindowCenter)
        width = _finite_header_number(path, "WindowWidth", ds.WindowWidth)
        values = _window(values, center, width, ds.get("VOILUTFunction"))
    else:
        values = min_max(values)
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
