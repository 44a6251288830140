"""Read a dataset item (a :class:`Record`: one image and its masks) into pixels; the one item reader.

:func:`read_item` reads the image and every mask once, at full size or reduced for the training size, and
notes what it handled on the way (a truncated file read anyway, a non-binary mask thresholded) instead of
passing over it; it is what the data scan and the cache (:mod:`cxrnet.data.cache`) read with.
:func:`load_record` is the same read for the uncached dataset: it returns a :class:`RawItem` and turns the
notes into warnings. :func:`raw_item` is the one place that turns pixels into a :class:`RawItem` (its
``meta`` and the all-zero infection mask of a record whose dataset guarantees it has no infection).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from cxrnet.data import images
from cxrnet.data.findings import KIND_MASK_SIZE, KIND_NON_BINARY, KIND_TRUNCATED, KIND_UNREADABLE, Issue
from cxrnet.data.images import ImageReadError, TruncatedImageWarning
from cxrnet.data.masks import MaskSizeError, read_mask_noting
from cxrnet.data.records import RawItem, Record
from cxrnet.data.splits import image_hash

__all__ = ["ItemInfo", "ItemReadError", "ReadItem", "load_record", "raw_item", "read_item", "record_meta"]


class ItemReadError(ImageReadError):
    """An item cannot be used: its image or a mask cannot be read, or a mask's size differs from the image.

    Attributes:
        kind: ``"unreadable file"`` or ``"mask size mismatch"`` (:mod:`cxrnet.data.findings`).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, kind: str = KIND_UNREADABLE) -> None:
        super().__init__(path, reason)
        self.kind = kind

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # sent back from the processes of a fill
        return type(self), (self.path, self.reason, self.kind)


@dataclass(frozen=True)
class ItemInfo:
    """What a read pass learns about an item, besides its pixels.

    Attributes:
        hash: :func:`~cxrnet.data.splits.image_hash` of the image as read (reduced for the cache's size:
            within a few bits of the full-size image's hash, far below the near-duplicate distance);
            ``None`` when read with ``with_hash=False``.
        shape: full-size (H, W).
        issues: non-fatal issues (a non-binary mask is thresholded at half range and used; a file that ends
            a few rows early is read).
    """

    hash: int | None
    shape: tuple[int, int]
    issues: tuple[Issue, ...] = ()


@dataclass
class ReadItem:
    """An item's pixels with its :class:`ItemInfo`.

    Attributes:
        image: float32 h x w in [0, 1] (full size, or reduced for ``target_size``).
        lung_mask: bool h x w (the union of the record's lung mask files), or ``None``.
        infection_mask: bool h x w, or ``None`` when the record has no infection mask file.
        info: hash, full-size shape and non-fatal issues.
    """

    image: np.ndarray
    lung_mask: np.ndarray | None
    infection_mask: np.ndarray | None
    info: ItemInfo


def read_item(record: Record, *, target_size: int | None = None, with_hash: bool = True) -> ReadItem:
    """Read a record's image and masks, noting every issue on the way.

    The lung mask is the union of the ``record.lung_mask`` files. A non-binary mask is thresholded at half
    range and listed as a ``"non-binary mask"`` issue; an image file that ends early but decodes (almost)
    whole is read and listed as a ``"truncated file read"`` issue.

    A record with :attr:`~cxrnet.data.records.Record.pixels` is read from that object, at full size whatever
    ``target_size``, keeping the masks the record names; whatever it raises is an unreadable item.

    Args:
        record: a dataset item from a reader in :mod:`cxrnet.data.sources`.
        target_size: the size the item is letterboxed to next (the training size): image and masks come back
            reduced alike, as :func:`cxrnet.data.images.decode_image` says. ``None``: full size.
        with_hash: compute the image hash (:attr:`ItemInfo.hash`); ``False`` leaves it ``None``.

    Returns:
        :class:`ReadItem`: the pixels (infection mask ``None`` when the record has no file) and their info.

    Raises:
        ItemReadError: the image or a mask cannot be read, or a mask's size differs from the image's (both
            at full size); the message names the file and the reason, ``kind`` says which.
    """
    if record.pixels is not None:
        return _read_pixels(record, with_hash)
    try:
        # through the module, so that every read of an item goes through the one images.decode_image
        decoded = images.decode_image(record.path, target_size=target_size)
    except ImageReadError as exc:
        raise ItemReadError(exc.path, exc.reason, KIND_UNREADABLE) from None
    image, shape, factor = decoded.image, decoded.shape, decoded.factor
    issues = [Issue(KIND_TRUNCATED, record.path, note, problem=False) for note in decoded.notes]
    lung = None
    for mask_path in record.lung_mask:
        part, found = _read_mask(mask_path, shape, factor)
        lung, issues = (part if lung is None else lung | part), issues + found
    infection = None
    if record.infection_mask is not None:
        infection, found = _read_mask(record.infection_mask, shape, factor)
        issues += found
    info = ItemInfo(image_hash(image) if with_hash else None, shape, tuple(issues))
    return ReadItem(image, lung, infection, info)


