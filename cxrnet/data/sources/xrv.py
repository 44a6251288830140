"""Any torchxrayvision dataset as a cxrnet source, read through the dataset's own loader.

Give the dataset as an object, or as the Hydra config of one (``_target_`` and its arguments)::

    python -m cxrnet.train data=xrv data.dataset.imgpath=<repo>/images data.dataset.csvpath=<repo>/metadata.csv

    from cxrnet.data.sources import xrv
    result = xrv.read(dataset=torchxrayvision.datasets.COVID19_Dataset(imgpath=..., csvpath=...))

A ``torchxrayvision.datasets.Dataset`` has ``pathologies`` (P names), ``labels`` (N x P: 1 present, 0 absent,
NaN unknown), ``csv`` (a DataFrame aligned with the items) and items ``dataset[i]``: a dict with ``"img"``
(1 x H x W floats in [-1024, 1024]), optionally ``"semantic_masks"`` (name → 1 x H x W mask) and
``"pathology_masks"`` (pathology index → 1 x H x W mask), all after the dataset's ``transform``. What is taken:

* **class**: through the label map, pathology name → class (``None`` drops the item on purpose), compared
  case-insensitively. xrv labels are multi-label (COVID19_Dataset marks a COVID-19 film ``Pneumonia``,
  ``Viral`` and ``COVID-19``): the first mapped pathology present, *in map order*, decides, so list the
  specific before the general. The inverse form, class → [pathologies], is read the same way (classes in
  order). With ``no_finding_class``, an item labelled 0 for every pathology (no NaN) gets that class
  (NIH and PadChest encode "No Finding" so). Any other item is an unknown label: an error naming it, or
  excluded and counted (``on_unknown_label="exclude"``, the data configs' default); its raw label is the
  pathologies present joined by ``|``.
* **pixels**: ``from_xrv``: ``(x / 1024 + 1) / 2``, the [0, 1] image every cxrnet reader returns.
* **lung mask**: the union of the semantic masks named in ``lung_masks`` (xrv 1.5 COVID19_Dataset with
  ``semantic_masks=True`` gives ``"Lungs"``; ``"Left Lung"`` and ``"Right Lung"`` are unioned too).
* **infection mask**: the union of the pathology masks of ``infection_pathologies`` (RSNA's opacity boxes,
  NIH's pneumonia boxes). A dataset built with masks (its ``semantic_masks`` or ``pathology_masks``
  attribute true) is read once here to learn which items have one: counts and mask-based selections need to
  know before any training. ``masks=False`` skips that read and the masks.
* **patient**: the ``patient_id_column`` of ``dataset.csv`` (``patientid``, which xrv gives most datasets),
  so that splits are patient-level; without it each image is its own patient, and a note says so.
* **severity**: ``severity`` maps a cxrnet score name to a pathology column holding a score
  (StonyBrookCOVID_Dataset's ``"Geographic Extent"``).
* **path**: the item's file when ``dataset.imgpath`` joined with a file column of ``dataset.csv`` exists
  (``filename``, ``Image Index``, ...), else ``xrv://<Dataset class>/<index>``.

Items the dataset itself leaves out (xrv's ``views`` filter, COVID19_Dataset's ``todo`` rows) never reach
cxrnet and are not counted here. Reading the pixels goes through :attr:`cxrnet.data.records.Record.pixels`,
so the scan, the cache, near-duplicate detection and the patient-level split treat these records as any
other. A dataset's own random ``data_aug`` runs at every read (a note says so); cxrnet augments training
items itself (``data.augment``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrnet.data.records import Record
from cxrnet.data.sources._common import ON_UNKNOWN_LABEL, Excluded, SourceResult, check_choice, label_key
from cxrnet.data.sources._xrv_pixels import Shared, XrvPixels

__all__ = ["DEFAULT_LABEL_MAP", "INFECTION_PATHOLOGIES", "LUNG_MASKS", "SOURCE", "XrvPixels", "read"]

SOURCE = "xrv"

DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "COVID-19": "covid19",  # before "Viral": COVID19_Dataset marks COVID-19 films viral too
    "Viral": "viral",
    "Bacterial": "bacterial",
    "No Finding": "normal",
    "Fungal": None,
    "Tuberculosis": None,
}
"""Pathology → class for COVID19_Dataset's names (its ``finding`` paths split at ``/``); map order decides."""

