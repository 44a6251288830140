"""What building a dataset found: counts per split and class, and every issue, each naming its file.

A :class:`DataReport` is what ``CXRDataModule.report`` holds and what ``python -m cxrnet.data.check``
prints and writes as JSON. Issues are of two severities:

* **problems**: something is wrong with the data (an unreadable or missing file, a mask whose size differs
  from its image, a label that maps to no class). ``cxrnet.data.check`` exits with 1.
* **warnings**: worth knowing, but handled by design (near-duplicate images whose patients were merged into
  one split unit, items a reader leaves out on purpose such as lateral views or labels mapped to ``null``,
  files that end a few bytes early and were read anyway, masks with a few stray grey levels).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cxrnet.data.records import RawItem, Record
from cxrnet.data.sources import Excluded

__all__ = [
    "COUNT_FIELDS",
    "DETAILED_KINDS",
    "KIND_DUPLICATE",
    "KIND_MASK_SIZE",
    "KIND_NON_BINARY",
    "KIND_NOT_IN_CLASSES",
    "KIND_TRUNCATED",
    "KIND_UNREADABLE",
    "WARNING_REASONS",
    "DataReport",
    "Issue",
    "count_items",
    "issue_from_excluded",
]

KIND_UNREADABLE = "unreadable file"
KIND_MASK_SIZE = "mask size mismatch"
KIND_NON_BINARY = "non-binary mask"
KIND_NOT_IN_CLASSES = "label not in classes"
KIND_DUPLICATE = "near-duplicate"
KIND_TRUNCATED = "truncated file read"

WARNING_REASONS = frozenset(
    {"label mapped to None", "view not kept", "modality not kept", "outside class folders"}
)
"""Reader exclusion reasons that are choices of the dataset config, not defects of the data."""

DETAILED_KINDS = ("unknown label", "label mapped to None", "view not kept", "modality not kept")
"""Issue kinds whose details (the raw label, the view, ...) the summary counts one by one."""
MAX_DETAILS = 12

COUNT_FIELDS = ("images", "patients", "lung_masks", "infection_masks", "severity")
"""Counted per split and class: images, distinct patients, images with a lung mask, with an infection mask
(an all-zero one guaranteed by the dataset counts), and with at least one severity score."""

ALL = "all"
UNLABELLED = "<none>"


@dataclass(frozen=True)
class Issue:
    """One thing found wrong or worth knowing about one file.

    Attributes:
        kind: category, e.g. ``"unreadable file"``, ``"mask size mismatch"``, ``"non-binary mask"``,
            ``"unknown label"``, ``"missing file"``, ``"label not in classes"``, ``"near-duplicate"``, or a
            reader's exclusion reason (``"view not kept"``, ...).
        path: the file concerned (image, mask, or the label file / manifest row).
        detail: the specifics (the reason a file cannot be read, the raw label, the other duplicates, ...).
        problem: ``True`` for a defect of the data, ``False`` for a warning (see the module docstring).
        dropped: the item is not used (excluded by its reader, or skipped because it cannot be read).
    """

    kind: str
    path: str
    detail: str = ""
    problem: bool = True
    dropped: bool = False


def issue_from_excluded(excluded: Excluded) -> Issue:
    """The :class:`Issue` of an item a dataset reader excluded."""
    return Issue(
        kind=excluded.reason,
        path=excluded.path,
        detail=excluded.detail,
        problem=excluded.reason not in WARNING_REASONS,
        dropped=True,
    )


def _facts(item: Record | RawItem) -> tuple[str, tuple[str, str], bool, bool, bool]:
    """(label, patient key, has lung mask, has infection mask, has severity) without reading pixels."""
    if isinstance(item, Record):
        infection = item.infection_mask is not None or bool(item.meta.get("infection_mask_empty", False))
        return (
            item.label or UNLABELLED,
            (item.source, item.patient_id),
            bool(item.lung_mask),
            infection,
            bool(item.severity),
        )
    meta = item.meta
    return (
        item.label or UNLABELLED,
        (str(meta.get("source", "")), str(meta.get("patient_id", meta.get("path", id(item))))),
        item.lung_mask is not None,
        item.infection_mask is not None,
        bool(item.severity),
    )


def count_items(items: Iterable[Record | RawItem]) -> dict[str, dict[str, int]]:
    """Counts of :data:`COUNT_FIELDS` per class (sorted, ``"<none>"`` for unlabelled) plus an ``"all"`` row."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNT_FIELDS, 0))
    patients: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for item in items:
        label, patient, lung, infection, severity = _facts(item)
        for key in (label, ALL):
            row = counts[key]
            row["images"] += 1
            row["lung_masks"] += lung
            row["infection_masks"] += infection
            row["severity"] += severity
            patients[key].add(patient)
    for key, members in patients.items():
        counts[key]["patients"] = len(members)
    ordered = {key: counts[key] for key in sorted(k for k in counts if k != ALL)}
    ordered[ALL] = counts[ALL] if ALL in counts else dict.fromkeys(COUNT_FIELDS, 0)
    return ordered