def _read_pixels(record: Record, with_hash: bool) -> ReadItem:
    """A record whose pixels come from :attr:`Record.pixels`: at full size, with the masks the record names."""
    assert record.pixels is not None
    try:
        image, lung, infection = record.pixels.read()
    except Exception as exc:  # foreign dataset code fails in its own ways; report each as an unreadable item
        raise ItemReadError(record.path, f"{type(exc).__name__}: {exc}", KIND_UNREADABLE) from exc
    masks = {
        "lung mask": (bool(record.lung_mask), lung),
        "infection mask": (record.infection_mask is not None, infection),
    }
    for name, (named, mask) in masks.items():
        if named and mask is None:
            raise ItemReadError(record.path, f"its dataset gave no {name} this time", KIND_UNREADABLE)
        if named and mask.shape != image.shape:
            sizes = "x".join(map(str, mask.shape)), "x".join(map(str, image.shape))
            raise ItemReadError(record.path, f"{name} is {sizes[0]}, image {sizes[1]}", KIND_MASK_SIZE)
    lung, infection = (mask if named else None for named, mask in masks.values())
    info = ItemInfo(image_hash(image) if with_hash else None, (int(image.shape[0]), int(image.shape[1])))
    return ReadItem(image, lung, infection, info)


def _read_mask(path: str, shape: tuple[int, int], factor: int) -> tuple[np.ndarray, list[Issue]]:
    """One mask file at the image's geometry, with a ``"non-binary mask"`` issue when it was thresholded."""
    try:
        mask, notes = read_mask_noting(path, shape, factor=factor)
    except MaskSizeError as exc:
        raise ItemReadError(exc.path, exc.reason, KIND_MASK_SIZE) from None
    except ImageReadError as exc:
        raise ItemReadError(exc.path, exc.reason, KIND_UNREADABLE) from None
    # thresholded at half range and used (JPEG-saved masks with a grey edge are common): a warning
    return mask, [Issue(KIND_NON_BINARY, path, note, problem=False) for note in notes]


def record_meta(record: Record) -> dict[str, object]:
    """The ``meta`` of the :class:`RawItem` of a record.

    Returns:
        The record's meta plus ``path``, ``patient_id``, ``source``, ``raw_label`` and ``split``.
    """
    return {
        **record.meta,
        "path": record.path,
        "patient_id": record.patient_id,
        "source": record.source,
        "raw_label": record.raw_label,
        "split": record.split,
    }


def raw_item(
    record: Record, image: np.ndarray, lung: np.ndarray | None, infection: np.ndarray | None
) -> RawItem:
    """The :class:`RawItem` of a record's pixels, however they were read (from the files or the cache).

    A record without an infection mask whose ``meta["infection_mask_empty"]`` is true (e.g. a QaTa control
    image) gets an all-zero infection mask, because its dataset guarantees it has no infection.

    Args:
        record: the item's record (label, severity, meta).
        image: float32 h x w in [0, 1].
        lung: bool h x w, or ``None``.
        infection: bool h x w, or ``None`` when the record has no infection mask file.

    Returns:
        RawItem with these arrays, the record's label and severity, and ``meta`` from :func:`record_meta`.
    """
    if infection is None and record.meta.get("infection_mask_empty", False):
        infection = np.zeros(image.shape, dtype=bool)
    return RawItem(
        image=image,
        lung_mask=lung,
        infection_mask=infection,
        label=record.label,
        severity=dict(record.severity),
        meta=record_meta(record),
    )


def load_record(record: Record, *, target_size: int | None = None) -> RawItem:
    """Read a record's image and masks at the image's own size, or reduced for ``target_size``.

    Reads as :func:`read_item` (without the hash); non-binary masks are thresholded silently and an all-zero
    infection mask is added as :func:`raw_item` says.

    Args:
        record: a dataset item from a reader in :mod:`cxrnet.data.sources`.
        target_size: the size the item is letterboxed to next (the training size): image and masks come back
            reduced alike, as :func:`cxrnet.data.images.decode_image` says. ``None``: full size.

    Returns:
        RawItem with float32 HxW image in [0, 1], bool HxW masks or ``None``, and ``meta`` holding the
        record's meta plus ``path``, ``patient_id``, ``source``, ``raw_label`` and ``split``.

    Warns:
        TruncatedImageWarning: as :func:`cxrnet.data.images.read_image`, naming the file.

    Raises:
        ItemReadError: an :class:`~cxrnet.data.images.ImageReadError`: an image or mask cannot be read, or a
            mask's size differs from the image's (both at full size).
    """
    item = read_item(record, target_size=target_size, with_hash=False)
    for issue in item.info.issues:
        if issue.kind == KIND_TRUNCATED:
            warnings.warn(TruncatedImageWarning(f"{record.path}: {issue.detail}"), stacklevel=2)
    return raw_item(record, item.image, item.lung_mask, item.infection_mask)