LUNG_MASKS = ("Lungs", "Left Lung", "Right Lung")
"""Semantic mask names whose union is the lung mask."""

INFECTION_PATHOLOGIES = ("Lung Opacity", "Pneumonia", "Consolidation", "Infiltration")
"""Pathologies whose masks (boxes in RSNA and NIH) make the infection mask."""

FILE_COLUMNS = ("filename", "Image Index", "ImageID", "ImageId", "Path", "path", "patientId", "image_id")
"""Columns of ``dataset.csv`` that name an item's file under ``dataset.imgpath`` (xrv datasets differ)."""


def read(
    root: str | os.PathLike[str] | None = None,
    *,
    dataset: Any = None,
    label_map: Mapping[str, Any] | None = None,
    on_unknown_label: str = "error",
    no_finding_class: str | None = None,
    lung_masks: Sequence[str] = LUNG_MASKS,
    infection_pathologies: Sequence[str] = INFECTION_PATHOLOGIES,
    masks: bool = True,
    patient_id_column: str | None = "patientid",
    severity: Mapping[str, str] | None = None,
) -> SourceResult:
    """Records of a torchxrayvision dataset's items (see the module docstring).

    Args:
        root: not used (the dataset knows its files); there for the common reader signature.
        dataset: a ``torchxrayvision.datasets.Dataset`` (or any object with ``pathologies``, ``labels``,
            ``__len__`` and ``__getitem__`` as xrv defines them), or a mapping with ``_target_``, built with
            ``hydra.utils.instantiate``.
        label_map: pathology → class (``None`` drops the item), first present in map order decides; or class →
            list of pathologies. Defaults to :data:`DEFAULT_LABEL_MAP`.
        on_unknown_label: ``"error"`` or ``"exclude"`` for items that map onto no class.
        no_finding_class: class of items labelled 0 for every pathology, or ``None``.
        lung_masks: semantic mask names whose union is the lung mask.
        infection_pathologies: pathologies whose masks make the infection mask.
        masks: use the dataset's masks (and read each item once here to find them, if it has any).
        patient_id_column: column of ``dataset.csv`` with patient ids, or ``None`` for one patient per image.
        severity: severity score name → pathology whose label is that score.

    Returns:
        Records of the items with a class; exclusions counted by reason; notes.

    Raises:
        ValueError: no dataset, an object that is not an xrv dataset, a label map of mixed forms, or an item
            that maps onto no class with ``on_unknown_label="error"``.
    """
    check_choice("on_unknown_label", on_unknown_label, ON_UNKNOWN_LABEL)
    dataset = _dataset(dataset)
    pathologies = [str(name) for name in dataset.pathologies]
    labels = _labels(dataset, pathologies)
    result = SourceResult(SOURCE)
    order, notes = _mapping_order(DEFAULT_LABEL_MAP if label_map is None else label_map, pathologies)
    result.notes += notes
    kind = type(dataset).__qualname__
    files = _item_files(dataset, len(labels))
    patients, note = _patient_ids(dataset, patient_id_column, len(labels))
    result.notes += [note] if note else []
    severity_columns = _severity_columns(severity or {}, pathologies)
    probe = masks and any(bool(getattr(dataset, a, False)) for a in ("semantic_masks", "pathology_masks"))
    shared = Shared(
        dataset,
        frozenset(label_key(name) for name in lung_masks),
        frozenset(j for j, name in enumerate(pathologies) if label_key(name) in _keys(infection_pathologies)),
    )
    present = labels > 0.5  # NaN (unknown) compares false
    conflicts, unreadable = 0, 0
    for i, row in enumerate(labels):
        path = files[i] or f"xrv://{kind}/{i}"
        raw = "|".join(pathologies[j] for j in np.flatnonzero(present[i])) or "(none present)"
        decided = [target for j, target in order if present[i, j]]
        conflicts += len(set(decided)) > 1
        label, reason = _label(decided, row, no_finding_class)
        if reason == "unknown label" and on_unknown_label == "error":
            raise ValueError(
                f"{SOURCE}: item {i} of {kind} ({path}) has pathologies {raw!r}, none of which is in the label "
                f"map {[pathologies[j] for j, _ in order]}. Map one of them (data.label_map: "
                "{<pathology>: <class>}, or null to drop such items), set data.options.no_finding_class for "
                "items with no pathology, or set on_unknown_label='exclude' to skip and count them."
            )
        if reason is not None:
            result.excluded.append(Excluded(path, reason, raw))
            continue
        pixels = XrvPixels(shared, i, files[i] is not None)
        lung, infection = (), None
        if probe:
            try:
                lung_names, infection_names = shared.mask_names(dataset[i])
            except Exception:  # reported when the item is read for real (scan, training), under data.on_error
                lung_names, infection_names = [], []
                unreadable += 1
            lung = tuple(f"{path}#{name}" for name in lung_names)
            infection = f"{path}#{'+'.join(infection_names)}" if infection_names else None
        result.records.append(
            Record(
                path=path,
                patient_id=patients[i] if patients else _file_patient(files[i], kind, i),
                source=SOURCE,
                label=label,
                raw_label=raw,
                lung_mask=lung,
                infection_mask=infection,
                severity={name: float(row[j]) for name, j in severity_columns.items() if np.isfinite(row[j])},
                meta={"xrv_dataset": kind, "xrv_index": i},
                pixels=pixels,
            )
        )
    if conflicts:
        result.notes.append(
            f"{conflicts} items have pathologies of several classes; the first in the label map decided"
        )
    if unreadable:
        result.notes.append(f"{unreadable} items could not be read while looking for their masks")
    if getattr(dataset, "data_aug", None) is not None:
        result.notes.append(
            f"{kind}.data_aug augments every read, the setup scan's too; cxrnet augments training items itself "
            "(data.augment), so data_aug is usually better left None"
        )
    return result