@dataclass
class DataReport:
    """Counts per split and class, issues, merged near-duplicates and notes of one data build.

    Attributes:
        source: dataset name, or the names of the mixed sources joined by ``+``.
        counts: split → class → :data:`COUNT_FIELDS` counts; each split also has an ``"all"`` row.
        issues: every problem and warning, each naming its file.
        duplicates: groups of image paths showing the same radiograph under different patients; each group's
            patients were merged into one split unit.
        notes: observations of the readers and of the split (e.g. a fallback from the official split).
    """

    source: str
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_splits(
        cls, source: str, splits: Mapping[str, Sequence[Record | RawItem]], **kwargs: Any
    ) -> DataReport:
        """A report whose counts come from ``splits`` (split name → items)."""
        return cls(source, {name: count_items(items) for name, items in splits.items()}, **kwargs)

    @property
    def problems(self) -> list[Issue]:
        """Issues that are defects of the data."""
        return [issue for issue in self.issues if issue.problem]

    @property
    def warnings(self) -> list[Issue]:
        """Issues that are handled by design."""
        return [issue for issue in self.issues if not issue.problem]

    @property
    def n_items(self) -> int:
        """Images over all splits."""
        return sum(rows[ALL]["images"] for rows in self.counts.values())

    def issue_counts(self) -> dict[str, int]:
        """Number of issues per kind, most frequent first."""
        counts: dict[str, int] = defaultdict(int)
        for issue in self.issues:
            counts[issue.kind] += 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def detail_counts(self, kind: str) -> dict[str, int]:
        """How often each detail occurs among the issues of one kind (e.g. each unmapped label, each view)."""
        counts: dict[str, int] = defaultdict(int)
        for issue in self.issues:
            if issue.kind == kind:
                counts[issue.detail] += 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``json.dumps(report.to_dict())``)."""
        return {
            "source": self.source,
            "n_items": self.n_items,
            "counts": self.counts,
            "n_problems": len(self.problems),
            "n_warnings": len(self.warnings),
            "problems": [asdict(issue) for issue in self.problems],
            "warnings": [asdict(issue) for issue in self.warnings],
            "duplicates": self.duplicates,
            "notes": self.notes,
        }

    def summary(self) -> str:
        """A few lines: per split, totals and per-class images; then issue counts and notes."""
        sizes = ", ".join(f"{split} {rows[ALL]['images']}" for split, rows in self.counts.items())
        lines = [f"{self.source}: {self.n_items} images ({sizes})"]
        for split, rows in self.counts.items():
            total = rows[ALL]
            per_class = ", ".join(f"{label}: {row['images']}" for label, row in rows.items() if label != ALL)
            lines.append(
                f"  {split}: {total['images']} images, {total['patients']} patients, "
                f"{total['lung_masks']} lung masks, {total['infection_masks']} infection masks, "
                f"{total['severity']} with severity ({per_class or 'empty'})"
            )
        dropped = sum(issue.dropped for issue in self.issues)
        lines.append(
            f"  problems: {len(self.problems)}, warnings: {len(self.warnings)}, items not used: {dropped}, "
            f"merged near-duplicate groups: {len(self.duplicates)}"
        )
        if self.issues:
            lines.append("  issues: " + ", ".join(f"{kind}: {n}" for kind, n in self.issue_counts().items()))
        for kind in DETAILED_KINDS:
            details = self.detail_counts(kind)
            if details:
                shown = ", ".join(f"{detail!r} {n}" for detail, n in list(details.items())[:MAX_DETAILS])
                more = f", and {len(details) - MAX_DETAILS} more" if len(details) > MAX_DETAILS else ""
                lines.append(f"  {kind}: {shown}{more}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
