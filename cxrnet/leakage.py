"""Guard against evaluating a model on what it was trained on.

Training records a *fingerprint* of its training split in the checkpoint (``meta["training_data"]``): the
patient ids and a perceptual hash of every image. Evaluation compares the split it is about to score with
it and refuses a split that shares a patient, or holds an image that is a near-duplicate of a training
image (the same radiograph re-published under another id, common when public collections are merged).

Fingerprint format (JSON-ready, stored as ``meta["training_data"]``)::

    {
        "patient_ids": ["P001", ...],        # sorted, unique, as strings
        "image_hashes": ["3fa9...", ...],    # one 256-bit pHash per training image, 64 hex digits
        "hash": "phash-256",                 # how the hashes were made (cxrnet.data.splits.image_hash)
        "source": ["covidx"],                # sorted dataset names of the training items
        "n_items": 13958,
    }

Patients are compared by id alone, across sources: merged collections (COVIDx contains the Cohen
collection) keep the original ids, so a shared id is treated as a shared patient. Images are compared by
Hamming distance of their hashes (:data:`cxrnet.data.splits.DUPLICATE_MAX_DISTANCE` bits by default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrnet.data.records import RawItem, Record
from cxrnet.data.splits import DUPLICATE_MAX_DISTANCE, hash_words, image_hash, popcount

log = logging.getLogger(__name__)

__all__ = [
    "HASH_KIND",
    "NOT_CHECKED",
    "LeakageError",
    "LeakageReport",
    "check_leakage",
    "fingerprint",
    "guard_split",
    "hash_to_hex",
    "item_hash",
    "item_path",
    "patient_and_source",
    "training_fingerprint",
]

#: Name of the hash stored in fingerprints; a fingerprint made with another hash cannot be compared.
HASH_KIND = "phash-256"
_HASH_BITS = 256
_HEX_DIGITS = _HASH_BITS // 4
_WORDS = _HASH_BITS // 64
#: Bytes of XOR results built at once when comparing hash sets (bounds memory on large splits).
_BLOCK_BYTES = 32 * 2**20


class LeakageError(RuntimeError):
    """The evaluation split overlaps the training data; the message names examples and the override."""


def hash_to_hex(value: int) -> str:
    """A 256-bit image hash as 64 hex digits (the fingerprint's storage form)."""
    return f"{int(value):0{_HEX_DIGITS}x}"


def fingerprint(
    patient_ids: Sequence[str],
    images: Iterable[np.ndarray],
    *,
    sources: Iterable[str] = (),
) -> dict[str, Any]:
    """Fingerprint of a set of training images.

    Args:
        patient_ids: patient id of each image (as many as ``images``).
        images: the images as read from disk (H×W, any range; not letterboxed, because padding changes the
            hash). May be a generator, so that images are read one at a time.
        sources: dataset name of each image (or of the set); stored as the sorted distinct names.

    Returns:
        The JSON-ready fingerprint described in the module docstring.

    Raises:
        ValueError: if the numbers of patient ids and images differ.
    """
    hashes = [image_hash(image) for image in images]
    if len(hashes) != len(patient_ids):
        raise ValueError(
            f"got {len(patient_ids)} patient ids but {len(hashes)} images; pass one id per image"
        )
    return fingerprint_of_hashes(patient_ids, hashes, sources=sources)


def fingerprint_of_hashes(
    patient_ids: Iterable[str], hashes: Sequence[int], *, sources: Iterable[str] = ()
) -> dict[str, Any]:
    """The fingerprint of :func:`fingerprint` from hashes already computed (:func:`image_hash` of each image).

    The one place the fingerprint's layout is written: the data module's scan and cache hashes go through it.
    """
    return {
        "patient_ids": sorted({str(p) for p in patient_ids}),
        "image_hashes": [hash_to_hex(value) for value in hashes],
        "hash": HASH_KIND,
        "source": sorted({str(s) for s in sources}),
        "n_items": len(hashes),
    }


def patient_and_source(item: RawItem | Record) -> tuple[str, str]:
    """``(patient_id, source)`` of a dataset item, read from a :class:`Record` or a :class:`RawItem`'s meta."""
    if isinstance(item, Record):
        return item.patient_id, item.source
    return str(item.meta["patient_id"]), str(item.meta.get("source", ""))


def training_fingerprint(
    items: Sequence[RawItem | Record], loader: Callable[[Record], RawItem] | None = None
) -> dict[str, Any]:
    """Fingerprint of a training split, for ``meta["training_data"]`` of the checkpoint.

    Args:
        items: the training split: in-memory :class:`RawItem` (e.g. phantoms) or :class:`Record` read one at
            a time with ``loader``.
        loader: reads a :class:`Record`; default :func:`cxrnet.data.items.load_record`. Only the image is used.

    Returns:
        See :func:`fingerprint`. Reading the images dominates the cost (every file is read once).
    """
    if loader is None:
        from cxrnet.data.items import load_record

        loader = load_record
    read = loader  # a name the generator below can close over with its narrowed type
    ids_and_sources = [patient_and_source(item) for item in items]
    images = (item.image if isinstance(item, RawItem) else read(item).image for item in items)
    return fingerprint(
        [pid for pid, _ in ids_and_sources], images, sources=[src for _, src in ids_and_sources if src]
    )


@dataclass(frozen=True)
class LeakageReport:
    """Overlap between an evaluation split and the training data of a checkpoint.

    Attributes:
        shared_patients: patient ids present in both, sorted.
        near_duplicates: ``(eval_index, train_index, distance)`` for every pair of an evaluation image and a
            training image whose hashes differ in at most ``max_distance`` bits, nearest first.
        n_eval: evaluation items compared.
        n_train_images: training images in the fingerprint.
        n_train_patients: training patients in the fingerprint.
        max_distance: the near-duplicate threshold in bits.
        images_checked: whether image hashes were compared (``False`` when none were given).
    """

    shared_patients: list[str] = field(default_factory=list)
    near_duplicates: list[tuple[int, int, int]] = field(default_factory=list)
    n_eval: int = 0
    n_train_images: int = 0
    n_train_patients: int = 0
    max_distance: int = DUPLICATE_MAX_DISTANCE
    images_checked: bool = True

    @property
    def leaked(self) -> bool:
        """True if any patient or near-duplicate image is shared."""
        return bool(self.shared_patients or self.near_duplicates)

    @property
    def eval_items_with_duplicates(self) -> list[int]:
        """Indices of evaluation items that have at least one near-duplicate in the training data."""
        return sorted({i for i, _, _ in self.near_duplicates})

    def describe(self, eval_paths: Sequence[str] | None = None, limit: int = 5) -> str:
        """One paragraph naming a few shared patients and duplicated files (for errors, logs and reports).

        Args:
            eval_paths: file of each evaluation item, to name duplicated images; indices are shown otherwise.
            limit: how many examples of each kind to name.
        """
        if not self.leaked:
            checked = "patients and images" if self.images_checked else "patients (no image hashes)"
            return (
                f"no overlap with the training data ({checked} compared: {self.n_eval} evaluation items, "
                f"{self.n_train_patients} training patients, {self.n_train_images} training images)"
            )
        parts = []
        if self.shared_patients:
            shown = ", ".join(self.shared_patients[:limit])
            more = (
                f" and {len(self.shared_patients) - limit} more" if len(self.shared_patients) > limit else ""
            )
            parts.append(
                f"{len(self.shared_patients)} patient(s) are also in the training data: {shown}{more}"
            )
        if self.near_duplicates:
            items = self.eval_items_with_duplicates
            names = [eval_paths[i] if eval_paths is not None else f"item {i}" for i in items[:limit]]
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(
                f"{len(items)} image(s) are near-duplicates (pHash within {self.max_distance} bits) of training "
                f"images: {', '.join(names)}{more}"
            )
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """Counts and flags for ``metrics.json`` (keys without the ``leakage/`` prefix)."""
        return {
            "checked": True,
            "images_checked": self.images_checked,
            "shared_patients": len(self.shared_patients),
            "near_duplicate_images": len(self.eval_items_with_duplicates),
            "near_duplicate_pairs": len(self.near_duplicates),
            "max_distance": self.max_distance,
        }


def _near_pairs(
    eval_words: np.ndarray, train_words: np.ndarray, max_distance: int
) -> list[tuple[int, int, int]]:
    pairs: list[tuple[int, int, int]] = []
    if not len(eval_words) or not len(train_words):
        return pairs
    rows = max(1, _BLOCK_BYTES // (8 * _WORDS * len(train_words)))
    for start in range(0, len(eval_words), rows):
        block = eval_words[start : start + rows, None, :] ^ train_words[None, :, :]
        distances = popcount(block).sum(axis=-1, dtype=np.int64)
        i, j = np.nonzero(distances <= max_distance)
        pairs += [(start + int(a), int(b), int(distances[a, b])) for a, b in zip(i, j)]
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))