def _label(
    decided: list[str | None], row: np.ndarray, no_finding_class: str | None
) -> tuple[str | None, str | None]:
    """``(class, None)`` for a kept item, ``(None, reason)`` for an excluded one (reasons as other readers)."""
    if decided:
        return (decided[0], None) if decided[0] is not None else (None, "label mapped to None")
    if no_finding_class is not None and bool((row == 0).all()):
        return no_finding_class, None
    return None, "unknown label"


def _dataset(dataset: Any) -> Any:
    if dataset is None:
        raise ValueError(
            f"{SOURCE}: no dataset; give one: data.dataset._target_=torchxrayvision.datasets.<Name> with its "
            "arguments (data.dataset.imgpath=...), or read(dataset=<xrv dataset>) / "
            "CXRDataModule(name='xrv', dataset=<xrv dataset>)"
        )
    if isinstance(dataset, Mapping):
        if "_target_" not in dataset:
            raise ValueError(
                f"{SOURCE}: the dataset config {dict(dataset)} has no _target_; name the class, e.g. "
                "data.dataset._target_=torchxrayvision.datasets.COVID19_Dataset"
            )
        from hydra.utils import instantiate

        dataset = instantiate(dict(dataset), _convert_="all")
    missing = [a for a in ("pathologies", "labels", "__len__", "__getitem__") if not hasattr(dataset, a)]
    if missing:
        raise ValueError(
            f"{SOURCE}: {type(dataset).__name__} is not a torchxrayvision dataset (it has no {', '.join(missing)}); "
            "pass a torchxrayvision.datasets.Dataset"
        )
    return dataset


def _labels(dataset: Any, pathologies: list[str]) -> np.ndarray:
    labels = np.asarray(dataset.labels, dtype=np.float64)
    if labels.ndim == 1 and len(pathologies) == 1:
        labels = labels[:, None]
    if labels.shape != (len(dataset), len(pathologies)):
        raise ValueError(
            f"{SOURCE}: {type(dataset).__name__}.labels is {'x'.join(map(str, labels.shape))}; expected one row "
            f"per item and one column per pathology ({len(dataset)}x{len(pathologies)})"
        )
    return labels


