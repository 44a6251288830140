"""Builders of hostile image files: decompression bombs and DICOM headers that lie, written without ever
holding the decoded pixels in memory (each bomb is compressed from a stream of zero rows).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

# 14000 x 14000: the size of the bombs reported in issue 10 (196 megapixels, 3x the default limit).
BOMB_SIDE = 14000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _deflate_zeros(total: int, *, raw: bool = False, block: int = 1 << 22) -> bytes:
    """``total`` zero bytes, deflated (zlib container, or raw deflate with ``raw``) in bounded memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    zeros = bytes(block)
    parts = []
    for start in range(0, total, block):
        parts.append(compressor.compress(zeros[: min(block, total - start)]))
    parts.append(compressor.flush())
    return b"".join(parts)


def bomb_png(path: Path, side: int = BOMB_SIDE, *, bit_depth: int = 8, colour_type: int = 0) -> Path:
    """A valid PNG of ``side`` x ``side`` zero pixels (colour type 0: gray, 2: RGB); a few hundred kB on disk.

    Every row is filter byte 0 followed by zeros, so the IDAT stream is a run of zeros that deflates ~1000:1.
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = 1 + side * channels * bit_depth // 8
    ihdr = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", _deflate_zeros(row * side))
        + _chunk(b"IEND", b"")
    )
    return path


def _dicom_header(rows: int, columns: int, syntax: str):  # -> pydicom Dataset
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "P1"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def deflated_dicom(path: Path, pixels: np.ndarray) -> Path:
    """A small, honest Deflated Explicit VR Little Endian DICOM of uint16 HxW ``pixels`` (by pydicom)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dicom_header(*pixels.shape, DeflatedExplicitVRLittleEndian)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def deflated_dicom_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A Deflated Explicit VR Little Endian DICOM of ``side`` x ``side`` 16-bit zeros: ~400 kB for 14000 px.

    The dataset (header elements, then PixelData) is deflated as one stream, as the transfer syntax requires.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dicom_header(side, side, DeflatedExplicitVRLittleEndian)
    meta = DicomBytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = side * side * 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = compressor.compress(body.getvalue() + pixel_header)
    zeros = bytes(1 << 22)
    for start in range(0, length, len(zeros)):
        stream += compressor.compress(zeros[: min(len(zeros), length - start)])
    stream += compressor.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(meta.getvalue() + stream)
    return path


def lying_dicom(
    path: Path, rows: int = 16384, columns: int = 4, *, true_shape: tuple[int, int] = (256, 256)
) -> Path:
    """An uncompressed 16-bit DICOM holding a ``true_shape`` image whose header claims ``rows`` x ``columns``.

    With the defaults the byte count matches (256 x 256 = 16384 x 4), so only the shape gives the lie away.
    """
    from pydicom.uid import ExplicitVRLittleEndian

    ds = _dicom_header(rows, columns, ExplicitVRLittleEndian)
    ramp = np.arange(true_shape[0] * true_shape[1], dtype="<u2").reshape(true_shape)
    ds.PixelData = ramp.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