def check_leakage(
    fingerprint: dict[str, Any],
    eval_patient_ids: Sequence[str],
    eval_hashes: Sequence[int | str] | None,
    max_distance: int = DUPLICATE_MAX_DISTANCE,
) -> LeakageReport:
    """Compare an evaluation split with a training fingerprint.

    Args:
        fingerprint: ``meta["training_data"]`` of a checkpoint (see :func:`fingerprint`).
        eval_patient_ids: patient id of each evaluation item.
        eval_hashes: :func:`cxrnet.data.splits.image_hash` of each evaluation image (int or hex), in the same
            order; ``None`` to compare patients only.
        max_distance: largest Hamming distance (bits) that counts as a near-duplicate.

    Returns:
        A :class:`LeakageReport`; test ``report.leaked``.

    Raises:
        ValueError: on a fingerprint of another hash kind, or hashes that do not match the ids in number.
    """
    kind = fingerprint.get("hash", HASH_KIND)
    if kind != HASH_KIND:
        raise ValueError(f"training fingerprint uses hash {kind!r}; this cxrnet compares {HASH_KIND!r}")
    train_patients = {str(p) for p in fingerprint.get("patient_ids", [])}
    train_hashes = list(fingerprint.get("image_hashes", []))
    shared = sorted(train_patients & {str(p) for p in eval_patient_ids})
    pairs: list[tuple[int, int, int]] = []
    if eval_hashes is not None:
        if len(eval_hashes) != len(eval_patient_ids):
            raise ValueError(f"{len(eval_patient_ids)} evaluation patient ids but {len(eval_hashes)} hashes")
        pairs = _near_pairs(
            hash_words(eval_hashes, _HASH_BITS), hash_words(train_hashes, _HASH_BITS), max_distance
        )
    return LeakageReport(
        shared_patients=shared,
        near_duplicates=pairs,
        n_eval=len(eval_patient_ids),
        n_train_images=len(train_hashes),
        n_train_patients=len(train_patients),
        max_distance=max_distance,
        images_checked=eval_hashes is not None and bool(train_hashes),
    )