def _keys(names: Sequence[str]) -> set[str]:
    return {label_key(str(name)) for name in names}


def _mapping_order(
    label_map: Mapping[str, Any], pathologies: list[str]
) -> tuple[list[tuple[int, str | None]], list[str]]:
    """``(pathology index, class or None)`` in deciding order, and notes on names the dataset lacks."""
    values = list(label_map.values())
    listed = [isinstance(v, Sequence) and not isinstance(v, str) for v in values]
    if any(listed) and not all(listed):
        raise ValueError(
            f"{SOURCE}: label_map {dict(label_map)} mixes two forms; use pathology → class "
            "({'COVID-19': covid19}) or class → list of pathologies ({covid19: ['COVID-19']}), not both"
        )
    if values and all(listed):
        pairs = [(str(p), str(target)) for target, names in label_map.items() for p in names]
    else:
        pairs = [(str(p), None if target is None else str(target)) for p, target in label_map.items()]
    index = {label_key(name): j for j, name in enumerate(pathologies)}
    order, absent = [], []
    for name, target in pairs:
        if label_key(name) in index:
            order.append((index[label_key(name)], target))
        else:
            absent.append(name)
    notes = []
    if absent:
        notes.append(
            f"label map names {absent}, which the dataset does not have (its pathologies: {pathologies}); "
            "ignored"
        )
    return order, notes


def _item_files(dataset: Any, n: int) -> list[str | None]:
    """Each item's file: ``imgpath`` joined with the first column of ``csv`` (see :data:`FILE_COLUMNS`)
    under which the first item's file exists; ``None`` where none exists."""
    imgpath, csv = getattr(dataset, "imgpath", None), getattr(dataset, "csv", None)
    if not isinstance(imgpath, (str, os.PathLike)) or csv is None or len(csv) != n or n == 0:
        return [None] * n
    suffix = str(getattr(dataset, "extension", "") or "")
    for column in (c for c in FILE_COLUMNS if c in getattr(csv, "columns", ())):
        names = [str(v) for v in csv[column].tolist()]
        for end in ("", suffix) if suffix else ("",):
            if os.path.isfile(os.path.join(imgpath, names[0] + end)):
                paths = [os.path.abspath(os.path.join(imgpath, name + end)) for name in names]
                return [p if os.path.isfile(p) else None for p in paths]
    return [None] * n


def _patient_ids(dataset: Any, column: str | None, n: int) -> tuple[list[str] | None, str | None]:
    csv = getattr(dataset, "csv", None)
    kind = type(dataset).__name__
    if column is None:
        return None, f"patient ids not used (patient_id_column=None): each {kind} image is its own patient"
    if csv is None or column not in getattr(csv, "columns", ()) or len(csv) != n:
        return None, (
            f"{kind} has no patient ids (no column {column!r} in its .csv aligned with its items): each image "
            "is its own patient, so images of one patient may fall into different splits"
        )
    values = csv[column].tolist()
    blank = [
        i for i, v in enumerate(values) if v is None or (isinstance(v, float) and np.isnan(v)) or v == ""
    ]
    ids = [str(v) for v in values]
    for i in blank:
        ids[i] = f"{kind}-{i}"
    note = f"{len(blank)} {kind} items have no {column!r}: each is its own patient" if blank else None
    return ids, note


def _file_patient(file: str | None, kind: str, index: int) -> str:
    return os.path.splitext(os.path.basename(file))[0] if file else f"{kind}-{index}"


def _severity_columns(severity: Mapping[str, str], pathologies: list[str]) -> dict[str, int]:
    index = {label_key(name): j for j, name in enumerate(pathologies)}
    unknown = [p for p in severity.values() if label_key(str(p)) not in index]
    if unknown:
        raise ValueError(
            f"{SOURCE}: severity names pathologies {unknown} the dataset lacks; it has {pathologies}"
        )
    return {str(name): index[label_key(str(p))] for name, p in severity.items()}
