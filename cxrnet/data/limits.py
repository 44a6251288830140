"""What every image and mask reader refuses before it decodes a file, and the one error all of them raise.

A reader checks the file first (:func:`check_file`: it exists, is a regular file, is not empty), then the size
its header announces (:func:`check_size` against :func:`max_image_pixels`), and only then decodes; whatever
the decoder raises on the way becomes an :class:`ImageReadError` naming the file (:func:`decoder_errors`).
:mod:`cxrnet.data.images` re-exports the public names; the pixel limit is read from this module.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_PIXELS_ENV",
    "ImageReadError",
    "check_file",
    "check_size",
    "decoder_errors",
    "max_image_pixels",
]

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image, in pixels (height x width), that any reader decodes: 67 megapixels.

Chest radiographs are at most about 4300 x 4300 (18 megapixels); a file announcing more is a scan of
something else or a decompression bomb (a 1 MB PNG can announce 14000 x 14000 16-bit RGB: 1.2 GB once
decoded, several GB as float). Such files are refused from their header, before any pixel is decoded, with an
:class:`ImageReadError` naming the file, its size and the limit. Per call, pass ``max_pixels=`` to
:func:`~cxrnet.data.images.read_image` / :func:`~cxrnet.data.masks.read_mask`; for a whole run (DataLoader
workers and subprocesses included) set the environment variable :data:`MAX_IMAGE_PIXELS_ENV`. Decoding needs
up to about 24 bytes per pixel at the peak (16-bit RGB: stored pixels, their float copy and the result), so
the default bounds one decode to ~1.6 GB.
"""

MAX_IMAGE_PIXELS_ENV = "CXRNET_MAX_IMAGE_PIXELS"
"""Environment variable that replaces :data:`MAX_IMAGE_PIXELS` (a positive integer number of pixels)."""


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


def max_image_pixels(override: int | None = None) -> int:
    """The pixel limit in force: ``override``, else :data:`MAX_IMAGE_PIXELS_ENV`, else the module constant.

    Args:
        override: a limit in pixels (height x width) for one call, or ``None``.

    Returns:
        The limit in pixels.

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


def check_size(path: Path, height: int, width: int, limit: int) -> None:
    """Refuse an image announcing more than ``limit`` pixels, before anything is decoded.

    Args:
        path: the file, for the message.
        height: rows the header announces.
        width: columns the header announces.
        limit: largest height x width allowed (:func:`max_image_pixels`).

    Raises:
        ImageReadError: ``height * width > limit``.
    """
    if height * width > limit:
        raise ImageReadError(
            path,
            f"image is {height}x{width} (HxW), {height * width / 1e6:.1f} megapixels, above the limit of "
            f"{limit / 1e6:.1f} megapixels ({limit} pixels); refused before decoding (a decompression bomb, "
            "or far larger than any radiograph). If the file is genuine, raise the limit with "
            f"{MAX_IMAGE_PIXELS_ENV}=<pixels> or read_image(..., max_pixels=<pixels>)",
        )


def check_file(path: Path) -> None:
    """Refuse a path that is missing, a folder, not a regular file, or empty.

    Raises:
        ImageReadError: naming the file and what is wrong with it.
    """
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


@contextmanager
def decoder_errors(path: Path) -> Iterator[None]:
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
