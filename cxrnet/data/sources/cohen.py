"""ieee8023 covid-chestxray-dataset (Cohen et al.): a metadata table, images, and optional annotations.

Layout::

    <root>/metadata.csv                                   one row per image
    <root>/images/<filename>                              (the row's ``folder`` column when present)
    <root>/annotations/covid-severity-scores.csv          optional: '#' comment lines, then
                                                          filename, geographic_mean (0-8), opacity_mean (0-6)
    <root>/annotations/v7labs-lung-masks/<filename>       optional: hand-drawn lung masks, same name as the image
    <root>/annotations/lungVAE-masks/<stem>_mask.png      optional: model-generated lung masks
    <brixia_file>                                         optional: Filename, S-A..S-F, S-Global, J-A..J-F, J-Global

``finding`` is flat in older releases (``COVID-19``, ``COVID-19, ARDS``, ``Streptococcus``, ``No Finding``,
``Mycoplasma Bacterial Pneumonia``) and hierarchical in newer ones (``Pneumonia/Viral/COVID-19``,
``Pneumonia/Bacterial/Streptococcus``). Both are mapped through one table: the most specific name decides
(the whole finding, then the leaf, then its parents; for a comma list, its items in order), each name looked
up first as itself in the label map and then by its pathogen family (:mod:`cxrnet.data.sources.taxonomy`:
a known bacterial, viral or fungal pathogen, or a name containing one as a word, maps to its family). So
``Pneumonia/Viral/Influenza/H1N1`` is viral, a new ``Pneumonia/Bacterial/<x>`` is bacterial, a new flat
``Haemophilus influenzae`` is bacterial, and fungal findings are dropped on purpose. A finding that names
no pathogen and is not in the map is an unknown label: excluded and counted by the data configs' default
``on_unknown_label: exclude`` (``error`` stops at it instead).

By default only frontal X-rays are kept (views PA, AP, AP Supine, AP semi erect, AP erect); everything
else is excluded and counted: lateral or blank views (``"view not kept"``), CT (``"modality not kept"``),
absent files (``"missing file"``), and findings that are dropped on purpose or unknown.

Severity: ``"geographic_extent"`` and ``"opacity"`` (means of three raters) from the severity file; ``"brixia"``
(mean of the two raters' global scores, 0-18) from the Brixia file, with per-zone means (A-F, 0-3) in
``meta["brixia_zones"]`` and each rater's global score in ``meta["brixia_raters"]``.
Lung masks: the hand-drawn v7labs mask is preferred, else the lungVAE one; ``meta["lung_mask_origin"]`` says
which (``"v7labs"`` = manual, ``"lungVAE"`` = model-generated, ``""`` = none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cxrnet.data.records import Record
from cxrnet.data.sources import taxonomy
from cxrnet.data.sources._common import (
    ON_MISSING,
    Excluded,
    LabelMapper,
    SourceResult,
    as_root,
    check_choice,
    label_key,
    read_table,
)

SOURCE = "cohen"

_VIRAL = ("Viral", "SARS", "MERS-CoV", "MERS", "Influenza", "H1N1", "Herpes", "Varicella")
_BACTERIAL = (
    "Bacterial",
    "Streptococcus",
    "Klebsiella",
    "Legionella",
    "Mycoplasma",
    "Chlamydophila",
    "E.Coli",
    "Staphylococcus",
    "MRSA",
    "Nocardia",
)
# Fungal and other pneumonias, TB, ARDS alone and unlabelled rows fit none of the classes: dropped on purpose.
# "Viral", "Bacterial", "Fungal", "Tuberculosis" and "COVID-19" are also the taxonomy's family names.
_DROPPED = (
    "Fungal",
    "Pneumocystis",
    "Aspergillosis",
    "Lipoid",
    "Aspiration",
    "Tuberculosis",
    "Pneumonia",
    "ARDS",
    "Unknown",
    "todo",
)

DEFAULT_LABEL_MAP: dict[str, str | None] = {
    **{name: "viral" for name in _VIRAL},
    **{name: "bacterial" for name in _BACTERIAL},
    **{name: None for name in _DROPPED},
    "COVID-19": "covid19",
    "No Finding": "normal",
}
"""Finding names (flat or path components) → canonical classes; ``None`` drops them on purpose."""

FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP semi erect", "AP erect")
LUNG_MASK_DIRS = {"v7labs": "annotations/v7labs-lung-masks", "lungVAE": "annotations/lungVAE-masks"}
BRIXIA_ZONES = ("A", "B", "C", "D", "E", "F")


def read(
    root: str | os.PathLike[str],
    *,
    label_map: Mapping[str, str | None] | None = None,
    on_unknown_label: str = "error",
    on_missing: str = "exclude",
    views: Sequence[str] = FRONTAL_VIEWS,
    modalities: Sequence[str] = ("X-ray",),
    lung_masks: Sequence[str] = ("v7labs", "lungVAE"),
    severity_file: str | None = "annotations/covid-severity-scores.csv",
    brixia_file: str | os.PathLike[str] | None = None,
    metadata: str = "metadata.csv",
) -> SourceResult:
    """Read the covid-chestxray-dataset.

    Args:
        root: repository folder holding ``metadata.csv`` and ``images/``.
        label_map: finding name → canonical class (``None`` drops it); defaults to :data:`DEFAULT_LABEL_MAP`.
        on_unknown_label: ``"error"`` or ``"exclude"`` for findings with no mapping.
        on_missing: ``"error"`` or ``"exclude"`` for rows naming absent image files.
        views: views to keep (case-insensitive).
        modalities: modalities to keep (case-insensitive).
        lung_masks: lung-mask sources in order of preference (``"v7labs"``, ``"lungVAE"``); empty for none.
        severity_file: severity score file relative to ``root`` (skipped when absent), or ``None``.
        brixia_file: Brixia score file (absolute, or relative to ``root``), or ``None``.
        metadata: metadata table relative to ``root``.

    Returns:
        Records of the kept rows; exclusions counted by reason.

    Raises:
        FileNotFoundError: no metadata table, a named Brixia file is absent, or (``on_missing="error"``)
            a row names an absent image.
        ValueError: an unknown finding with ``on_unknown_label="error"``, or a non-numeric score.
    """
    check_choice("on_missing", on_missing, ON_MISSING)
    for name in lung_masks:
        check_choice("lung_masks item", name, tuple(LUNG_MASK_DIRS))
    root = as_root(root)
    table = root / metadata
    if not table.is_file():
        raise FileNotFoundError(
            f"{SOURCE}: {table} not found; expected <root>/metadata.csv and <root>/images/"
        )
    mapper = LabelMapper(SOURCE, DEFAULT_LABEL_MAP if label_map is None else label_map, on_unknown_label)
    keep_views = {label_key(v) for v in views}
    keep_modalities = {label_key(m) for m in modalities}
    scores = _severity_scores(root / severity_file) if severity_file else {}
    brixia = _brixia_scores(_resolve(root, brixia_file)) if brixia_file is not None else {}
    result = SourceResult(SOURCE)
    for number, row in read_table(table):
        filename = row.get("filename", "")
        path = root / (row.get("folder") or "images") / filename
        view = row.get("view", "")
        # the earliest releases had no modality column and wrote "CT" in the view column
        modality = row.get("modality") or ("CT" if label_key(view) == "ct" else "X-ray")
        if label_key(modality) not in keep_modalities:
            result.excluded.append(Excluded(str(path), "modality not kept", modality))
            continue
        if label_key(view) not in keep_views:
            result.excluded.append(Excluded(str(path), "view not kept", view or "(blank)"))
            continue
        if not filename or not path.is_file():
            if on_missing == "error":
                raise FileNotFoundError(
                    f"{SOURCE}: {table.name} line {number} names {path}, which does not exist "
                    "(set on_missing='exclude' to skip such rows)"
                )
            result.excluded.append(Excluded(str(path), "missing file", f"{table.name} line {number}"))
            continue
        finding = row.get("finding", "")
        label = mapper(finding, path, candidates=_finding_candidates(finding))
        if label is None:
            continue
        lung, origin = _lung_mask(root, filename, lung_masks)
        severity = dict(scores.get(filename, {}))
        meta = {
            "view": view,
            "modality": modality,
            "sex": row.get("sex", ""),
            "age": row.get("age", ""),
            "offset": row.get("offset", ""),
            "finding": finding,
            "lung_mask_origin": origin,
        }
        if filename in brixia:
            severity["brixia"], meta["brixia_zones"], meta["brixia_raters"] = brixia[filename]
        result.records.append(
            Record(
                path=str(path),
                patient_id=row.get("patientid", "") or Path(filename).stem,
                source=SOURCE,
                label=label,
                raw_label=finding,
                lung_mask=lung,
                severity=severity,
                meta=meta,
            )
        )
    result.excluded += mapper.excluded
    result.notes += mapper.notes()
    if not result.records:
        raise FileNotFoundError(f"{SOURCE}: no usable images under {root} (see the excluded items)")
    return result


def _finding_candidates(finding: str) -> list[str]:
    """Names to look up, most specific first: the whole string, then path leaf→root, then list items; each
    followed by its pathogen family (:func:`cxrnet.data.sources.taxonomy.family`) when it names one."""
    names = [finding]
    for item in finding.split(","):
        parts = [p.strip() for p in item.split("/") if p.strip()]
        for depth in range(len(parts), 0, -1):
            names += ["/".join(parts[:depth]), parts[depth - 1]]
    candidates = []
    for name in (n.strip() for n in names if n.strip()):
        candidates += [name, taxonomy.family(name) or ""]
    return list(dict.fromkeys(c for c in candidates if c)) or [finding]


def _lung_mask(root: Path, filename: str, preference: Sequence[str]) -> tuple[tuple[str, ...], str]:
    for name in preference:
        folder = root / LUNG_MASK_DIRS[name]
        mask = folder / filename if name == "v7labs" else folder / f"{Path(filename).stem}_mask.png"
        if mask.is_file():
            return (str(mask),), name
    return (), ""


def _resolve(root: Path, path: str | os.PathLike[str]) -> Path:
    path = Path(path).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise FileNotFoundError(f"{SOURCE}: Brixia score file not found: {path}")
    return path


def _number(value: str, path: Path, number: int, column: str) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{path} line {number}: column {column!r} holds {value!r}, not a number") from None


def _severity_scores(path: Path) -> dict[str, dict[str, float]]:
    """filename → {"geographic_extent", "opacity"} from the severity file (empty when the file is absent)."""
    if not path.is_file():
        return {}
    scores = {}
    for number, row in read_table(path):
        values = {
            "geographic_extent": _number(row.get("geographic_mean", ""), path, number, "geographic_mean"),
            "opacity": _number(row.get("opacity_mean", ""), path, number, "opacity_mean"),
        }
        scores[row.get("filename", "")] = {k: v for k, v in values.items() if v is not None}
    return scores


def _brixia_scores(path: Path) -> dict[str, tuple[float, dict[str, float], dict[str, float]]]:
    """filename → (mean global score, per-zone means, per-rater global scores) from a Brixia file."""
    scores = {}
    for number, row in read_table(path):
        raters: dict[str, float] = {}
        zones: dict[str, list[float]] = {zone: [] for zone in BRIXIA_ZONES}
        for rater in ("s", "j"):
            rater_zones = {
                z: _number(row.get(f"{rater}-{z.lower()}", ""), path, number, f"{rater}-{z}") for z in zones
            }
            for zone, value in rater_zones.items():
                if value is not None:
                    zones[zone].append(value)
            total = _number(row.get(f"{rater}-global", ""), path, number, f"{rater.upper()}-Global")
            if total is None and all(v is not None for v in rater_zones.values()):
                total = sum(rater_zones.values())  # type: ignore[arg-type]
            if total is not None:
                raters[rater.upper()] = total
        if raters:
            zone_means = {zone: sum(v) / len(v) for zone, v in zones.items() if v}
            scores[row.get("filename", "")] = (sum(raters.values()) / len(raters), zone_means, raters)
    return scores
