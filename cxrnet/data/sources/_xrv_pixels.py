"""The pixels of one item of a torchxrayvision dataset (:class:`XrvPixels`), for :mod:`cxrnet.data.sources.xrv`.

:func:`cxrnet.data.items.read_item` calls :meth:`XrvPixels.read` for a record whose ``pixels`` it is: the item
``dataset[index]`` as xrv loads it (its ``transform`` applied to image and masks alike), converted to cxrnet's
conventions: image ``from_xrv`` to [0, 1], masks thresholded at 0.5 and unioned.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cxrnet.data.arrays import from_xrv
from cxrnet.data.sources._common import label_key

__all__ = ["Shared", "XrvPixels"]


@dataclass(frozen=True, eq=False)
class Shared:
    """What the records of one dataset share: the dataset and which of its masks count."""

    dataset: Any
    lung_names: frozenset[str]
    infection_indices: frozenset[int]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def mask_names(self, sample: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Names of the lung and infection masks an item (``dataset[i]``) has."""
        lung = [str(k) for k in (sample.get("semantic_masks") or {}) if label_key(str(k)) in self.lung_names]
        pathologies = self.dataset.pathologies
        infection = [
            str(pathologies[int(k)])
            for k in (sample.get("pathology_masks") or {})
            if int(k) in self.infection_indices
        ]
        return lung, infection


@dataclass(frozen=True)
class XrvPixels:
    """The pixels of item ``index`` of an xrv dataset (a :class:`~cxrnet.data.records.PixelSource`).

    Attributes:
        shared: the dataset and the masks that count.
        index: the item's index in the dataset.
        has_file: whether the record's ``path`` is the item's file (whose size and time the cache key holds).
    """

    shared: Shared
    index: int
    has_file: bool

    def read(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``dataset[index]`` as float32 HxW in [0, 1] with bool HxW lung and infection masks (or ``None``)."""
        sample = self.shared.dataset[self.index]
        image = from_xrv(sample["img"], name=f"item {self.index}")
        semantic = sample.get("semantic_masks") or {}
        pathology = sample.get("pathology_masks") or {}
        lung = _union([m for k, m in semantic.items() if label_key(str(k)) in self.shared.lung_names])
        infection = _union([m for k, m in pathology.items() if int(k) in self.shared.infection_indices])
        return image, lung, infection

    def cache_key(self) -> list[Any]:
        """The dataset class, the index, what its transforms do and which masks count; for an item without a
        file (an in-memory dataset), a token of this dataset object too, so its entries are never reused."""
        dataset = self.shared.dataset
        key: list[Any] = [
            f"{type(dataset).__module__}.{type(dataset).__qualname__}",
            self.index,
            _describe(getattr(dataset, "transform", None)),
            _describe(getattr(dataset, "data_aug", None)),
            sorted(self.shared.lung_names),
            sorted(self.shared.infection_indices),
        ]
        return key if self.has_file else [*key, self.shared.token]


def _union(masks: list[Any]) -> np.ndarray | None:
    """The union of 1xHxW (or HxW) masks as bool HxW; ``None`` for no mask."""
    if not masks:
        return None
    arrays = []
    for mask in masks:
        array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        while array.ndim > 2 and array.shape[0] == 1:
            array = array[0]
        arrays.append(array > 0.5)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"the item's masks differ in size: {sorted(shapes)}")
    return np.logical_or.reduce(arrays)


def _describe(transform: Any) -> Any:
    """A run-independent description of a transform (class names and simple settings; no addresses)."""
    if transform is None:
        return None
    parts = getattr(transform, "transforms", None)
    if isinstance(parts, (list, tuple)):
        return [type(transform).__qualname__, [_describe(t) for t in parts]]
    settings = {
        k: v
        for k, v in sorted(getattr(transform, "__dict__", {}).items())
        if isinstance(v, (int, float, str, bool))
    }
    return [type(transform).__qualname__, settings]
