"""``CXRDataModule``: datasets, splits and loaders for training, validation and test.

``name`` chooses the dataset (``synthetic`` or a reader of :mod:`cxrnet.data.sources`); several sources can be
mixed with ``sources``, each contributing the labels it has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from cxrnet.data.dataset import CXRDataset, Item, collate
from cxrnet.data.transforms import Preprocessing, build_augmentation

SPLITS = ("train", "val", "test")


class CXRDataModule(pl.LightningDataModule):
    """Chest X-ray data for :class:`~cxrnet.module.CXRNetModule`.

    Args:
        name: dataset name (``synthetic``, ``covidx``, ``qata``, ``covid_qu_ex``, ``cohen``, ``montgomery``,
            ``shenzhen``, ``folder``).
        root: dataset folder in its native layout (not used by ``synthetic``).
        classes: class names, in the model's logit order.
        image_size: square training size in pixels (divisible by 32).
        batch_size: per-device batch size.
        num_workers: data-loading worker processes per device.
        options: reader options (for ``synthetic``: ``n_train``, ``n_val``, ``n_test``, ``difficulty``,
            ``label_only_fraction``, ``mask_only_fraction``).
        severity_targets: names of the severity scores put in each sample, in order.
        augment: augmentation preset for training (``none``, ``light``, ``default``).
        balanced_sampling: draw training items with probability inversely proportional to their class
            frequency (works under DDP: Lightning shards the sampler per rank).
        mean, std: normalisation of the [0, 1] image.
        seed: seed of the synthetic data and of the patient-level split.
    """

    def __init__(
        self,
        name: str = "synthetic",
        root: str | None = None,
        classes: Sequence[str] = ("normal", "bacterial", "viral", "covid19"),
        image_size: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        options: Mapping[str, Any] | None = None,
        severity_targets: Sequence[str] = (),
        augment: str = "default",
        balanced_sampling: bool = False,
        mean: float = 0.5,
        std: float = 0.25,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if image_size % 32:
            raise ValueError(f"data.image_size={image_size} must be divisible by 32 (e.g. {round(image_size / 32) * 32})")
        self.name = name
        self.root = root
        self.classes = list(classes)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.options = dict(options or {})
        self.severity_targets = list(severity_targets)
        self.augment = augment
        self.balanced_sampling = balanced_sampling
        self.preprocessing = Preprocessing(image_size=image_size, mean=mean, std=std)
        self.seed = seed
        self.pin_memory = pin_memory
        self.datasets: dict[str, CXRDataset] = {}
        build_augmentation(augment)  # an unknown preset fails here, before any data is read

    def split_items(self) -> dict[str, list[Item]]:
        """Items of each split (no pixels are decoded for datasets on disk)."""
        if self.name == "synthetic":
            from cxrnet.data.synthetic import synthetic_splits

            return synthetic_splits(
                size=self.preprocessing.image_size, seed=self.seed, classes=self.classes, **self.options
            )
        raise ValueError(f"unknown dataset {self.name!r}; valid: synthetic")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        items = self.split_items()
        for split in SPLITS:
            self.datasets[split] = CXRDataset(
                items[split],
                self.classes,
                self.preprocessing,
                self.severity_targets,
                transform=build_augmentation(self.augment) if split == "train" else None,
            )

    def _loader(self, split: str, *, shuffle: bool = False, sampler: Any = None) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=split == "train" and len(self.datasets[split]) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = None
        if self.balanced_sampling:
            sampler = WeightedRandomSampler(
                class_balanced_weights(self.datasets["train"].labels),
                num_samples=len(self.datasets["train"]),
                replacement=True,
                generator=torch.Generator().manual_seed(self.seed),
            )
        return self._loader("train", shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def class_balanced_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-item sampling weights ∝ 1 / class frequency; unlabelled items (-1) weigh like an average class."""
    labels_t = torch.as_tensor(labels)
    weights = torch.ones(len(labels_t), dtype=torch.double)
    labelled = labels_t[labels_t >= 0]
    if len(labelled) == 0:
        return weights
    counts = torch.bincount(labelled).double()
    present = counts > 0
    for c in torch.nonzero(present).flatten().tolist():
        weights[labels_t == c] = 1.0 / counts[c]
    weights[labels_t < 0] = 1.0 / counts[present].mean()
    return weights
