"""One-time cache of decoded, letterboxed items, so that later epochs and runs decode no full-size file.

Items are read by :func:`cxrnet.data.items.read_item` at reduced scale for the training size (``target_size``:
JPEGs decoded at 1/2, 1/4 or 1/8 scale, other formats area-averaged right after decoding), exactly as the
uncached dataset reads them (:func:`cxrnet.data.items.load_record`), then letterboxed. Each item is stored
once per training size as an uncompressed ``.npz`` file::

    <cache_dir>/cxrnet-cache-v<VERSION>/<size>px/<key[:2]>/<key>.npz
        image           float32 size×size in [0, 1], letterboxed (cxrnet.data.transforms.letterbox)
        lung_mask       bit-packed bool size×size (absent when the item has none)
        infection_mask  bit-packed bool size×size (absent when the item has none)
        hash            pHash of the image as read (cxrnet.data.splits.image_hash), 64 hex digits
        shape           the full-size image's (H, W)
        issues          JSON list of non-fatal issues found while reading (e.g. a non-binary mask)

``key`` is a SHA-256 of the cache version, the reduced-read margin
(:data:`cxrnet.data.reduction.REDUCED_READ_MARGIN`), the training size and, for the image and every mask file,
its path, size and modification time (and, for a record whose pixels come from an object, what that object's
``cache_key`` says): a changed file, another reading rule or another ``image_size`` is a miss, and the entry
is rebuilt. Entries are written to a temporary file and moved into place with
:func:`os.replace`, so several DataLoader workers and DDP ranks may fill the same cache at once; a reader sees
a whole entry or none. :meth:`DataCache.fill` fills it in several processes (the scan of
:func:`cxrnet.data.build.build_splits` does, with ``data.num_workers``).

Because the stored arrays are already letterboxed to the training size, the dataset's own letterbox is the
identity on them (a square ``size``×``size`` array is resized to itself), and cached and uncached items give
identical tensors. Disk use is about ``4.3 * size**2`` bytes per item (280 kB at 256 px).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cxrnet.data import reduction
from cxrnet.data.findings import Issue
from cxrnet.data.items import ItemInfo, ItemReadError, raw_item, read_item
from cxrnet.data.records import RawItem, Record
from cxrnet.data.transforms import letterbox

__all__ = ["CACHE_VERSION", "DataCache"]

CACHE_VERSION = 3  # 2: image hashes from an area-averaged resize; 3: items read at reduced scale
"""Bump when the stored content changes (reading conventions, letterbox, hash): old entries become misses."""


def _stat(path: str) -> list[object]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, st.st_size, st.st_mtime_ns]


class DataCache:
    """Letterboxed items at one training size, stored under ``root`` (see the module docstring).

    Instances are cheap and picklable: DataLoader workers and DDP ranks each use their own.

    Args:
        root: cache folder (created when needed); several sizes and datasets can share it.
        image_size: the training size in pixels.
    """

    def __init__(self, root: str | os.PathLike[str], image_size: int) -> None:
        self.root = Path(root).expanduser().absolute()
        self.image_size = int(image_size)
        self.directory = self.root / f"cxrnet-cache-v{CACHE_VERSION}" / f"{self.image_size}px"

    def __repr__(self) -> str:
        return f"DataCache({str(self.root)!r}, image_size={self.image_size})"

    def key(self, record: Record) -> str:
        """Hex SHA-256 of the version, reading rule, size, and path/size/mtime of the image and mask files."""
        files = [record.path, *record.lung_mask, *([record.infection_mask] if record.infection_mask else [])]
        reading = [CACHE_VERSION, reduction.REDUCED_READ_MARGIN, self.image_size]
        payload = [*reading, len(record.lung_mask), [_stat(f) for f in files]]
        if record.pixels is not None:  # pixels from an object (an xrv dataset): it says what else counts
            payload.append(record.pixels.cache_key())
        return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()

    def path(self, record: Record) -> Path:
        """Where the record's entry lives (whether or not it exists yet)."""
        key = self.key(record)
        return self.directory / key[:2] / f"{key}.npz"

    def info(self, record: Record) -> ItemInfo:
        """The item's hash, full-size shape and issues; reads only those fields of an existing entry.

        Raises:
            ItemReadError: a miss, and the record's files cannot be read.
        """
        path = self.path(record)
        try:
            with np.load(path, allow_pickle=False) as entry:
                return _entry_info(entry)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return self._fill(record, path)[1]

    def fill(self, records: Sequence[Record], workers: int = 0) -> Iterator[ItemInfo | ItemReadError]:
        """:meth:`info` of every record, in order, filling the missing entries; in ``workers`` processes.

        Reading is CPU-bound, so the fill of a cold cache runs in a pool of processes when ``workers`` > 1,
        and in this process otherwise; the entries hold the same arrays either way.

        Args:
            records: the items.
            workers: processes to read in (``data.num_workers``); 0 or 1 reads here.

        Yields:
            The :class:`ItemInfo` of each record in turn, or the :class:`ItemReadError` that its files raise.
        """
        # Records with in-memory pixel sources are read here: a process pool would pickle the dataset object
        # they share once for every item.
        if workers <= 1 or len(records) <= 1 or any(record.pixels is not None for record in records):
            yield from map(self._info_or_error, records)
            return
        pool = ProcessPoolExecutor(min(int(workers), len(records)))
        try:
            yield from pool.map(self._info_or_error, records)
        finally:  # also when the caller stops early (on_error=error): drop what has not started
            pool.shutdown(wait=True, cancel_futures=True)

    def _info_or_error(self, record: Record) -> ItemInfo | ItemReadError:
        try:
            return self.info(record)
        except ItemReadError as exc:
            return exc

    def load_item(self, record: Record) -> RawItem:
        """The record as a :class:`RawItem` at the training size; fills the entry on a miss.

        This is the ``loader`` of :class:`~cxrnet.data.dataset.CXRDataset` for cached training.

        Raises:
            ItemReadError: a miss, and the record's files cannot be read.
        """
        return raw_item(record, *self._load_arrays(record))

    def _load_arrays(self, record: Record) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        path = self.path(record)
        try:
            with np.load(path, allow_pickle=False) as entry:
                size = self.image_size
                image = entry["image"]
                masks = [
                    np.unpackbits(entry[name], count=size * size).reshape(size, size).astype(bool)
                    if name in entry.files
                    else None
                    for name in ("lung_mask", "infection_mask")
                ]
                if image.shape != (size, size):
                    raise ValueError(f"cached image has shape {image.shape}")
                return image, masks[0], masks[1]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return self._fill(record, path)[0]

    def _fill(
        self, record: Record, path: Path
    ) -> tuple[tuple[np.ndarray, np.ndarray | None, np.ndarray | None], ItemInfo]:
        """Read the record reduced for the training size, letterbox it, write the entry atomically."""
        item = read_item(record, target_size=self.image_size)
        size = self.image_size
        image = letterbox(item.image, size)
        lung = letterbox(item.lung_mask, size, is_mask=True) if item.lung_mask is not None else None
        infection = (
            letterbox(item.infection_mask, size, is_mask=True) if item.infection_mask is not None else None
        )
        fields: dict[str, np.ndarray] = {
            "image": image,
            "hash": np.array(f"{item.info.hash:064x}"),
            "shape": np.array(item.info.shape, dtype=np.int64),
            "issues": np.array(json.dumps([asdict(issue) for issue in item.info.issues])),
        }
        if lung is not None:
            fields["lung_mask"] = np.packbits(lung.ravel())
        if infection is not None:
            fields["infection_mask"] = np.packbits(infection.ravel())
        _write_atomic(path, fields)
        return (image, lung, infection), item.info


def _entry_info(entry: np.lib.npyio.NpzFile) -> ItemInfo:
    issues = tuple(Issue(**fields) for fields in json.loads(str(entry["issues"])))
    return ItemInfo(int(str(entry["hash"]), 16), (int(entry["shape"][0]), int(entry["shape"][1])), issues)


def _write_atomic(path: Path, fields: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **fields)  # uncompressed: reading back is a memory copy, not a decode
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        temporary.write_bytes(buffer.getvalue())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