# ------------------------------------------------------------------------------- guarding an evaluation

NOT_CHECKED = (
    "Leakage could not be checked: the checkpoint does not record its training data (meta['training_data']). "
    "Make sure this split shares no patients or images with the training split."
)


def item_hash(item: RawItem | Record) -> int:
    """:func:`~cxrnet.data.splits.image_hash` of an item's full-size image (a :class:`Record`'s file is read)."""
    if isinstance(item, RawItem):
        return image_hash(item.image)
    if item.pixels is not None:  # pixels from a dataset object (data=xrv), not from item.path
        from cxrnet.data.items import read_item

        return image_hash(read_item(item, with_hash=False).image)
    from cxrnet.data.images import read_image

    return image_hash(read_image(item.path))


class _HashedItems:
    """A map-style dataset of each item's hash as hex (so DataLoader workers can share the reading)."""

    def __init__(self, items: Sequence[RawItem | Record], hash_item: Callable[[Any], int]) -> None:
        self.items, self.hash_item = items, hash_item

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> str:
        return hash_to_hex(self.hash_item(self.items[index]))


def item_path(item: RawItem | Record) -> str:
    """The file (or phantom URI) of a dataset item, for messages."""
    return item.path if isinstance(item, Record) else str(item.meta.get("path", "<in-memory item>"))


def guard_split(
    training_data: dict[str, Any] | None,
    dataset: Any,
    *,
    allow: bool = False,
    max_distance: int = DUPLICATE_MAX_DISTANCE,
    num_workers: int = 0,
    name: str = "the evaluation split",
    hash_item: Callable[[Any], int] = item_hash,
) -> LeakageReport | None:
    """Compare a dataset split with a checkpoint's training data; refuse an overlap unless ``allow``.

    Patients are compared first, without reading any pixels, so a split of shared patients is refused at once;
    otherwise (or with ``allow``, to record everything) every image is read and hashed in ``num_workers``
    processes and compared with the training hashes.

    Args:
        training_data: ``meta["training_data"]`` of the checkpoint, or ``None``.
        dataset: a :class:`cxrnet.data.dataset.CXRDataset` (only its ``items`` are used).
        allow: log the overlap instead of raising.
        max_distance: near-duplicate threshold in bits.
        num_workers: data-loading processes for hashing.
        name: how messages name the split, e.g. ``"the test split of data=covidx"``.
        hash_item: image hash of one item; the default reads the full-size image (never the letterboxed,
            possibly cached, model input, whose padding changes the hash).

    Returns:
        The report, or ``None`` when there is no training data to compare with (a warning is logged).

    Raises:
        LeakageError: on shared patients or near-duplicate images without ``allow``; the message names a few
            and the override ``allow_leakage=true``.
    """
    from torch.utils.data import DataLoader

    if not training_data:
        log.warning(NOT_CHECKED)
        return None
    patients = [patient_and_source(item)[0] for item in dataset.items]
    paths = [item_path(item) for item in dataset.items]
    report = check_leakage(training_data, patients, None, max_distance)
    if allow or not report.shared_patients:  # hashing reads every image: skip it when refusing anyway
        hashed = _HashedItems(dataset.items, hash_item)
        loader = DataLoader(hashed, batch_size=32, num_workers=num_workers, collate_fn=list)
        hashes = [h for batch in loader for h in batch]
        report = check_leakage(training_data, patients, hashes, max_distance)
    if report.leaked and not allow:
        raise LeakageError(
            f"{name} overlaps the training data of the checkpoint: {report.describe(paths)}. Metrics on it "
            "would be optimistic. Evaluate on data the model has not seen, or pass allow_leakage=true to "
            "evaluate anyway (the overlap is then recorded in metrics.json and the report)."
        )
    if report.leaked:
        log.warning("allow_leakage=true, evaluating despite overlap: %s", report.describe(paths))
    else:
        log.info("leakage check passed: %s", report.describe())
    return report
