"""``CXRDataModule``: datasets, splits and loaders for training, validation and test.

``name`` chooses the dataset (``synthetic`` or a reader of :mod:`cxrnet.data.sources`); several sources can be
mixed with ``sources``, each contributing the labels and masks it has. The Lightning-free work (reading,
checking, de-duplicating and splitting) is :func:`cxrnet.data.build.build_splits`; this module wires it to
datasets, the cache and loaders.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Sampler

from cxrnet.data.build import ON_ERROR, DataBuild, build_splits, check_options
from cxrnet.data.cache import DataCache
from cxrnet.data.dataset import CXRDataset, Item, collate
from cxrnet.data.findings import DataReport
from cxrnet.data.images import read_image
from cxrnet.data.items import read_item
from cxrnet.data.records import RawItem
from cxrnet.data.sources._common import check_choice
from cxrnet.data.split_config import split_arguments
from cxrnet.data.splits import (
    DEFAULT_FRACTIONS,
    DUPLICATE_MAX_DISTANCE,
    SPLIT_NAMES,
    check_folds,
    check_fractions,
    image_hash,
)
from cxrnet.data.transforms import Preprocessing, build_augmentation
from cxrnet.leakage import fingerprint_of_hashes

SPLITS = SPLIT_NAMES  # one list of split names, shared with the split checks

log = logging.getLogger(__name__)


class CXRDataModule(pl.LightningDataModule):
    """Chest X-ray data for :class:`~cxrnet.module.CXRNetModule`.

    Args:
        name: dataset name (``synthetic``, ``covidx``, ``qata``, ``covid_qu_ex``, ``cohen``, ``montgomery``,
            ``shenzhen``, ``folder``, ``xrv``); with ``sources``, just the run's label (e.g. ``mixed``).
        root: dataset folder in its native layout (not used by ``synthetic`` and ``xrv``); with ``sources``,
            the folder that relative source roots are taken under.
        classes: class names, in the model's logit order.
        image_size: square training size in pixels (divisible by 32).
        batch_size: per-device batch size.
        num_workers: data-loading worker processes per device (also threads of the one-time scan).
        options: reader options (for ``synthetic``: ``n_train``, ``n_val``, ``n_test``, ``difficulty``,
            ``label_only_fraction``, ``mask_only_fraction``; for the others see their reader's ``read``).
        severity_targets: names of the severity scores put in each sample, in order.
        augment: augmentation preset for training (``none``, ``light``, ``default``).
        balanced_sampling: draw training items with probability inversely proportional to their class
            frequency (works under DDP: Lightning shards the sampler per rank). ``"auto"`` (the data
            configs' default) switches it on when the largest class of the train split has more than
            :data:`IMBALANCE_RATIO` times the images of the smallest, as in every real CXR collection
            (Cohen: ~90 % COVID-19 among frontal films); the data summary says which was chosen and why.
        mean, std: normalisation of the [0, 1] image.
        seed: seed of the synthetic data, of the patient-level split and of balanced sampling.
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
        label_map: raw label → class for ``name`` (``null`` drops a label); ``None`` keeps the reader's default.
        on_unknown_label: ``"error"`` (a raw label without mapping, or a class not in ``classes``, stops with a
            message naming it and the file) or ``"exclude"`` (such items are left out and listed in ``report``).
        split_fractions: split → share of images; default train 0.7, val 0.15, test 0.15. Official splits are
            kept; when they leave a split empty, everything is split by these fractions (with a warning).
            Checked here, before any file is read: names among train/val/test, shares ≥ 0 summing to 1.
        folds: patient-level cross-validation: the patients are dealt into ``folds`` stratified folds, fold
            ``fold`` is the test split, and the others are split into train and val in the ratio of
            ``split_fractions`` (official splits are ignored). ``None``: no cross-validation.
        fold: which fold is the test split, ``0 <= fold < folds``.
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
        dataset: an in-memory dataset for a reader that wraps one (``name="xrv"``: any
            ``torchxrayvision.datasets`` Dataset, or its Hydra config with ``_target_``); given to the reader
            as its ``dataset`` option (:mod:`cxrnet.data.sources.xrv`).

    Attributes:
        report: :class:`~cxrnet.data.findings.DataReport` after ``setup`` (counts per split × class, excluded
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
        balanced_sampling: bool | str = "auto",
        mean: float = 0.5,
        std: float = 0.25,
        seed: int = 0,
        pin_memory: bool = False,
        label_map: Mapping[str, str | None] | None = None,
        on_unknown_label: str = "exclude",
        split_fractions: Mapping[str, float] | None = None,
        folds: int | None = None,
        fold: int = 0,
        cache_dir: str | None = None,
        on_error: str = "error",
        sources: Sequence[Mapping[str, Any]] | None = None,
        duplicate_max_distance: int | None = DUPLICATE_MAX_DISTANCE,
        dataset: Any = None,
    ) -> None:
        super().__init__()
        # Hydra passes what the command line says (data.batch_size=abc is the string "abc"): check the numbers
        # here, naming the option, before they reach a DataLoader or a resize with a message that names none.
        image_size = whole_number("data.image_size", image_size, minimum=32, example=256)
        if image_size % 32:
            raise ValueError(
                f"data.image_size={image_size} must be divisible by 32 (e.g. {round(image_size / 32) * 32})"
            )
        batch_size = whole_number("data.batch_size", batch_size, minimum=1, example=16)
        num_workers = whole_number("data.num_workers", num_workers, minimum=0, example=4)
        seed = whole_number("data.seed", seed, minimum=0, example=42)
        mean = real_number("data.mean", mean, example=0.5)
        std = real_number("data.std", std, example=0.25, positive=True)
        check_choice("data.on_error", on_error, ON_ERROR)
        check_choice("data.on_unknown_label", on_unknown_label, ("error", "exclude"))
        if balanced_sampling not in (True, False, "auto"):
            raise ValueError(
                f"data.balanced_sampling={balanced_sampling!r} is not valid; choose true, false or auto"
            )
        check_fractions(split_fractions)
        check_folds(folds, fold)
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
        self.folds = folds
        self.fold = fold
        self.cache_dir = cache_dir
        self.on_error = on_error
        self.duplicate_max_distance = duplicate_max_distance
        self.datasets: dict[str, CXRDataset] = {}
        self.report: DataReport | None = None
        self.cache = DataCache(cache_dir, image_size) if cache_dir else None
        if name == "synthetic" and not sources:
            from cxrnet.data.synthetic import synthetic_splits

            check_options(
                "synthetic", self.options, synthetic_splits, set_by_data=("size", "seed", "classes")
            )
            self._split_arguments: dict[str, Any] = {}
        else:
            self._split_arguments = split_arguments(
                {
                    "name": name,
                    "root": root,
                    "classes": self.classes,
                    "options": self.options,
                    "label_map": self.label_map,
                    "sources": sources,
                    "split_fractions": self.split_fractions,
                    "folds": folds,
                    "fold": fold,
                    "seed": seed,
                    "on_unknown_label": on_unknown_label,
                    "on_error": on_error,
                    "duplicate_max_distance": duplicate_max_distance,
                    "num_workers": num_workers,
                    "dataset": dataset,
                },
                self.cache,
            )
        self.specs = self._split_arguments.get("specs", [])
        self._build: DataBuild | None = None
        build_augmentation(augment)  # an unknown preset fails here, before any data is read

    def _run_build(self) -> DataBuild:
        if self._build is None:
            self._build = build_splits(**self._split_arguments)
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
        self.use_balanced_sampling, reason = decide_balanced_sampling(
            self.balanced_sampling, self.datasets["train"].labels, self.classes
        )
        if self.report is not None:
            self.report.notes.append(reason)
        for split in SPLITS:
            warning = one_class_warning(split, self.datasets[split].labels, self.classes)
            if warning is not None:
                log.warning("data: %s", warning)
                if self.report is not None:
                    self.report.notes.append(f"WARNING: {warning}")
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
        if not self.datasets:
            self.setup("fit")
        if self.use_balanced_sampling:
            sampler = ClassBalancedSampler(
                class_balanced_weights(self.datasets["train"].labels),
                seed=self.seed,
                epoch_source=self.datasets["train"],
            )
        return self._loader("train", shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", sampler=self._evaluation_sampler("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", sampler=self._evaluation_sampler("test"))

    def _evaluation_sampler(self, split: str) -> Sampler[int] | None:
        """Under several processes, a sampler giving each item of ``split`` to exactly one rank; else ``None``.

        Lightning's own DistributedSampler pads a split whose size the world size does not divide by repeating
        items, and the synchronised metrics then count those twice (15 test images on 2 ranks were scored as
        16). This one leaves the ranks one item apart instead, which evaluation allows: DDP synchronises
        buffers on the first evaluation batch only, and metrics and logged losses are reduced once per epoch.

        Raises:
            ValueError: the split has fewer items than there are processes (a rank without any batch would
                wait forever for the others at the end of the epoch).
        """
        trainer = self.trainer
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        dataset = self.datasets[split]
        if not kwargs or int(kwargs.get("num_replicas", 1)) <= 1 or len(dataset) == 0:
            return None
        world = int(kwargs["num_replicas"])
        if len(dataset) < world:
            raise ValueError(
                f"the {split} split has {len(dataset)} images, fewer than the {world} processes "
                "(trainer.devices x trainer.num_nodes); each process needs at least one to score every image "
                f"exactly once. Give the {split} split more images (data.split_fractions) or use one process "
                "(trainer=cpu)"
            )
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=world, rank=int(kwargs["rank"]), shuffle=False
        )

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
                elif item.pixels is not None:  # pixels from a dataset object, not from item.path
                    value = read_item(item).info.hash
                else:
                    value = image_hash(read_image(item.path))
                patients.add(item.patient_id)
                sources.add(item.source)
            hashes.append(value)
        return fingerprint_of_hashes(patients, hashes, sources=sources)


def whole_number(option: str, value: Any, minimum: int, example: int) -> int:
    """``value`` as an ``int``, or a ``ValueError`` naming ``option`` and an example of a valid setting.

    Accepts ints and integral floats (``16.0``); refuses booleans, strings and numbers below ``minimum``.
    """
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer()
    if not valid or value < minimum:
        raise ValueError(
            f"{option}={value!r} is not valid: it must be a whole number >= {minimum} (e.g. {option}={example})"
        )
    return int(value)


def real_number(option: str, value: Any, example: float, positive: bool = False) -> float:
    """``value`` as a finite ``float`` (``> 0`` when ``positive``), or a ``ValueError`` naming ``option``."""
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or (positive and value <= 0):
        kind = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"{option}={value!r} is not valid: it must be {kind} (e.g. {option}={example})")
    return float(value)


def one_class_warning(split: str, labels: Sequence[int], classes: Sequence[str]) -> str | None:
    """A sentence for the data summary when every labelled item of ``split`` has the same class, else ``None``.

    A classifier trained on one class always predicts it, and accuracy on a split of that class is then 1.0
    whatever the images show; ``cxrnet.train`` refuses such a train split unless ``allow_one_class`` is set.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        labels: class index of each item of the split (-1 when unlabelled).
        classes: class names.
    """
    counts = Counter(int(x) for x in labels if x >= 0)
    if len(counts) != 1:
        return None
    index, n = next(iter(counts.items()))
    consequence = (
        "a classifier trained on it always predicts that class, and its accuracy on images of that class is "
        "1.0 whatever they show"
        if split == "train"
        else "accuracy there only says how often that class is called, and AUROC and specificity are undefined"
    )
    return f"every labelled {split} image ({n}) is of one class, {classes[index]!r}: {consequence}"


IMBALANCE_RATIO = 3.0
"""``balanced_sampling="auto"`` turns balanced sampling on above this largest / smallest class ratio."""


def decide_balanced_sampling(
    setting: bool | str, labels: Sequence[int], classes: Sequence[str]
) -> tuple[bool, str]:
    """Whether to sample the train split class-balanced, and a sentence saying why (for the data summary).

    Args:
        setting: ``True``, ``False`` or ``"auto"`` (on when the largest class has more than
            :data:`IMBALANCE_RATIO` times the images of the smallest class present).
        labels: class index of each training item (-1 when unlabelled).
        classes: class names, for the sentence.
    """
    counts = torch.bincount(
        torch.as_tensor([x for x in labels if x >= 0], dtype=torch.long), minlength=len(classes)
    )
    present = {classes[c]: int(n) for c, n in enumerate(counts.tolist()) if n > 0}
    if len(present) < 2:
        return False, f"train classes {present}: balanced sampling off (fewer than two classes)"
    largest, smallest = max(present, key=present.get), min(present, key=present.get)
    ratio = present[largest] / present[smallest]
    absent = [c for c in classes if c not in present]
    facts = (
        f"train class imbalance {largest} {present[largest]} / {smallest} {present[smallest]} = {ratio:.1f}x"
    )
    if absent:
        facts += f"; no training images of {', '.join(absent)}"
    if setting == "auto":
        on = ratio > IMBALANCE_RATIO
        rule = f"{'>' if on else '<='} {IMBALANCE_RATIO:g}x"
        return (
            on,
            f"{facts} ({rule}): balanced sampling {'on' if on else 'off'} (data.balanced_sampling=auto)",
        )
    return bool(
        setting
    ), f"{facts}: balanced sampling {'on' if setting else 'off'} (set by data.balanced_sampling)"


class ClassBalancedSampler(Sampler[int]):
    """Draws ``len(weights)`` indices with replacement, with probability ∝ ``weights``, reproducibly per epoch.

    The draw of epoch ``e`` depends only on ``(seed, e)``: under DDP every rank makes the same draw, and
    Lightning's ``DistributedSamplerWrapper`` (which forwards ``set_epoch``) gives each rank its own share of
    it. Iterated without ``set_epoch`` (outside Lightning), each pass makes a new draw.

    Args:
        weights: one non-negative weight per item (see :func:`class_balanced_weights`).
        num_samples: indices per epoch; defaults to ``len(weights)``.
        seed: base seed.
        epoch_source: the dataset whose :attr:`~cxrnet.data.dataset.CXRDataset.epoch` to draw for until
            ``set_epoch`` is called (the datamodule passes its train dataset).
    """

    def __init__(
        self,
        weights: torch.Tensor,
        num_samples: int | None = None,
        seed: int = 0,
        epoch_source: CXRDataset | None = None,
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = len(self.weights) if num_samples is None else int(num_samples)
        self.seed = int(seed)
        self.epoch: int | None = None
        self.epoch_source = epoch_source
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        if epoch is None and self.epoch_source is not None:
            # A resumed fit creates its first iterator (and workers prefetch from it) before Lightning calls
            # set_epoch; the dataset's epoch is already restored then (cxrnet.callbacks.TrainingRandomState).
            epoch = self.epoch_source.epoch
        if epoch is None:
            epoch = self._passes
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
