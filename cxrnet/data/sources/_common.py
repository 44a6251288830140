"""What every dataset reader shares: the result type, label mapping, and small file helpers.

Every reader returns a :class:`SourceResult`: the records it kept plus an :class:`Excluded` entry for each
item it skipped and why, and free-text notes about things worth knowing (e.g. images without a mask).
A data check prints these; training uses ``result.records``.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxrnet.data.images import find_images
from cxrnet.data.records import Record

ON_UNKNOWN_LABEL = ("error", "exclude")
ON_MISSING = ("error", "exclude")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Excluded:
    """One item a reader skipped.

    Attributes:
        path: the file (or the label file / manifest row) concerned.
        reason: short category used for counting, e.g. ``"unknown label"``, ``"missing file"``,
            ``"view not kept"``, ``"label mapped to None"``.
        detail: the specifics: the raw label, the view, the manifest row.
    """

    path: str
    reason: str
    detail: str = ""


@dataclass
class SourceResult:
    """What a dataset reader found.

    Iterating, indexing and ``len`` act on ``records``, so a result can be used like a list of records.

    Attributes:
        source: dataset name (``"covidx"``, ``"qata"``, ...).
        records: the items kept.
        excluded: the items skipped, each with its reason.
        notes: observations that did not exclude anything (e.g. "12 COVID-19 images have no mask file").
    """

    source: str
    records: list[Record] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def label_counts(self) -> dict[str, int]:
        """Number of records per canonical label (``"<none>"`` for unlabelled), sorted by label."""
        counts = Counter(r.label if r.label is not None else "<none>" for r in self.records)
        return dict(sorted(counts.items()))

    def excluded_counts(self) -> dict[str, int]:
        """Number of excluded items per reason, most frequent first."""
        return dict(Counter(e.reason for e in self.excluded).most_common())

    def summary(self) -> str:
        """A few human-readable lines: counts per label and split, exclusions by reason, notes."""
        splits = Counter(r.split or "<none>" for r in self.records)
        lines = [
            f"{self.source}: {len(self.records)} records",
            f"  labels: {_format_counts(self.label_counts())}",
            f"  splits: {_format_counts(dict(sorted(splits.items())))}",
        ]
        if self.excluded:
            lines.append(f"  excluded {len(self.excluded)}: {_format_counts(self.excluded_counts())}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"SourceResult(source={self.source!r}, records={len(self.records)} "
            f"{{{_format_counts(self.label_counts())}}}, excluded={len(self.excluded)})"
        )


def _format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in counts.items()) or "none"


def label_key(raw: str) -> str:
    """How raw labels are compared: case-insensitive, surrounding and repeated whitespace ignored."""
    return " ".join(raw.split()).casefold()


class LabelMapper:
    """Maps a dataset's raw label strings onto canonical class names.

    A map value of ``None`` drops that raw label on purpose (the item is excluded, reason
    ``"label mapped to None"``). A raw label absent from the map is an error naming the label and the file,
    or, with ``on_unknown="exclude"``, the item is excluded with reason ``"unknown label"``.

    Args:
        source: dataset name, for messages.
        label_map: raw label → canonical class (or ``None``); matched case-insensitively.
        on_unknown: ``"error"`` or ``"exclude"``.
    """

    def __init__(self, source: str, label_map: Mapping[str, str | None], on_unknown: str) -> None:
        check_choice("on_unknown_label", on_unknown, ON_UNKNOWN_LABEL)
        self.source = source
        self.on_unknown = on_unknown
        self._map = {label_key(raw): target for raw, target in label_map.items()}
        self._raw_names = sorted(label_map)
        self.excluded: list[Excluded] = []
        self.indirect: Counter[tuple[str, str, str | None]] = Counter()
        """(raw label, the candidate that decided, its class) for labels decided by a candidate, with counts."""

    def notes(self) -> list[str]:
        """One line per raw label that a candidate (a path component, a list item, a family) decided."""
        return [
            f"finding {raw!r} mapped to {target or 'nothing (dropped)'} through {via!r} ({n} images)"
            for (raw, via, target), n in sorted(self.indirect.items())
        ]

    def __call__(self, raw: str, path: str | os.PathLike[str], candidates: Sequence[str] = ()) -> str | None:
        """Return the canonical class of ``raw``, or ``None`` when the item is to be excluded.

        Args:
            raw: the raw label, as reported in errors.
            path: the file the label belongs to, as reported in errors.
            candidates: keys to try in order instead of ``raw`` (the first one present in the map decides);
                readers with hierarchical labels pass the most specific first.
        """
        for candidate in candidates or (raw,):
            key = label_key(candidate)
            if key in self._map:
                target = self._map[key]
                if key != label_key(raw):
                    self.indirect[(raw, candidate, target)] += 1
                if target is None:
                    self.excluded.append(Excluded(str(path), "label mapped to None", raw))
                return target
        if self.on_unknown == "exclude":
            self.excluded.append(Excluded(str(path), "unknown label", raw))
            return None
        raise ValueError(
            f"{self.source}: unknown label {raw!r} for {path}. Known labels: {', '.join(self._raw_names)}. "
            f"Add it to the label map (data.label_map: {{{raw!r}: <class>}}, or null to drop such items), "
            "or set on_unknown_label='exclude' to skip and count them."
        )


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the valid values when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(choices)}")


def require_dir(path: Path, source: str, layout: str) -> None:
    """Raise ``FileNotFoundError`` with the expected layout when ``path`` is not a folder."""
    if not path.is_dir():
        raise FileNotFoundError(f"{source}: folder not found: {path}\nexpected layout:\n{layout}")


def as_root(root: str | os.PathLike[str]) -> Path:
    """A dataset root as an absolute path (symlinks kept), so records stay valid after a ``chdir``."""
    return Path(root).expanduser().absolute()


def read_table(path: Path, comment: str = "#") -> list[tuple[int, dict[str, str]]]:
    """Read a CSV file (comma, semicolon or tab) into rows.

    Leading lines starting with ``comment`` (and blank lines) before the header are skipped; column names
    are stripped and lower-cased; values are stripped; a UTF-8 byte-order mark is ignored.

    Returns:
        ``(line_number, row)`` pairs; the 1-based line of the file where the row starts, for messages.
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = handle.read().splitlines(keepends=True)
    skipped = 0
    while skipped < len(lines) and (
        not lines[skipped].strip() or lines[skipped].lstrip().startswith(comment)
    ):
        skipped += 1
    if skipped == len(lines):
        return []
    delimiter = max(",;\t", key=lines[skipped].count)
    reader = csv.reader(io.StringIO("".join(lines[skipped:])), delimiter=delimiter)
    header = [name.strip().lower() for name in next(reader)]
    rows = []
    start = reader.line_num  # quoted fields may span lines: a row starts after the previous one ended
    for values in reader:
        number, start = skipped + start + 1, reader.line_num
        if any(v.strip() for v in values):
            rows.append((number, {name: v.strip() for name, v in zip(header, values) if name}))
    return rows


