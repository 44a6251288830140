"""COVIDx (COVID-Net): images in flat split folders, labels in one text file per split.

Layout::

    <root>/train/<filename>          <root>/test/<filename>          (and <root>/val/ when present)
    <root>/train.txt                 <root>/test.txt                 (real names vary: train_COVIDx9A.txt)

Each label-file line is ``patient_id filename label [source]`` separated by spaces (older releases have
only the first three fields). Labels are ``normal``/``pneumonia``/``COVID-19`` (3-class releases) or
``negative``/``positive`` (2-class releases). The official split is the label file a line comes from.
A patient id can appear on many lines. The upstream source is kept as ``meta["origin"]``, with the real
files' misspelling ``rnsa`` normalised to ``rsna``.

When ``label_files`` is not given, ``<split>.txt`` is used, or else the single ``<split>*.txt`` file
(e.g. ``train_COVIDx9A.txt``) for each of train, val and test.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cxrnet.data.images import IMAGE_SUFFIXES
from cxrnet.data.records import Record
from cxrnet.data.sources._common import (
    ON_MISSING,
    Excluded,
    LabelMapper,
    SourceResult,
    as_root,
    check_choice,
)

SOURCE = "covidx"

DEFAULT_LABEL_MAP: dict[str, str | None] = {
    # 3-class releases (COVIDx v1-v8)
    "normal": "normal",
    "pneumonia": "pneumonia",  # non-COVID pneumonia, bacterial and viral mixed
    "COVID-19": "covid19",
    # 2-class releases (COVIDx9A and later): COVID-19 positive vs negative (negative includes pneumonia)
    "negative": "negative",
    "positive": "positive",
}
"""Raw COVIDx labels → canonical classes. A config may pass its own map, e.g. ``positive: covid19``."""

ORIGIN_ALIASES = {"rnsa": "rsna"}

LAYOUT = """  <root>/train/*.png, <root>/test/*.png (flat)
  <root>/train.txt, <root>/test.txt (or train_COVIDx9A.txt ...): lines 'patient_id filename label [source]'"""


def read(
    root: str | os.PathLike[str],
    *,
    label_map: Mapping[str, str | None] | None = None,
    on_unknown_label: str = "error",
    on_missing: str = "exclude",
    label_files: Mapping[str, str] | None = None,
    image_dirs: Mapping[str, str] | None = None,
) -> SourceResult:
    """Read a COVIDx folder.

    Args:
        root: folder holding the split folders and label files.
        label_map: raw label → canonical class (``None`` drops it); defaults to :data:`DEFAULT_LABEL_MAP`.
        on_unknown_label: ``"error"`` or ``"exclude"`` for labels missing from the map.
        on_missing: ``"error"`` or ``"exclude"`` for label-file lines naming absent images.
        label_files: split → label file (relative to ``root``), e.g. ``{"train": "train_COVIDx9A.txt"}``.
        image_dirs: split → image folder (relative to ``root``); defaults to the split name.

    Returns:
        Records with ``split`` set from the label file and ``meta["origin"]`` (upstream source, or "").

    Raises:
        FileNotFoundError: no label file found, or (``on_missing="error"``) an image is absent.
        ValueError: a malformed line, or an unknown label with ``on_unknown_label="error"``.
    """
    check_choice("on_missing", on_missing, ON_MISSING)
    root = as_root(root)
    mapper = LabelMapper(SOURCE, DEFAULT_LABEL_MAP if label_map is None else label_map, on_unknown_label)
    files = _label_files(root, label_files)
    result = SourceResult(SOURCE)
    for split, label_file in files.items():
        image_dir = root / (image_dirs or {}).get(split, split)
        for number, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            patient_id, filename, raw, origin = _parse_line(line, label_file, number)
            path = image_dir / filename
            if not path.is_file():
                if on_missing == "error":
                    raise FileNotFoundError(
                        f"{SOURCE}: {label_file.name} line {number} names {path}, which does not exist "
                        "(check image_dirs, or set on_missing='exclude')"
                    )
                result.excluded.append(
                    Excluded(str(path), "missing file", f"{label_file.name} line {number}")
                )
                continue
            label = mapper(raw, path)
            if label is None:
                continue
            result.records.append(
                Record(
                    path=str(path),
                    patient_id=patient_id,
                    source=SOURCE,
                    label=label,
                    raw_label=raw,
                    split=split,
                    meta={"origin": origin},
                )
            )
    result.excluded += mapper.excluded
    if not result.records:
        raise FileNotFoundError(f"{SOURCE}: no usable images under {root}\nexpected layout:\n{LAYOUT}")
    return result


def _label_files(root: Path, label_files: Mapping[str, str] | None) -> dict[str, Path]:
    if label_files is not None:
        files = {split: root / name for split, name in label_files.items()}
        for split, path in files.items():
            if not path.is_file():
                raise FileNotFoundError(f"{SOURCE}: label file for split {split!r} not found: {path}")
        return files
    files = {}
    for split in ("train", "val", "test"):
        exact = root / f"{split}.txt"
        matches = [exact] if exact.is_file() else sorted(root.glob(f"{split}*.txt"))
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches)
            raise ValueError(
                f"{SOURCE}: several label files for split {split!r} in {root}: {names}; "
                f"choose one with label_files={{'{split}': '<name>'}}"
            )
        if matches:
            files[split] = matches[0]
    if not files:
        raise FileNotFoundError(f"{SOURCE}: no label files in {root}\nexpected layout:\n{LAYOUT}")
    return files


def _parse_line(line: str, label_file: Path, number: int) -> tuple[str, str, str, str]:
    """Split a label-file line into (patient_id, filename, raw label, origin); file names may hold spaces."""
    tokens = line.split()
    # the file name ends at the last token with an image suffix, so names with spaces survive
    ends = [i for i, token in enumerate(tokens[1:], start=1) if Path(token).suffix.lower() in IMAGE_SUFFIXES]
    end = ends[-1] if ends else 1
    if len(tokens) < end + 2:
        raise ValueError(
            f"{SOURCE}: {label_file} line {number} is malformed: {line.strip()!r}; "
            "expected 'patient_id filename label [source]'"
        )
    origin = tokens[end + 2].lower() if len(tokens) > end + 2 else ""
    return tokens[0], " ".join(tokens[1 : end + 1]), tokens[end + 1], ORIGIN_ALIASES.get(origin, origin)
