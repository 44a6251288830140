"""Receive the files of one upload into a private folder, refusing what is too large or too many as it streams.

The multipart body is parsed as it arrives (python-multipart's streaming parser, the one Starlette uses), and
each file is written straight into the session's private folder under a server-chosen name (``<n>.<ext>``):
the name the browser sent is only shown, never used as a path. A file over the size limit stops being
written the moment it passes the limit; more files than allowed, or a body larger than all of them could be,
end the upload at once. What is received is only sniffed here (PNG, JPEG or DICOM, by their first bytes);
decoding, with cxrnet's pixel and decompression-bomb limits, is left to the model's worker
(:func:`cxrnet.data.images.read_image`).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["ACCEPTED", "Upload", "UploadRefused", "display_name", "receive_files", "sniff"]

ACCEPTED = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}
"""The kinds of file accepted, and the suffix each is stored under."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_SUFFIXES = (".dcm", ".dicom")
_MAX_FIELDS = 16
_MAX_FIELD_BYTES = 4096
_MAX_NAME = 120
_BODY_SLACK = 1 << 20  # multipart boundaries and headers on top of the files themselves


def _mb(size: int) -> str:
    return f"{size / (1 << 20):.4g}"


class UploadRefused(Exception):
    """The whole upload is refused; ``status`` is the HTTP status, ``message`` says why and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    """One file of an upload.

    Attributes:
        name: the file name the browser sent, cleaned for display (never used as a path).
        path: where it was written (inside the private folder); ``None`` when refused.
        size: bytes received.
        kind: ``"png"``, ``"jpeg"`` or ``"dicom"``; ``None`` when refused.
        refused: why the file is refused, ``None`` when it is accepted.
    """

    name: str
    path: Path | None
    size: int = 0
    kind: str | None = None
    refused: str | None = None


def display_name(raw: str) -> str:
    """A file name fit to show: its last path component, without control characters, at most 120 characters."""
    name = re.split(r"[\\/]", raw)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if len(name) > _MAX_NAME:
        name = name[: _MAX_NAME - 1] + "…"
    return name or "unnamed"


def sniff(path: Path, name: str) -> str | None:
    """The kind of an uploaded file from its first bytes (a DICOM without preamble also by its name)."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM" or name.lower().endswith(_DICOM_SUFFIXES):
        return "dicom"
    return None


class _Receiver:
    """The parser's callbacks: one file at a time into ``folder``, with the limits checked as bytes arrive."""

    def __init__(self, folder: Path, max_files: int, max_file_bytes: int, number: Callable[[], int]) -> None:
        self.folder = folder
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.number = number
        self.uploads: list[Upload] = []
        self.fields = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._current: Upload | None = None
        self._handle: IO[bytes] | None = None
        self._field_bytes = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self._disposition = b""
        self._current = None
        self._field_bytes = 0

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        raw_name = options.get(b"filename")
        if raw_name is None:  # a plain form field: tolerated, small and few, and ignored
            self.fields += 1
            if self.fields > _MAX_FIELDS:
                raise UploadRefused(400, f"too many form fields (more than {_MAX_FIELDS}); send only files")
            return
        name = raw_name.decode("utf-8", errors="replace")
        if not name:  # the picker's empty entry when nothing was chosen
            return
        if len(self.uploads) >= self.max_files:
            raise UploadRefused(
                413,
                f"too many files at once: more than {self.max_files}; upload at most {self.max_files} files "
                "at a time (start the server with max_files=<n> to change the limit)",
            )
        path = self.folder / f"{self.number()}.upload"
        self._current = Upload(display_name(name), path)
        self.uploads.append(self._current)
        self._handle = open(path, "xb")  # noqa: SIM115 (closed in part_end or close)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._current
        if upload is None:
            self._field_bytes += end - start
            if self._field_bytes > _MAX_FIELD_BYTES:
                raise UploadRefused(400, "a form field is too large; send only files")
            return
        upload.size += end - start
        if upload.refused is not None:
            return
        if upload.size > self.max_file_bytes:
            self._discard(upload, f"larger than the limit of {_mb(self.max_file_bytes)} MB")
            return
        assert self._handle is not None
        self._handle.write(data[start:end])

    def part_end(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._current = None

    def _discard(self, upload: Upload, reason: str) -> None:
        upload.refused = reason
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if upload.path is not None:
            upload.path.unlink(missing_ok=True)
        upload.path = None

    def close(self, remove: bool) -> None:
        """Close an open file; with ``remove``, delete every file written (the upload was refused)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if remove:
            for upload in self.uploads:
                if upload.path is not None:
                    upload.path.unlink(missing_ok=True)
                    upload.path = None

    def finish(self) -> list[Upload]:
        """Sniff and rename what was received: ``<n>.<ext>``, or a refusal saying what is wrong."""
        for upload in self.uploads:
            if upload.refused is not None or upload.path is None:
                continue
            if upload.size == 0:
                self._discard(upload, "the file is empty (0 bytes)")
                continue
            kind = sniff(upload.path, upload.name)
            if kind is None:
                self._discard(upload, "not a PNG, JPEG or DICOM file (its first bytes match none of them)")
                continue
            final = upload.path.with_suffix(ACCEPTED[kind])
            os.replace(upload.path, final)
            upload.path, upload.kind = final, kind
        return self.uploads


async def receive_files(
    headers: dict[str, str],
    stream: AsyncIterator[bytes],
    folder: Path,
    *,
    max_files: int,
    max_file_bytes: int,
    number: Callable[[], int],
) -> list[Upload]:
    """Stream a ``multipart/form-data`` body into ``folder``.

    Args:
        headers: the request's headers (lower-case names): ``content-type``, ``content-length``.
        stream: the request body, chunk by chunk.
        folder: an existing private folder; files are written as ``<n>.<ext>``.
        max_files: most files allowed in the body.
        max_file_bytes: largest file allowed; a larger one is refused alone, the others are kept.
        number: gives the ``<n>`` of each file (unique in the folder).

    Returns:
        One :class:`Upload` per file part, in order; refused ones carry their reason and no path.

    Raises:
        UploadRefused: not a multipart upload, more than ``max_files`` files, a body larger than ``max_files``
            files of the largest size, or a malformed body. Nothing is left in ``folder`` then.
    """
    content_type, params = parse_options_header(headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UploadRefused(415, "send the images as multipart/form-data (a form with one or more files)")
    max_body = max_files * max_file_bytes + _BODY_SLACK
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise UploadRefused(
            413,
            f"the upload is {int(declared) / (1 << 20):.1f} MB, more than {max_files} files of at most "
            f"{_mb(max_file_bytes)} MB each could be; send fewer or smaller files",
        )
    receiver = _Receiver(folder, max_files, max_file_bytes, number)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > max_body:
                raise UploadRefused(
                    413, f"the upload is larger than {max_files} files of {_mb(max_file_bytes)} MB"
                )
            parser.write(chunk)
        parser.finalize()
    except UploadRefused:
        receiver.close(remove=True)
        raise
    except Exception as err:  # python-multipart's parse errors, a client that hung up
        receiver.close(remove=True)
        raise UploadRefused(400, f"the upload could not be read ({type(err).__name__}: {err})") from err
    receiver.close(remove=False)
    return receiver.finish()
