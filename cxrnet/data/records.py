"""Plain-Python descriptions of dataset items, before any pixels are read.

A dataset reader (``cxrnet.data.sources.*``) turns a folder on disk into a list of :class:`Record`.
:func:`cxrnet.data.items.load_record` turns one record into a :class:`RawItem` (numpy arrays at the
file's own size); the synthetic phantoms produce :class:`RawItem` directly. ``CXRDataset`` turns a
``RawItem`` into the torch ``Sample`` dict of the data contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Record:
    """One radiograph of a dataset, as found on disk.

    Attributes:
        path: image file (PNG, JPEG or DICOM).
        patient_id: identifier used for patient-level splits; the file stem when a dataset has none.
        source: dataset name (``"covidx"``, ``"qata"``, ...).
        label: canonical class name after the dataset's label mapping; ``None`` when unlabelled.
        raw_label: the label string exactly as the dataset spells it.
        lung_mask: mask files whose union is the lung mask (Montgomery ships left and right); empty when absent.
        infection_mask: infection mask file, or ``None``.
        severity: severity scores the dataset provides, by name (``"geographic_extent"``, ``"opacity"``, ``"brixia"``).
        split: the dataset's official split (``"train"``, ``"val"``, ``"test"``) when it has one.
        meta: anything else worth keeping (view, sex, age, whether a mask is model-generated, ...).
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