def split_suffix_label(stem: str) -> tuple[str, str]:
    """Split ``MCUCXR_0001_0`` into patient id ``MCUCXR_0001`` and raw label ``0`` (``""`` when absent)."""
    head, sep, tail = stem.rpartition("_")
    return (head, tail) if sep else (stem, "")


def read_suffix_labelled(
    root: Path,
    source: str,
    layout: str,
    mapper: LabelMapper,
    lung_masks: Callable[[Path], tuple[Path, ...] | None],
) -> tuple[SourceResult, int]:
    """Read ``<root>/CXR_png/<patient>_<label>.png``, the layout of the Montgomery and Shenzhen sets.

    Args:
        root: the dataset folder.
        source: the reader's name, for records and messages.
        layout: the expected layout, for messages.
        mapper: file-name suffix → canonical class.
        lung_masks: an image path → its lung-mask files, or ``None`` when they are not all there (the
            record then gets no lung mask).

    Returns:
        The result (its ``excluded`` holds the mapper's exclusions) and how many images got no lung mask.

    Raises:
        FileNotFoundError: ``CXR_png`` is missing, or holds no usable image.
    """
    require_dir(root / "CXR_png", source, layout)
    result = SourceResult(source)
    unmasked = 0
    for path in find_images(root / "CXR_png", recursive=False):
        patient_id, raw = split_suffix_label(path.stem)
        label = mapper(raw, path)
        if label is None:
            continue
        masks = lung_masks(path)
        unmasked += masks is None
        result.records.append(
            Record(
                path=str(path),
                patient_id=patient_id,
                source=source,
                label=label,
                raw_label=raw,
                lung_mask=tuple(str(m) for m in masks or ()),
            )
        )
    result.excluded += mapper.excluded
    if not result.records:
        raise FileNotFoundError(
            f"{source}: no usable images in {root / 'CXR_png'}\nexpected layout:\n{layout}"
        )
    return result, unmasked
