"""Any dataset as a class-per-folder tree or as a CSV manifest.

Tree (e.g. Deep-COVID's ``data/{train,test}/{covid,non}/``)::

    <root>/<class>/**/<image>                       no official split
    <root>/<split>/<class>/**/<image>               split folders: train, val (valid, validation), test

Split folders are detected when every sub-folder of ``root`` is a split name. Images lying directly in
``root`` or a split folder (outside any class folder) are excluded and listed. The patient id is the file
stem: a tree cannot say which images share a patient.

Manifest (``manifest=`` option, ``root`` itself a ``.csv`` file, or ``<root>/manifest.csv``), one row per image::

    path,label,patient_id,split,lung_mask,infection_mask,geographic_extent,opacity,brixia,<anything else>

Only ``path`` is required; relative paths are relative to the manifest's folder. ``lung_mask`` may list
several files separated by ``;`` (their union is the lung mask). An empty label means unlabelled.
``severity_columns`` names the numeric severity columns (default: ``geographic_extent``, ``opacity`` and
``brixia`` when present); other columns go to ``meta``. A row naming an absent image or mask file is an
error naming the file and row, or with ``on_missing="exclude"``, is excluded and listed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cxrnet.data.images import find_images
from cxrnet.data.records import Record
from cxrnet.data.sources._common import (
    ON_MISSING,
    SPLIT_ALIASES,
    Excluded,
    LabelMapper,
    SourceResult,
    as_root,
    check_choice,
    read_table,
)

SOURCE = "folder"

DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "normal": "normal",
    "healthy": "normal",
    "bacterial": "bacterial",
    "viral": "viral",
    "pneumonia": "pneumonia",
    "covid": "covid19",
    "covid19": "covid19",
    "covid-19": "covid19",
    "non": "non_covid",  # Deep-COVID's non-COVID folder
    "non_covid": "non_covid",
    "non-covid": "non_covid",
    "tuberculosis": "tuberculosis",
    "tb": "tuberculosis",
}
"""Common folder / label spellings → canonical classes (case-insensitive). Pass ``label_map`` for others."""

DEFAULT_SEVERITY_COLUMNS = ("geographic_extent", "opacity", "brixia")
_KNOWN_COLUMNS = {"path", "label", "patient_id", "split", "lung_mask", "infection_mask"}


def read(
    root: str | os.PathLike[str],
    *,
    label_map: Mapping[str, str | None] | None = None,
    on_unknown_label: str = "error",
    on_missing: str = "error",
    manifest: str | os.PathLike[str] | None = None,
    severity_columns: Sequence[str] | None = None,
) -> SourceResult:
    """Read a class-per-folder tree or a CSV manifest.

    Args:
        root: the tree's top folder, the manifest's folder, or the manifest file itself.
        label_map: raw label (folder name or ``label`` value) → canonical class; defaults to
            :data:`DEFAULT_LABEL_MAP`.
        on_unknown_label: ``"error"`` or ``"exclude"`` for labels missing from the map.
        on_missing: ``"error"`` or ``"exclude"`` for manifest rows naming absent files.
        manifest: manifest file (absolute, or relative to ``root``); ``None`` uses ``<root>/manifest.csv`` when it
            exists, else reads ``root`` as a tree.
        severity_columns: manifest columns holding severity scores; ``None`` for the defaults present.

    Returns:
        Records; ``split`` from split folders or the manifest's ``split`` column.

    Raises:
        FileNotFoundError: ``root`` or the manifest is missing, no image found, or (``on_missing="error"``)
            a manifest row names an absent file.
        ValueError: unknown labels (with ``on_unknown_label="error"``), bad split names or non-numeric scores.
    """
    check_choice("on_missing", on_missing, ON_MISSING)
    root = as_root(root)
    mapper = LabelMapper(SOURCE, DEFAULT_LABEL_MAP if label_map is None else label_map, on_unknown_label)
    table = _manifest_path(root, manifest)
    if table is not None:
        result = _read_manifest(table, mapper, on_missing, severity_columns)
    else:
        result = _read_tree(root, mapper)
    result.excluded += mapper.excluded
    if not result.records:
        raise FileNotFoundError(f"{SOURCE}: no usable images in {table or root} (see the excluded items)")
    return result


def _manifest_path(root: Path, manifest: str | os.PathLike[str] | None) -> Path | None:
    if manifest is not None:
        path = Path(manifest).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise FileNotFoundError(f"{SOURCE}: manifest not found: {path}")
        return path
    if root.is_file():
        return root
    if not root.is_dir():
        raise FileNotFoundError(f"{SOURCE}: no such folder or manifest: {root}")
    return root / "manifest.csv" if (root / "manifest.csv").is_file() else None


# ------------------------------------------------------------------------------------------- tree


def _read_tree(root: Path, mapper: LabelMapper) -> SourceResult:
    result = SourceResult(SOURCE)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_folders = [p for p in folders if p.name.lower() in SPLIT_ALIASES]
    if split_folders and len(split_folders) != len(folders):
        others = ", ".join(p.name for p in folders if p not in split_folders)
        raise ValueError(
            f"{SOURCE}: {root} mixes split folders ({', '.join(p.name for p in split_folders)}) with other "
            f"folders ({others}); use either <root>/<split>/<class>/ or <root>/<class>/"
        )
    tops = [(p, SPLIT_ALIASES[p.name.lower()]) for p in split_folders] or [(root, None)]
    for top, split in tops:
        for stray in find_images(top, recursive=False):
            result.excluded.append(Excluded(str(stray), "outside class folders"))
        for class_dir in sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in find_images(class_dir):
                label = mapper(class_dir.name, path)
                if label is not None:
                    record = Record(
                        path=str(path),
                        patient_id=path.stem,
                        source=SOURCE,
                        label=label,
                        raw_label=class_dir.name,
                        split=split,
                    )
                    result.records.append(record)
    return result


# --------------------------------------------------------------------------------------- manifest


def _read_manifest(
    table: Path, mapper: LabelMapper, on_missing: str, severity_columns: Sequence[str] | None
) -> SourceResult:
    result = SourceResult(SOURCE)
    rows = read_table(table)
    columns = set(rows[0][1]) if rows else set()
    if rows and "path" not in columns:
        raise ValueError(f"{SOURCE}: {table} has no 'path' column (columns: {', '.join(sorted(columns))})")
    wanted = DEFAULT_SEVERITY_COLUMNS if severity_columns is None else severity_columns
    scores = [c.lower() for c in wanted if severity_columns is not None or c.lower() in columns]
    missing_columns = [c for c in scores if c not in columns]
    if missing_columns:
        raise ValueError(f"{SOURCE}: severity columns {missing_columns} not in {table}")
    for number, row in rows:
        where = f"{table.name} row {number}"
        files = _row_files(table.parent, row)
        absent = [(column, path) for column, path in files if not path.is_file()]
        if absent:
            column, path = absent[0]
            if on_missing == "error":
                raise FileNotFoundError(
                    f"{SOURCE}: {where} ({column}) names {path}, which does not exist "
                    "(fix the path, or set on_missing='exclude' to skip such rows)"
                )
            result.excluded.append(Excluded(str(path), "missing file", f"{where} ({column})"))
            continue
        image = files[0][1]
        raw = row.get("label", "")
        label = mapper(raw, f"{image} ({where})") if raw else None
        if raw and label is None:
            continue
        result.records.append(
            Record(
                path=str(image),
                patient_id=row.get("patient_id") or image.stem,
                source=SOURCE,
                label=label,
                raw_label=raw or None,
                lung_mask=tuple(str(p) for c, p in files if c == "lung_mask"),
                infection_mask=next((str(p) for c, p in files if c == "infection_mask"), None),
                severity=_scores(row, scores, where),
                split=_split(row.get("split", ""), where),
                meta={k: v for k, v in row.items() if k not in _KNOWN_COLUMNS and k not in scores},
            )
        )
    return result


def _row_files(base: Path, row: Mapping[str, str]) -> list[tuple[str, Path]]:
    """(column, absolute path) for the image and every mask a row names; the image comes first."""
    entries = [("path", row.get("path", ""))]
    entries += [("lung_mask", p) for p in row.get("lung_mask", "").split(";")]
    entries += [("infection_mask", row.get("infection_mask", ""))]
    # an empty image path is kept so that it is reported as missing
    return [
        (column, base / Path(value.strip()).expanduser())
        for column, value in entries
        if value.strip() or column == "path"
    ]


def _split(value: str, where: str) -> str | None:
    if not value:
        return None
    if value.lower() not in SPLIT_ALIASES:
        raise ValueError(f"{SOURCE}: {where}: split {value!r} is not one of {', '.join(SPLIT_ALIASES)}")
    return SPLIT_ALIASES[value.lower()]


def _scores(row: Mapping[str, str], columns: Sequence[str], where: str) -> dict[str, float]:
    scores = {}
    for column in columns:
        value = row.get(column, "")
        if value:
            try:
                scores[column] = float(value)
            except ValueError:
                raise ValueError(f"{SOURCE}: {where}: {column!r} holds {value!r}, not a number") from None
    return scores
