"""COVID-QU-Ex: lung masks for ~34k images and infection masks for a ~6k subset.

Layout (folder names contain spaces; either part may be missing)::

    <root>/Lung Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,lung masks}/<name>.png
    <root>/Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/
        {images,lung masks,infection masks}/<name>.png

Masks share the image's file name. The part folders are also found one or two levels below ``root``
(downloads often add a wrapper folder, or repeat the part folder inside itself). The official split comes
from the Train/Val/Test folder. The dataset has no patient ids: ``patient_id`` is the file stem, so
patient-level integrity rests on the official split (and on near-duplicate detection across datasets).

With ``part="both"``, an image present in both parts under the same class and file name is kept once,
from the Infection part (which carries both masks and keeps its own split); the count is reported in notes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cxrnet.data.images import find_images
from cxrnet.data.records import Record
from cxrnet.data.sources._common import LabelMapper, SourceResult, as_root, check_choice

SOURCE = "covid_qu_ex"

DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "COVID-19": "covid19",
    # Non-COVID is mostly bacterial and viral non-COVID pneumonia, without saying which: keep it apart
    # rather than guess bacterial or viral.
    "Non-COVID": "non_covid",
    "Normal": "normal",
}
"""Class folder names → canonical classes."""

PART_DIRS = {"infection": "Infection Segmentation Data", "lung": "Lung Segmentation Data"}
SPLIT_DIRS = {"Train": "train", "Val": "val", "Test": "test"}
PARTS = ("infection", "lung", "both")
LAYOUT = (
    "  <root>/{Lung Segmentation Data,Infection Segmentation Data}/{Train,Val,Test}/"
    "{COVID-19,Non-COVID,Normal}/{images,lung masks,infection masks}/*.png"
)


def read(
    root: str | os.PathLike[str],
    *,
    label_map: Mapping[str, str | None] | None = None,
    on_unknown_label: str = "error",
    part: str = "both",
) -> SourceResult:
    """Read a COVID-QU-Ex folder.

    Args:
        root: folder holding the part folders (or a folder one or two levels above them).
        label_map: class folder name → canonical class; defaults to :data:`DEFAULT_LABEL_MAP`.
        on_unknown_label: ``"error"`` or ``"exclude"`` for class folders missing from the map.
        part: ``"infection"``, ``"lung"`` or ``"both"`` (whichever parts exist).

    Returns:
        Records with ``lung_mask``/``infection_mask`` where the mask files exist, ``split`` from the folder
        and ``meta["part"]`` (``"infection"`` or ``"lung"``).

    Raises:
        FileNotFoundError: the requested part folder(s) cannot be found.
    """
    check_choice("part", part, PARTS)
    root = as_root(root)
    mapper = LabelMapper(SOURCE, DEFAULT_LABEL_MAP if label_map is None else label_map, on_unknown_label)
    wanted = ("infection", "lung") if part == "both" else (part,)
    part_dirs = {name: _find_part(root, PART_DIRS[name]) for name in wanted}
    if part != "both" and part_dirs[part] is None:
        raise FileNotFoundError(f"{SOURCE}: {PART_DIRS[part]!r} not found under {root}\nexpected:\n{LAYOUT}")
    result = SourceResult(SOURCE)
    seen: dict[tuple[str, str], Record] = {}
    merged = 0
    for name in wanted:
        part_dir = part_dirs[name]
        if part_dir is None:
            continue
        for split_name, split in SPLIT_DIRS.items():
            split_dir = part_dir / split_name
            if not split_dir.is_dir():
                continue
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                for record in _read_class(class_dir, split, name, mapper):
                    key = (class_dir.name, Path(record.path).name)
                    if key in seen:
                        merged += 1
                        continue
                    seen[key] = record
                    result.records.append(record)
    result.excluded += mapper.excluded
    if merged:
        result.notes.append(
            f"{merged} Lung-part images also appear in the Infection part (same class and file name); "
            "kept once, from the Infection part"
        )
    if not result.records:
        raise FileNotFoundError(f"{SOURCE}: no usable images under {root}\nexpected layout:\n{LAYOUT}")
    return result


def _find_part(root: Path, name: str) -> Path | None:
    """Locate a part folder at ``root``, one or two levels below it, or repeated inside itself."""
    candidates = [root / name, *sorted(root.glob(f"*/{name}")), *sorted(root.glob(f"*/*/{name}"))]
    for candidate in candidates:
        if candidate.is_dir():
            if not any((candidate / split).is_dir() for split in SPLIT_DIRS) and (candidate / name).is_dir():
                candidate = candidate / name
            return candidate
    return None


def _read_class(class_dir: Path, split: str, part: str, mapper: LabelMapper) -> list[Record]:
    image_dir = class_dir / "images"
    if not image_dir.is_dir():
        return []
    records = []
    for path in find_images(image_dir, recursive=False):
        label = mapper(class_dir.name, path)
        if label is None:
            continue
        lung = class_dir / "lung masks" / path.name
        infection = class_dir / "infection masks" / path.name
        records.append(
            Record(
                path=str(path),
                patient_id=path.stem,
                source=SOURCE,
                label=label,
                raw_label=class_dir.name,
                lung_mask=(str(lung),) if lung.is_file() else (),
                infection_mask=str(infection) if infection.is_file() else None,
                split=split,
                meta={"part": part},
            )
        )
    return records
