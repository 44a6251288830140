"""``CXRDataset``: items (in-memory phantoms or records on disk) → the torch ``Sample`` of the data contract.

Sample keys (every key always present, so batches mixing sources collate):

- ``image``: float32 1×H×W, normalised as the model expects
- ``lung_mask``, ``infection_mask``: float32 1×H×W in {0, 1}; zeros when absent
- ``label``: int64 class index; -1 when absent
- ``severity``: float32 K-vector of the configured severity targets; NaN where absent
- ``has_lung_mask``, ``has_infection_mask``, ``has_label``: bool
- ``meta``: dict with at least ``path``, ``patient_id`` and ``source``
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrnet.data.records import RawItem, Record
from cxrnet.data.transforms import Preprocessing, augment, letterbox, normalize, seed_augmentation

Item = RawItem | Record
Loader = Callable[[Record], RawItem]


class CXRDataset(Dataset):
    """Chest X-ray items as ``Sample`` dicts.

    Args:
        items: in-memory :class:`RawItem` s or :class:`Record` s read through ``loader`` when indexed.
        classes: class names; an item's label must be one of them (or ``None``).
        preprocessing: size and normalisation.
        severity_targets: names of the severity scores to put in ``severity``, in order.
        transform: albumentations pipeline applied after letterboxing (training only), or ``None``.
        loader: reads a :class:`Record` into a :class:`RawItem` (default: :func:`cxrnet.data.items.load_record`
            with ``target_size`` the training size: JPEGs decoded at reduced scale, other formats reduced
            right after decoding, as the cache reads them).

    Augmentation is reproducible once :meth:`set_epoch` has been called (the training callback
    :class:`cxrnet.callbacks.TrainingRandomState` does so every epoch): each sample is then augmented from its
    ``(seed, epoch, index)`` alone. Before that, the pipeline draws from its own, unseeded generators.
    """

    def __init__(
        self,
        items: Sequence[Item],
        classes: Sequence[str],
        preprocessing: Preprocessing,
        severity_targets: Sequence[str] = (),
        transform: Any = None,
        loader: Loader | None = None,
    ) -> None:
        self.items = list(items)
        self.classes = list(classes)
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        self.preprocessing = preprocessing
        self.severity_targets = list(severity_targets)
        self.transform = transform
        self._loader = loader
        # (seed, epoch) of the augmentation, in shared memory so that persistent DataLoader workers see each
        # new epoch; created by the first set_epoch, None until then.
        self._augmentation_state: torch.Tensor | None = None
        for item in self.items:
            self._check_label(item.label, _path_of(item))

    def _check_label(self, label: str | None, path: str) -> None:
        if label is not None and label not in self.class_index:
            raise ValueError(
                f"label {label!r} of {path} is not one of the configured classes {self.classes}; "
                "add it to data.classes or map it in data.label_map"
            )

    @property
    def labels(self) -> list[int]:
        """Class index of every item (-1 when unlabelled), without reading any pixels."""
        return [self.class_index[item.label] if item.label is not None else -1 for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        counts = {name: 0 for name in self.classes} | {"unlabelled": 0}
        for label in self.labels:
            counts[self.classes[label] if label >= 0 else "unlabelled"] += 1
        return f"{type(self).__name__}(n={len(self)}, classes={counts}, size={self.preprocessing.image_size})"

    @property
    def epoch(self) -> int | None:
        """The epoch set by :meth:`set_epoch`, or ``None`` before the first call."""
        return None if self._augmentation_state is None else int(self._augmentation_state[1])

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Augment every later sample from ``(seed, epoch, index)`` alone (see
        :func:`~cxrnet.data.transforms.seed_augmentation`).

        Call it in the main process before the epoch's DataLoader iterator is created; workers, persistent or
        not, read the shared value.
        """
        if self._augmentation_state is None:
            self._augmentation_state = torch.tensor([seed, epoch], dtype=torch.int64).share_memory_()
        else:
            self._augmentation_state.copy_(torch.tensor([seed, epoch], dtype=torch.int64))

    def load(self, index: int) -> RawItem:
        """The item's pixels at their own size, or reduced for the training size by the default loader."""
        item = self.items[index]
        if isinstance(item, RawItem):
            return item
        if self._loader is None:
            from cxrnet.data.items import load_record

            self._loader = partial(load_record, target_size=self.preprocessing.image_size)
        return self._loader(item)

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.load(index)
        size = self.preprocessing.image_size
        image = letterbox(raw.image, size)
        empty = np.zeros((size, size), dtype=bool)
        lung = letterbox(raw.lung_mask, size, is_mask=True) if raw.lung_mask is not None else empty
        infection = (
            letterbox(raw.infection_mask, size, is_mask=True) if raw.infection_mask is not None else empty
        )
        if self.transform is not None and self._augmentation_state is not None:
            seed, epoch = self._augmentation_state.tolist()
            seed_augmentation(self.transform, seed, epoch, index)
        image, (lung, infection) = augment(self.transform, image, [lung, infection])
        image = normalize(image, self.preprocessing)
        severity = [float(raw.severity.get(name, float("nan"))) for name in self.severity_targets]
        meta = {key: value for key, value in raw.meta.items() if not isinstance(value, np.ndarray)}
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            "lung_mask": torch.from_numpy(lung.astype(np.float32))[None],
            "infection_mask": torch.from_numpy(infection.astype(np.float32))[None],
            "label": torch.tensor(self.class_index[raw.label] if raw.label is not None else -1),
            "severity": torch.tensor(severity, dtype=torch.float32),
            "has_lung_mask": torch.tensor(raw.lung_mask is not None),
            "has_infection_mask": torch.tensor(raw.infection_mask is not None),
            "has_label": torch.tensor(raw.label is not None),
            "meta": meta,
        }


def _path_of(item: Item) -> str:
    return item.path if isinstance(item, Record) else str(item.meta.get("path", "<in-memory item>"))


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep ``meta`` as a list of dicts."""
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0] if key != "meta"}
    batch["meta"] = [s["meta"] for s in samples]
    return batch


def drop_labels(item: RawItem, *, label: bool = False, masks: bool = False) -> RawItem:
    """A copy of ``item`` without its class label and/or masks: builds partially labelled sets for tests/demos."""
    return RawItem(
        image=item.image,
        lung_mask=None if masks else item.lung_mask,
        infection_mask=None if masks else item.infection_mask,
        label=None if label else item.label,
        severity={} if masks else dict(item.severity),
        meta=dict(item.meta),
    )
