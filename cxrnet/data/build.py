"""From dataset folders to train/val/test records, without Lightning: shared by the datamodule and the check.

:func:`build_splits` runs four steps and reports each in a :class:`~cxrnet.data.findings.DataReport`:

1. **read**: each source's reader (:func:`cxrnet.data.sources.read_source`) lists its records; a source may
   keep only some of what it has (``use_labels``, ``use_masks``, ``use_severity``); a label that is not one of
   the configured classes is an error naming it, or excluded with ``on_unknown_label="exclude"``.
2. **scan** (when a cache, ``on_error="skip"``, near-duplicate detection or a check asks for it): every item's
   image and masks are read once (through the cache, which this pass fills) for its perceptual hash and its
   problems; an unreadable item is an error naming the file, or with ``on_error="skip"`` is dropped and listed.
3. **duplicates**: images within ``duplicate_max_distance`` bits of each other merge their patients.
4. **split**: :func:`cxrnet.data.splits.patient_split`, official splits honoured. *Tiny-dataset rule*: when
   the official splits leave a requested split empty (e.g. a sample holding only an official ``test``), all
   items are split at patient level by the fractions instead; when a split is still empty (too few patients
   per class to stratify), the patients are split without stratification. Each fallback logs a warning and
   adds a note to the report.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cxrnet.data.cache import DataCache
from cxrnet.data.findings import KIND_DUPLICATE, KIND_NOT_IN_CLASSES, DataReport, Issue, issue_from_excluded
from cxrnet.data.images import ImageReadError
from cxrnet.data.items import ItemInfo, ItemReadError, read_item
from cxrnet.data.records import Record
from cxrnet.data.sources import get_source
from cxrnet.data.sources._common import check_choice
from cxrnet.data.splits import DEFAULT_FRACTIONS, DUPLICATE_MAX_DISTANCE, find_near_duplicates, patient_split

__all__ = [
    "ON_ERROR",
    "DataBuild",
    "SourceSpec",
    "build_splits",
    "check_options",
    "needs_root",
    "source_specs",
]

log = logging.getLogger(__name__)

ON_ERROR = ("error", "skip")
ON_UNKNOWN_LABEL = ("error", "exclude")
Progress = Callable[[int, int], None]


@dataclass
class SourceSpec:
    """One dataset folder of a run, and what it contributes.

    Attributes:
        name: reader name (``covidx``, ``qata``, ``covid_qu_ex``, ``cohen``, ``montgomery``, ``shenzhen``,
            ``folder``, ``xrv``).
        root: the dataset folder in its native layout (``""`` for a reader that needs none, ``xrv``).
        options: reader options (see the reader's ``read``).
        label_map: raw label → class (``None`` drops it); ``None`` keeps the reader's default map.
        on_unknown_label: ``"error"`` or ``"exclude"``; ``None`` uses the run's setting.
        use_labels: keep class labels (``False``: e.g. Montgomery's tuberculosis labels, unknown to a COVID
            model, are dropped and only its lung masks are used).
        use_masks: keep lung and infection masks.
        use_severity: keep severity scores.
    """

    name: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)
    label_map: dict[str, str | None] | None = None
    on_unknown_label: str | None = None
    use_labels: bool = True
    use_masks: bool = True
    use_severity: bool = True

    @classmethod
    def from_mapping(cls, entry: Mapping[str, Any], base: str | None = None) -> SourceSpec:
        """A spec from a config entry; a relative ``root`` is taken under ``base`` when given.

        Raises:
            ValueError: unknown keys (the message lists the valid ones) or a missing ``name``/``root``.
        """
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(entry) - set(valid))
        if unknown:
            raise ValueError(f"data.sources entry {dict(entry)} has unknown keys {unknown}; valid: {valid}")
        if not entry.get("name"):
            raise ValueError(f"data.sources entry {dict(entry)} needs a 'name' and a 'root'")
        reader = get_source(str(entry["name"]))  # an unknown name fails here, listing the valid ones
        if not entry.get("root") and needs_root(reader):
            raise ValueError(f"data.sources entry {dict(entry)} needs a 'name' and a 'root'")
        root = Path(str(entry.get("root") or "")).expanduser()
        if base is not None and entry.get("root") and not root.is_absolute():
            root = Path(base).expanduser() / root
        values = {
            **dict(entry),
            "root": str(root) if entry.get("root") else "",
            "options": dict(entry.get("options") or {}),
        }
        if values.get("label_map") is not None:
            values["label_map"] = dict(values["label_map"])
        check_options(str(entry["name"]), values["options"], get_source(str(entry["name"])))
        return cls(**values)


# Reader arguments the data config sets itself, not through ``options``.
_SET_BY_DATA = ("root", "label_map", "on_unknown_label")


def check_options(
    name: str,
    options: Mapping[str, Any],
    reader: Callable[..., Any],
    set_by_data: Sequence[str] = _SET_BY_DATA,
) -> None:
    """Raise ``ValueError`` listing the valid options when ``options`` has a key the reader does not take.

    Runs before any file is read, so that a misspelt ``data.options.<key>`` fails at once.
    """
    parameters = inspect.signature(reader).parameters
    valid = sorted(
        p
        for p in parameters
        if p not in set_by_data and parameters[p].kind is not inspect.Parameter.VAR_KEYWORD
    )
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"data.options for {name!r} has unknown keys {unknown}; valid: {', '.join(valid) or 'none'}"
        )


def needs_root(reader: Callable[..., Any]) -> bool:
    """Whether a reader needs a dataset folder: its ``root`` has no default (readers of in-memory datasets,
    :mod:`cxrnet.data.sources.xrv`, have one)."""
    root = inspect.signature(reader).parameters.get("root")
    return root is None or root.default is inspect.Parameter.empty


def source_specs(
    name: str,
    root: str | None,
    options: Mapping[str, Any] | None = None,
    label_map: Mapping[str, str | None] | None = None,
    sources: Sequence[Mapping[str, Any]] | None = None,
) -> list[SourceSpec]:
    """The sources of a data config: its ``sources`` list, or the single dataset ``name`` at ``root``.

    Raises:
        ValueError: an unknown dataset name, a missing root, or a malformed ``sources`` entry.
    """
    if sources:
        return [SourceSpec.from_mapping(entry, base=root) for entry in sources]
    check_options(name, dict(options or {}), get_source(name))
    if not root and needs_root(get_source(name)):
        raise ValueError(f"dataset {name!r} needs its folder: pass data.root=<dir> on the command line")
    mapped = None if label_map is None else dict(label_map)
    return [SourceSpec(name, str(root) if root else "", dict(options or {}), mapped)]


@dataclass
class DataBuild:
    """Records per split, the report, and the image hash of every scanned record (by image path)."""

    splits: dict[str, list[Record]]
    report: DataReport
    hashes: dict[str, int] = field(default_factory=dict)


def _read_one(
    spec: SourceSpec, classes: Sequence[str], on_unknown: str, on_error: str, collect: bool
) -> tuple[list[Record], list[Issue], list[str]]:
    """One source's records after its ``use_*`` choices and the class check, with its issues and notes."""
    reader = get_source(spec.name)
    options = dict(spec.options)
    if "on_missing" in inspect.signature(reader).parameters and (collect or on_error == "skip"):
        options["on_missing"] = "exclude"  # a file named in a CSV but absent is skipped and listed
    result = reader(
        spec.root,
        label_map=spec.label_map,
        on_unknown_label="exclude" if collect else on_unknown,
        **options,
    )
    issues = [issue_from_excluded(e) for e in result.excluded]
    records = []
    for record in result.records:
        if not spec.use_labels:
            record = replace(record, label=None)
        if not spec.use_masks:
            record = replace(
                record, lung_mask=(), infection_mask=None, meta={**record.meta, "infection_mask_empty": False}
            )
        if not spec.use_severity:
            record = replace(record, severity={})
        if record.label is not None and record.label not in classes:
            if on_unknown == "error" and not collect:
                raise ValueError(
                    f"{spec.name}: label {record.label!r} of {record.path} is not one of data.classes "
                    f"{list(classes)}; add it to data.classes, map it with data.label_map, set "
                    "data.on_unknown_label=exclude to skip such items, or use_labels: false for this source"
                )
            issues.append(
                Issue(KIND_NOT_IN_CLASSES, record.path, f"{record.label!r} ({spec.name})", True, True)
            )
            continue
        records.append(record)
    notes = [f"{spec.name}: {note}" for note in result.notes]
    return records, issues, notes


def _scan(
    records: Sequence[Record],
    cache: DataCache | None,
    on_error: str,
    workers: int,
    progress: Progress | None,
) -> tuple[list[Record], dict[str, int], list[Issue]]:
    """Read every record once: hashes, non-fatal issues, and (``skip``) the unreadable ones dropped.

    With a cache, the records are read (and the cache filled) in ``workers`` processes
    (:meth:`DataCache.fill`); without one, in ``workers`` threads.
    """

    def inspect_one(record: Record) -> ItemInfo | ItemReadError:
        try:
            return read_item(record).info
        except ItemReadError as exc:
            return exc

    kept: list[Record] = []
    hashes: dict[str, int] = {}
    issues: list[Issue] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        if cache is not None:
            results = cache.fill(records, workers)
        else:
            results = pool.map(inspect_one, records) if workers > 1 else map(inspect_one, records)
        for done, (record, result) in enumerate(zip(records, results), start=1):
            if progress is not None:
                progress(done, len(records))
            if isinstance(result, ItemReadError):
                reason = (
                    result.reason if result.path == record.path else f"{result.reason} (item {record.path})"
                )
                if on_error == "error":
                    pool.shutdown(wait=False, cancel_futures=True)
                    if cache is not None:
                        results.close()  # the fill's processes drop the records not yet started
                    raise ImageReadError(
                        result.path,
                        f"{reason}. Fix or remove the file, or set data.on_error=skip to skip such items "
                        "and list them in the report",
                    )
                issues.append(Issue(result.kind, result.path, reason, problem=True, dropped=True))
                continue
            kept.append(record)
            hashes[record.path] = result.hash
            issues += result.issues
    return kept, hashes, issues


def _duplicate_groups(
    records: Sequence[Record], hashes: Mapping[str, int], max_distance: int
) -> tuple[list[set[int]], list[list[str]], list[Issue]]:
    groups = find_near_duplicates(records, [hashes[r.path] for r in records], max_distance)
    merged, issues = [], []
    for group in groups:
        members = [records[i] for i in sorted(group)]
        if len({(r.source, r.patient_id) for r in members}) < 2:
            continue  # several similar images of one patient: one split unit already
        paths = [r.path for r in members]
        merged.append(paths)
        others = ", ".join(f"{r.path} (patient {r.patient_id})" for r in members[1:])
        detail = f"same image as {others}; their patients were merged into one split unit"
        issues.append(Issue(KIND_DUPLICATE, paths[0], detail, problem=False))
    return groups, merged, issues


def _cross_validation_split(
    records: list[Record],
    fractions: Mapping[str, float],
    seed: int,
    groups: Sequence[set[int]],
    folds: int,
    fold: int,
) -> tuple[dict[str, list[Record]], list[str]]:
    """Fold ``fold`` of ``folds`` stratified patient-level folds is the test split; the rest is train + val."""
    free = [replace(r, split=None) for r in records]
    original = {id(f): r for f, r in zip(free, records)}
    dealt = patient_split(
        free, {f"fold{k}": 1 / folds for k in range(folds)}, seed=seed, duplicate_groups=groups
    )
    test = dealt[f"fold{fold}"]
    test_ids = {id(r) for r in test}
    rest = [r for r in free if id(r) not in test_ids]
    share = {name: fractions.get(name, 0.0) for name in ("train", "val")}
    total = sum(share.values()) or 1.0
    index = {id(r): i for i, r in enumerate(rest)}
    rest_groups = [{index[id(free[i])] for i in g if id(free[i]) in index} for g in groups]
    rest_groups = [g for g in rest_groups if len(g) > 1]
    inner = patient_split(
        rest, {name: v / total for name, v in share.items()}, seed=seed, duplicate_groups=rest_groups
    )
    splits = {"train": inner.get("train", []), "val": inner.get("val", []), "test": test}
    splits = {name: [original[id(r)] for r in members] for name, members in splits.items()}
    note = (
        f"cross-validation fold {fold} of {folds}: test = fold {fold} ({len(test)} images), "
        f"train/val = the other folds in the ratio {share['train']:g}:{share['val']:g}; official splits ignored"
    )
    return splits, [note]


def _split(
    records: list[Record],
    fractions: Mapping[str, float],
    seed: int,
    groups: Sequence[set[int]],
    folds: int | None = None,
    fold: int = 0,
) -> tuple[dict[str, list[Record]], list[str]]:
    """Patient-level split; the tiny-dataset rule of the module docstring when a requested split is empty."""
    if folds is not None:
        splits, notes = _cross_validation_split(records, fractions, seed, groups, folds, fold)
        if not splits["train"]:
            raise ValueError(f"no training items in cross-validation fold {fold} of {folds}")
        return splits, notes
    splits = patient_split(records, fractions, seed=seed, duplicate_groups=groups)
    notes = []
    if splits.report.official_conflicts:
        notes.append(
            f"{splits.report.official_conflicts} patients appear in several official splits; "
            "each was put in the first of test, val, train"
        )

    def empty(result: Mapping[str, list[Record]]) -> list[str]:
        return [name for name, share in fractions.items() if share > 0 and not result.get(name)]

    official = any(r.split is not None for r in records)
    free = [replace(r, split=None) for r in records] if official else records
    original = {id(f): r for f, r in zip(free, records)}
    if empty(splits) and official:
        fallback = patient_split(free, fractions, seed=seed, duplicate_groups=groups)
        notes.append(
            f"the official splits leave {', '.join(empty(splits))} empty; all {len(records)} items were split "
            f"at patient level by the fractions {dict(fractions)} instead"
        )
        splits = {name: [original[id(r)] for r in members] for name, members in fallback.items()}
    if empty(splits):  # too few patients per class to stratify: split the patients regardless of class
        fallback = patient_split(free, fractions, seed=seed, stratify=False, duplicate_groups=groups)
        notes.append(
            f"too few items per class to stratify the split ({len(records)} items): split without stratification"
        )
        splits = {name: [original[id(r)] for r in members] for name, members in fallback.items()}
    if not splits.get("train"):
        raise ValueError(
            f"no training items: {len(records)} usable items, split {dict(fractions)}; "
            "check data.root and data.split_fractions (see the report of python -m cxrnet.data.check)"
        )
    notes += [
        f"split {name!r} is empty ({len(records)} usable items are too few for the fractions)"
        for name in empty(splits)
    ]
    for note in notes:
        log.warning(note)
    return dict(splits), notes


def build_splits(
    specs: Sequence[SourceSpec],
    classes: Sequence[str],
    *,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    on_unknown_label: str = "error",
    on_error: str = "error",
    cache: DataCache | None = None,
    duplicate_max_distance: int | None = DUPLICATE_MAX_DISTANCE,
    workers: int = 0,
    collect: bool = False,
    progress: Progress | None = None,
    folds: int | None = None,
    fold: int = 0,
) -> DataBuild:
    """Read, scan, de-duplicate and split the given sources (see the module docstring).

    Args:
        specs: the sources (see :func:`source_specs`).
        classes: the configured class names; other labels are errors or exclusions.
        fractions: split name → share of images; defaults to train 0.7, val 0.15, test 0.15.
        seed: seed of the patient-level split.
        on_unknown_label: ``"error"`` or ``"exclude"`` (a source's own setting wins).
        on_error: ``"error"`` (an unreadable item raises, naming the file) or ``"skip"`` (dropped, listed).
        cache: a :class:`DataCache`; the scan then fills it and reads hashes from it.
        duplicate_max_distance: Hamming distance (of 256 bits) for near-duplicates; ``None`` disables them.
        workers: threads for the scan (0 or 1: none).
        collect: list every problem instead of stopping at the first (what ``cxrnet.data.check`` does):
            unknown labels and missing files are excluded, unreadable items skipped, the scan always runs.
        progress: called with (done, total) during the scan.
        folds, fold: patient-level cross-validation: fold ``fold`` of ``folds`` stratified folds is the test
            split, the other folds are split into train and val in the ratio of ``fractions``; ``None``: off.

    Returns:
        :class:`DataBuild` with records per split, the report and the image hashes.

    Raises:
        ValueError: an unknown label or a label outside ``classes`` (unless excluded), or no training item.
        ImageReadError: an unreadable item with ``on_error="error"``; the message names the file.
        FileNotFoundError: a dataset folder is missing or has the wrong layout.
    """
    check_choice("data.on_error", on_error, ON_ERROR)
    check_choice("data.on_unknown_label", on_unknown_label, ON_UNKNOWN_LABEL)
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    records: list[Record] = []
    issues: list[Issue] = []
    notes: list[str] = []
    for spec in specs:
        on_unknown = spec.on_unknown_label or on_unknown_label
        check_choice(f"on_unknown_label of source {spec.name}", on_unknown, ON_UNKNOWN_LABEL)
        kept, found, said = _read_one(spec, classes, on_unknown, on_error, collect)
        records += kept
        issues += found
        notes += said
    hashes: dict[str, int] = {}
    if collect or cache is not None or on_error == "skip" or duplicate_max_distance is not None:
        records, hashes, found = _scan(records, cache, "skip" if collect else on_error, workers, progress)
        issues += found
    groups: list[set[int]] = []
    duplicates: list[list[str]] = []
    if duplicate_max_distance is not None and records:
        groups, duplicates, found = _duplicate_groups(records, hashes, duplicate_max_distance)
        issues += found
    source = "+".join(dict.fromkeys(spec.name for spec in specs))
    try:
        if not records:
            raise ValueError(
                f"no usable items in {', '.join(s.root or s.name for s in specs)} "
                f"({len(issues)} issues; run python -m cxrnet.data.check to list them)"
            )
        splits, said = _split(records, fractions, seed, groups, folds, fold)
    except ValueError as exc:
        if not collect:
            raise
        splits, said = {name: [] for name in fractions}, []
        issues.append(Issue("no training items", source, str(exc)))
    report = DataReport.from_splits(source, splits, issues=issues, duplicates=duplicates, notes=notes + said)
    return DataBuild(splits, report, hashes)
