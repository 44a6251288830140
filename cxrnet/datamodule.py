"""``CXRDataModule``: datasets, splits and loaders for training, validation and test.

``name`` chooses the dataset (``synthetic`` or a reader of :mod:`cxrnet.data.sources`); several sources can be
mixed with ``sources``, each contributing the labels and masks it has. The Lightning-free work (reading,
checking, de-duplicating and splitting) is :func:`cxrnet.data.build.build_splits`; this module wires it to
datasets, the cache and loaders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from cxrnet.data.build import ON_ERROR, DataBuild, build_splits, source_specs
from cxrnet.data.cache import DataCache
from cxrnet.data.dataset import CXRDataset, Item, collate
from cxrnet.data.io import read_image
from cxrnet.data.records import RawItem
from cxrnet.data.report import DataReport
from cxrnet.data.sources._common import check_choice
from cxrnet.data.splits import DEFAULT_FRACTIONS, DUPLICATE_MAX_DISTANCE, image_hash
from cxrnet.data.transforms import Preprocessing, build_augmentation

SPLITS = ("train", "val", "test")

log = logging.getLogger(__name__)


class CXRDataModule(pl.LightningDataModule):
    """Chest X-ray data for :class:`~cxrnet.module.CXRNetModule`.

    Args:
        name: dataset name (``synthetic``, ``covidx``, ``qata``, ``covid_qu_ex``, ``cohen``, ``montgomery``,
            ``shenzhen``, ``folder``); with ``sources``, just the run's label (e.g. ``mixed``).
        root: dataset folder in its native layout (not used by ``synthetic``); with ``sources``, the folder
            that relative source roots are taken under.
        classes: class names, in the model's logit order.
        image_size: square training size in pixels (divisible by 32).
        batch_size: per-device batch size.
        num_workers: data-loading worker processes per device (also threads of the one-time scan).
        options: reader options (for ``synthetic``: ``n_train``, ``n_val``, ``n_test``, ``difficulty``,
            ``label_only_fraction``, ``mask_only_fraction``; for the others see their reader's ``read``).
        severity_targets: names of the severity scores put in each sample, in order.
        augment: augmentation preset for training (``none``, ``light``, ``default``).
        balanced_sampling: draw training items with probability inversely proportional to their class
            frequency (works under DDP: Lightning shards the sampler per rank).
        mean, std: normalisation of the [0, 1] image.
        seed: seed of the synthetic data, of the patient-level split and of balanced sampling.
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
        label_map: raw label → class for ``name`` (``null`` drops a label); ``None`` keeps the reader's default.
        on_unknown_label: ``"error"`` (a raw label without mapping, or a class not in ``classes``, stops with a
            message naming it and the file) or ``"exclude"`` (such items are left out and listed in ``report``).
        split_fractions: split → share of images; default train 0.7, val 0.15, test 0.15. Official splits are
            kept; when they leave a split empty, everything is split by these fractions (with a warning).
        cache_dir: folder of the one-time cache of letterboxed items (:mod:`cxrnet.data.cache`); ``None``
            decodes the full-size files at every epoch.
        on_error: ``"error"``: an unreadable or missing file stops with a message naming it and the reason;
            ``"skip"``: every item is read once at setup (filling the cache when there is one), unreadable
            ones are dropped and listed in ``report``.
        sources: several datasets in one run, each a mapping with ``name``, ``root`` and optionally
            ``options``, ``label_map``, ``on_unknown_label``, ``use_labels``, ``use_masks``, ``use_severity``
            (see :class:`cxrnet.data.build.SourceSpec`); ``None`` reads ``name`` at ``root``.
        duplicate_max_distance: images whose perceptual hashes differ in at most this many bits (of 256) are
            near-duplicates and their patients share a split; ``None`` turns detection off (then, without
            a cache and with ``on_error="error"``, no image is read at setup).

    Attributes:
        report: :class:`~cxrnet.data.report.DataReport` after ``setup`` (counts per split × class, excluded
            and skipped items, merged duplicates), logged at setup; ``None`` before.
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
        label_map: Mapping[str, str | None] | None = None,
        on_unknown_label: str = "error",
        split_fractions: Mapping[str, float] | None = None,
        cache_dir: str | None = None,
        on_error: str = "error",
        sources: Sequence[Mapping[str, Any]] | None = None,
        duplicate_max_distance: int | None = DUPLICATE_MAX_DISTANCE,
    ) -> None:
        super().__init__()
        if image_size % 32:
            raise ValueError(
                f"data.image_size={image_size} must be divisible by 32 (e.g. {round(image_size / 32) * 32})"
            )
        check_choice("data.on_error", on_error, ON_ERROR)
        check_choice("data.on_unknown_label", on_unknown_label, ("error", "exclude"))
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
        self.label_map = None if label_map is None else dict(label_map)
        self.on_unknown_label = on_unknown_label
        self.split_fractions = dict(DEFAULT_FRACTIONS if split_fractions is None else split_fractions)
        self.cache_dir = cache_dir
        self.on_error = on_error
        self.duplicate_max_distance = duplicate_max_distance
        self.datasets: dict[str, CXRDataset] = {}
        self.report: DataReport | None = None
        self.cache = DataCache(cache_dir, image_size) if cache_dir else None
        self.specs = (
            []
            if name == "synthetic" and not sources
            else source_specs(name, root, self.options, self.label_map, sources)
        )
        self._build: DataBuild | None = None
        build_augmentation(augment)  # an unknown preset fails here, before any data is read

    def _run_build(self) -> DataBuild:
        if self._build is None:
            self._build = build_splits(
                self.specs,
                self.classes,
                fractions=self.split_fractions,
                seed=self.seed,
                on_unknown_label=self.on_unknown_label,
                on_error=self.on_error,
                cache=self.cache,
                duplicate_max_distance=self.duplicate_max_distance,
                workers=self.num_workers,
            )
        return self._build

    def prepare_data(self) -> None:
        """Fill the cache once per node (Lightning calls this on local rank 0 only, before ``setup``)."""
        if self.specs and self.cache is not None:
            self._run_build()

    def split_items(self) -> dict[str, list[Item]]:
        """Items of each split (no pixels are decoded for datasets on disk unless a scan is needed)."""
        if not self.specs:
            from cxrnet.data.synthetic import synthetic_splits

            items: dict[str, list[Item]] = synthetic_splits(
                size=self.preprocessing.image_size, seed=self.seed, classes=self.classes, **self.options
            )
            self.report = DataReport.from_splits("synthetic", items)
            return items
        build = self._run_build()
        self.report = build.report
        return {name: list(records) for name, records in build.splits.items()}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        items = self.split_items()
        loader = self.cache.load_item if self.cache is not None else None
        for split in SPLITS:
            self.datasets[split] = CXRDataset(
                items.get(split, []),
                self.classes,
                self.preprocessing,
                self.severity_targets,
                transform=build_augmentation(self.augment) if split == "train" else None,
                loader=loader,
            )
        if self.report is not None:
            log.info("data:\n%s", self.report.summary())

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
            sampler = ClassBalancedSampler(
                class_balanced_weights(self.datasets["train"].labels), seed=self.seed
            )
        return self._loader("train", shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def training_fingerprint(self) -> dict[str, Any]:
        """What the model was trained on, for the leakage guard stored in checkpoints (:mod:`cxrnet.leakage`).

        Returns:
            ``{"patient_ids", "image_hashes", "hash", "source", "n_items"}``: the sorted distinct patient ids of
            the train split (as the datasets spell them), the :func:`~cxrnet.data.splits.image_hash` of every
            training image (full size, not letterboxed) as 64 hex digits in item order, the hash kind
            (``"phash-256"``), the sorted dataset names of the training items and their number. Hashes come
            from the setup scan or the cache when available; otherwise each image is read once.
        """
        if not self.datasets:
            self.setup("fit")
        known = self._build.hashes if self._build is not None else {}
        items = self.datasets["train"].items
        hashes, patients, sources = [], set(), set()
        for item in items:
            if isinstance(item, RawItem):
                value = image_hash(item.image)
                patients.add(str(item.meta.get("patient_id", item.meta.get("path", ""))))
                sources.add(str(item.meta.get("source", self.name)))
            else:
                if item.path in known:
                    value = known[item.path]
                elif self.cache is not None:
                    value = self.cache.info(item).hash
                else:
                    value = image_hash(read_image(item.path))
                patients.add(item.patient_id)
                sources.add(item.source)
            hashes.append(f"{value:064x}")
        return {
            "patient_ids": sorted(patients),
            "image_hashes": hashes,
            "hash": "phash-256",  # cxrnet.leakage.HASH_KIND: cxrnet.data.splits.image_hash, 256 bits
            "source": sorted(sources),
            "n_items": len(items),
        }


class ClassBalancedSampler(Sampler[int]):
    """Draws ``len(weights)`` indices with replacement, with probability ∝ ``weights``, reproducibly per epoch.

    The draw of epoch ``e`` depends only on ``(seed, e)``: under DDP every rank makes the same draw, and
    Lightning's ``DistributedSamplerWrapper`` (which forwards ``set_epoch``) gives each rank its own share of
    it. Iterated without ``set_epoch`` (outside Lightning), each pass makes a new draw.

    Args:
        weights: one non-negative weight per item (see :func:`class_balanced_weights`).
        num_samples: indices per epoch; defaults to ``len(weights)``.
        seed: base seed.
    """

    def __init__(self, weights: torch.Tensor, num_samples: int | None = None, seed: int = 0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = len(self.weights) if num_samples is None else int(num_samples)
        self.seed = int(seed)
        self.epoch: int | None = None
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch if self.epoch is not None else self._passes
        self._passes += 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        return iter(drawn.tolist())


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
