"""Patient-level, stratified, duplicate-aware train/val/test splits.

The unit of splitting is a patient, identified by ``(record.source, record.patient_id)``; patients whose
images are near-duplicates of each other (the same radiograph re-published under another id, common when
public collections are merged) are merged into one unit, so that no image leaks across splits.

Official splits are kept: a unit whose records carry ``split`` stays there, and when a source has no
official ``val`` split, ``val`` is carved out of its official ``train`` units. Units without an official
split are distributed by ``fractions``. Within each group, units are stratified by their majority label
and assigned greedily so that each split's share of *images* per label follows the fractions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.fft import dctn

from cxrnet.data.records import Record

__all__ = [
    "DEFAULT_FRACTIONS",
    "DUPLICATE_MAX_DISTANCE",
    "SplitReport",
    "Splits",
    "check_folds",
    "check_fractions",
    "find_near_duplicates",
    "hamming",
    "hash_words",
    "image_hash",
    "patient_split",
    "popcount",
]

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
SPLIT_NAMES = ("train", "val", "test")
DUPLICATE_MAX_DISTANCE = 24
"""Default Hamming distance (bits out of 256) up to which two images count as near-duplicates.

Measured on the 55 Figure-1 COVID images: the one known duplicate pair is at 0-2, the same image
re-encoded (half size, JPEG 75) at most 4, gamma-changed (0.8) at most 16, different patients at least 70.
"""

_OFFICIAL_PRIORITY = ("test", "val", "train")  # a patient found in several official splits goes to the first


# ------------------------------------------------------------------------------------ near-duplicates


def image_hash(image: np.ndarray, hash_size: int = 16) -> int:
    """Perceptual hash (pHash) of an image, ``hash_size**2`` bits (256 by default).

    The image is resized to ``4 * hash_size`` square (anti-aliased), its 2D DCT taken, and each of the
    ``hash_size x hash_size`` lowest frequencies compared with their median. Robust to resizing,
    re-compression and contrast changes; not to crops or added borders. The common 64-bit variant
    (``hash_size=8``) separates chest X-rays poorly: different patients come within 8 bits of each other,
    where 256 bits keep them 70 bits apart (see :data:`DUPLICATE_MAX_DISTANCE`).

    Args:
        image: HxW (or HxWxC, averaged) array, any numeric range.
        hash_size: side of the block of low frequencies kept.

    Returns:
        The hash as a non-negative int below ``2**(hash_size**2)``; compare hashes with :func:`hamming`.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=-1)
    side = 4 * hash_size
    # Area averaging in float32 is ~60x faster than an anti-aliased float64 resize on full-size radiographs
    # and moves hashes by a few bits at most (far below DUPLICATE_MAX_DISTANCE).
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64)
    low = dctn(small, type=2, norm="ortho")[:hash_size, :hash_size]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (int(a) ^ int(b)).bit_count()


