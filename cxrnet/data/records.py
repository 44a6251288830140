"""Plain-Python descriptions of dataset items, before any pixels are read.

A dataset reader (``cxrnet.data.sources.*``) turns a folder on disk into a list of :class:`Record`.
:func:`cxrnet.data.items.load_record` turns one record into a :class:`RawItem` (numpy arrays at the
file's own size); the synthetic phantoms produce :class:`RawItem` directly. ``CXRDataset`` turns a
``RawItem`` into the torch ``Sample`` dict of the data contract.

A record normally names files; a record whose pixels come from an object instead (an item of a
torchxrayvision dataset, :mod:`cxrnet.data.sources.xrv`) carries that object as :attr:`Record.pixels`, and the
one item reader (:func:`cxrnet.data.items.read_item`) asks it rather than decoding ``path``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class PixelSource(Protocol):
    """Where a record's pixels come from when they do not come from its files.

    Implementations are small per-item objects (they may share a dataset between them); they must be
    picklable for DataLoader worker processes started with ``spawn``.
    """

    def read(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The item's pixels at full size.

        Returns:
            ``(image, lung_mask, infection_mask)``: float32 HxW in [0, 1]; bool HxW masks of the image's size,
            or ``None`` where the item has none.

        Raises:
            Exception: anything; the item reader reports it as an unreadable item, naming ``Record.path``.
        """
        ...

    def cache_key(self) -> list[Any]:
        """JSON-serialisable values that change whenever the pixels :meth:`read` returns may change (a
        :class:`~cxrnet.data.cache.DataCache` entry is rebuilt when they do)."""
        ...


@dataclass(frozen=True)
class Record:
    """One radiograph of a dataset, as found on disk.

    Attributes:
        path: image file (PNG, JPEG or DICOM); with ``pixels``, the item's file when known, else a name for
            messages (``xrv://COVID19_Dataset/12``).
        patient_id: identifier used for patient-level splits; the file stem when a dataset has none.
        source: dataset name (``"covidx"``, ``"qata"``, ...).
        label: canonical class name after the dataset's label mapping; ``None`` when unlabelled.
        raw_label: the label string exactly as the dataset spells it.
        lung_mask: mask files whose union is the lung mask (Montgomery ships left and right); empty when absent.
            With ``pixels``, names of the masks it provides (so that counts need no pixels).
        infection_mask: infection mask file, or ``None`` (with ``pixels``: the name of the mask it provides).
        severity: severity scores the dataset provides, by name (``"geographic_extent"``, ``"opacity"``, ``"brixia"``).
        split: the dataset's official split (``"train"``, ``"val"``, ``"test"``) when it has one.
        meta: anything else worth keeping (view, sex, age, whether a mask is model-generated, ...).
        pixels: reads the image and masks instead of ``path`` and the mask files (:class:`PixelSource`), or
            ``None`` for a record of files. Only the masks the record names are used, so a reader's
            ``use_masks: false`` applies to it too.
    """

    path: str
    patient_id: str
    source: str
    label: str | None = None
    raw_label: str | None = None
    lung_mask: tuple[str, ...] = ()
    infection_mask: str | None = None
    severity: dict[str, float] = field(default_factory=dict)
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    pixels: PixelSource | None = field(default=None, repr=False, compare=False)


@dataclass
class RawItem:
    """One item with its pixels loaded, at the image's own size.

    Attributes:
        image: float32 H×W in [0, 1].
        lung_mask: bool H×W, or ``None`` when the item has none.
        infection_mask: bool H×W, or ``None`` when the item has none.
        label: canonical class name, or ``None``.
        severity: severity scores by name (missing names are simply absent).
        meta: at least ``path``, ``patient_id`` and ``source``.
    """

    image: np.ndarray
    lung_mask: np.ndarray | None = None
    infection_mask: np.ndarray | None = None
    label: str | None = None
    severity: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