def find_near_duplicates(
    records: Sequence[Record], hashes: Sequence[int], max_distance: int = DUPLICATE_MAX_DISTANCE
) -> list[set[int]]:
    """Group records whose image hashes are within ``max_distance`` bits (transitively).

    Args:
        records: the records (used for their count; the groups hold indices into this sequence).
        hashes: one :func:`image_hash` per record, in the same order, all of the same ``hash_size``.
        max_distance: largest Hamming distance that counts as a near-duplicate.

    Returns:
        Groups of two or more record indices, ordered by their smallest index.
    """
    if len(records) != len(hashes):
        raise ValueError(f"got {len(records)} records but {len(hashes)} hashes; pass one hash per record")
    words = hash_words(hashes)
    parent = list(range(len(words)))
    rows = max(1, 2**22 // max(1, len(words)))  # about 32 MB of xor per block
    for start in range(0, len(words), rows):
        # a pair's distance is at least that of its first word: screen on it, then count all words
        first = popcount(words[start : start + rows, None, 0] ^ words[None, :, 0])
        i, j = np.nonzero(first <= max_distance)
        keep = start + i < j
        i, j = start + i[keep], j[keep]
        distances = popcount(words[i] ^ words[j]).sum(axis=-1)
        for a, b in zip(i[distances <= max_distance], j[distances <= max_distance]):
            _union(parent, int(a), int(b))
    groups: dict[int, set[int]] = defaultdict(set)
    for index in range(len(words)):
        groups[_find(parent, index)].add(index)
    return sorted((g for g in groups.values() if len(g) > 1), key=min)


def hash_words(hashes: Sequence[int | str], bits: int | None = None) -> np.ndarray:
    """Image hashes (ints, or hex strings as checkpoints store them) as an N x W array of uint64 words.

    Args:
        hashes: non-negative hashes.
        bits: the hash width; ``None`` uses the widest hash given. Hashes wider than ``bits`` are refused.

    Raises:
        ValueError: a negative hash, or one wider than ``bits``, naming it.
    """
    numbers = [int(h, 16) if isinstance(h, str) else int(h) for h in hashes]
    width = bits if bits is not None else max([n.bit_length() for n in numbers] + [1])
    n_words = max(1, (width + 63) // 64)
    for value, number in zip(hashes, numbers):
        if (
            number < 0
            or number.bit_length() > 64 * n_words
            or (bits is not None and number.bit_length() > bits)
        ):
            raise ValueError(
                f"image hash {value!r} is not a {width}-bit hash (cxrnet.data.splits.image_hash)"
            )
    data = b"".join(number.to_bytes(8 * n_words, "big") for number in numbers)
    return np.frombuffer(data, dtype=">u8").astype(np.uint64).reshape(len(numbers), n_words)


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (``np.bitwise_count`` on numpy 2, an unpacking fallback on numpy 1.x)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(values)
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: list[int], a: int, b: int) -> bool:
    root_a, root_b = _find(parent, a), _find(parent, b)
    if root_a == root_b:
        return False
    parent[max(root_a, root_b)] = min(root_a, root_b)
    return True


# ----------------------------------------------------------------------------------------- splitting


@dataclass
class SplitReport:
    """What :func:`patient_split` did.

    Attributes:
        images: split → label → number of images (``"<none>"`` for unlabelled).
        patients: split → number of distinct patients.
        units: split → number of split units (patients after duplicate merging).
        merged_duplicates: patients merged into another patient's unit because of near-duplicate images.
        official_conflicts: units whose records carried more than one official split; they were put in the
            first of test, val, train that they touch.
        carved_val: sources whose ``val`` was carved out of their official ``train``.
    """

    images: dict[str, dict[str, int]] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)
    units: dict[str, int] = field(default_factory=dict)
    merged_duplicates: int = 0
    official_conflicts: int = 0
    carved_val: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = []
        for split, counts in self.images.items():
            total = sum(counts.values())
            detail = ", ".join(f"{label}: {n}" for label, n in counts.items())
            lines.append(f"{split}: {total} images, {self.patients[split]} patients ({detail})")
        lines.append(f"patients merged as near-duplicates: {self.merged_duplicates}")
        if self.official_conflicts:
            lines.append(f"patients found in several official splits: {self.official_conflicts}")
        if self.carved_val:
            lines.append(f"val carved out of official train for: {', '.join(self.carved_val)}")
        return "\n".join(lines)


class Splits(dict[str, list[Record]]):
    """split name → records (in input order), with the :class:`SplitReport` as ``.report``."""

    def __init__(self, splits: Mapping[str, list[Record]], report: SplitReport) -> None:
        super().__init__(splits)
        self.report = report


@dataclass
class _Unit:
    records: list[int]
    official: set[str]
    sources: set[str]
    stratum: str = ""


def patient_split(
    records: Sequence[Record],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    stratify: bool = True,
    duplicate_groups: Sequence[set[int]] = (),
) -> Splits:
    """Split records so that no patient (or near-duplicate image) appears in two splits.

    Args:
        records: records of one or more sources.
        fractions: split name → share of images, summing to 1; defaults to :data:`DEFAULT_FRACTIONS`.
        seed: seed of the assignment; the result does not depend on the order of ``records``.
        stratify: keep each label's share per split close to ``fractions`` (by each patient's majority label).
        duplicate_groups: groups of record indices showing the same image (from :func:`find_near_duplicates`);
            their patients are merged into one unit.

    Returns:
        :class:`Splits`: split name → records, with ``.report`` (:class:`SplitReport`). Every name in
        ``fractions`` is present; an official split name absent from ``fractions`` is added.

    Raises:
        ValueError: fractions that are negative or do not sum to 1.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1; got {fractions}")
    units, merged = _build_units(records, duplicate_groups)
    report = SplitReport(merged_duplicates=merged)
    for unit in units:
        labels = Counter(records[i].label or "<none>" for i in unit.records)
        unit.stratum = min(labels, key=lambda label: (-labels[label], label)) if stratify else ""

    official_by_source: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.split is not None:
            official_by_source[record.source].add(record.split)
    carve = "val" in fractions and fractions["val"] > 0
    report.carved_val = sorted(s for s, names in official_by_source.items() if carve and "val" not in names)

    assignment: dict[int, str] = {}
    free: list[int] = []
    train_pool: list[int] = []
    for index, unit in enumerate(units):
        if not unit.official:
            free.append(index)
            continue
        if len(unit.official) > 1:
            report.official_conflicts += 1
        split = next(s for s in (*_OFFICIAL_PRIORITY, *sorted(unit.official)) if s in unit.official)
        if split == "train" and unit.sources & set(report.carved_val):
            train_pool.append(index)
        else:
            assignment[index] = split

    rng = np.random.default_rng(seed)
    share = {s: fractions.get(s, 0.0) for s in ("train", "val")}
    if train_pool:
        assignment |= _assign(units, train_pool, {s: v / sum(share.values()) for s, v in share.items()}, rng)
    assignment |= _assign(units, free, fractions, rng)

    names = list(dict.fromkeys([*fractions, *sorted(set(assignment.values()))]))
    splits: dict[str, list[Record]] = {name: [] for name in names}
    record_split = {i: assignment[u] for u, unit in enumerate(units) for i in unit.records}
    for index, record in enumerate(records):
        splits[record_split[index]].append(record)
    for name, members in splits.items():
        counts = Counter(r.label or "<none>" for r in members)
        report.images[name] = dict(sorted(counts.items()))
        report.patients[name] = len({(r.source, r.patient_id) for r in members})
        report.units[name] = sum(1 for split in assignment.values() if split == name)
    return Splits(splits, report)


def _build_units(records: Sequence[Record], duplicate_groups: Sequence[set[int]]) -> tuple[list[_Unit], int]:
    """Group record indices by patient, then merge patients sharing a duplicate group."""
    patient_index: dict[tuple[str, str], int] = {}
    record_patient = [patient_index.setdefault((r.source, r.patient_id), len(patient_index)) for r in records]
    parent = list(range(len(patient_index)))
    merged = 0
    for group in duplicate_groups:
        members = sorted(group)
        for other in members[1:]:
            merged += _union(parent, record_patient[members[0]], record_patient[other])
    by_root: dict[int, _Unit] = {}
    # sorting by patient key makes the units (and thus the split) independent of the input order
    for key in sorted(patient_index):
        root = _find(parent, patient_index[key])
        by_root.setdefault(root, _Unit([], set(), set()))
    for index, record in enumerate(records):
        unit = by_root[_find(parent, record_patient[index])]
        unit.records.append(index)
        unit.sources.add(record.source)
        if record.split is not None:
            unit.official.add(record.split)
    return list(by_root.values()), merged


def _assign(
    units: list[_Unit], pool: list[int], fractions: Mapping[str, float], rng: np.random.Generator
) -> dict[int, str]:
    """Assign units to splits, per stratum, greedily following the image fractions."""
    names = [name for name, share in fractions.items() if share > 0]
    if not pool or not names:
        return {}
    assignment: dict[int, str] = {}
    total: Counter[str] = Counter()
    strata: dict[str, list[int]] = defaultdict(list)
    for index in pool:
        strata[units[index].stratum].append(index)
    for stratum in sorted(strata):
        members = strata[stratum]
        order = rng.permutation(len(members))
        # large units first: they are the hardest to place without overshooting a split
        ordered = sorted((members[i] for i in order), key=lambda u: -len(units[u].records))
        count: Counter[str] = Counter()
        placed = 0
        for index in ordered:
            size = len(units[index].records)
            placed += size
            best = _most_lacking(names, fractions, count, placed, total, sum(total.values()) + size)
            assignment[index] = best
            count[best] += size
            total[best] += size
    return assignment


def _most_lacking(
    names: list[str],
    fractions: Mapping[str, float],
    count: Counter[str],
    placed: int,
    total: Counter[str],
    placed_total: int,
) -> str:
    """The split furthest below its share within the stratum; ties go to the one furthest below overall."""

    def deficit(name: str) -> tuple[float, float]:
        return fractions[name] * placed - count[name], fractions[name] * placed_total - total[name]

    return max(names, key=deficit)


# ----------------------------------------------------------------------------------- config checks


def check_fractions(fractions: Mapping[str, float] | None) -> None:
    """Raise ``ValueError`` naming the option when split fractions are not shares of train/val/test summing to 1.

    Hydra merges a mapping given on the command line into the config's default, so
    ``data.split_fractions={train:0.85,val:0.15}`` keeps the default ``test: 0.15``; the message says so.
    """
    if fractions is None:
        return
    fractions = dict(fractions)
    unknown = sorted(set(fractions) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"data.split_fractions has unknown splits {unknown}; valid: {list(SPLIT_NAMES)}")
    try:
        values = {name: float(value) for name, value in fractions.items()}
    except (TypeError, ValueError):
        raise ValueError(f"data.split_fractions={fractions} must map splits to numbers") from None
    if any(v < 0 for v in values.values()) or abs(sum(values.values()) - 1.0) > 1e-6:
        shown = ",".join(f"{k}:{v:g}" for k, v in values.items())
        raise ValueError(
            f"data.split_fractions={{{shown}}} sums to {sum(values.values()):g}, not 1 (shares must be >= 0). "
            "A mapping given on the command line is merged into the default, so a split left out keeps its "
            "default share: give every split, e.g. data.split_fractions='{train:0.85,val:0.15,test:0}'"
        )


def check_folds(folds: int | None, fold: int) -> None:
    """Raise ``ValueError`` naming the option when the cross-validation settings are out of range."""
    if folds is None:
        return
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"data.folds={folds!r} must be an integer >= 2 (or null for no cross-validation)")
    if not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"data.fold={fold!r} must be an integer in 0..{folds - 1} for data.folds={folds}")
