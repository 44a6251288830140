"""The data loader on full-size radiographs: ``CXRDataModule``, ``folder`` layout, uncached and cached.

The files are phantoms upscaled to full size with detector noise (so that they do not compress to nothing),
as 16-bit grayscale PNG or 8-bit JPEG, each with 8-bit lung and infection mask PNGs, listed in a
``manifest.csv``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cxrnet.datamodule import CXRDataModule

from _rounds import Arm, Target, interleave, ratio
from _sections import Context
from data_loading import write_dataset

FORMATS = {"png16": ".png", "jpeg8": ".jpg"}
"""Image formats written: 16-bit grayscale PNG, 8-bit JPEG (quality 95)."""


def write_folder(root: Path, n: int, full_size: int, image_format: str, seed: int = 0) -> Path:
    """``n`` phantoms upscaled to ``full_size``² as ``image_format`` with mask PNGs and a manifest: the files
    of ``data_loading.py`` (:func:`data_loading.write_dataset`)."""
    return write_dataset(root, n, full_size, FORMATS[image_format], seed)


def folder_datamodule(root: Path, data: DictConfig, workers: int, cache_dir: Path | None) -> CXRDataModule:
    """The ``folder`` data module at the training config's size, batch, augmentation and normalisation.

    Everything is the train split; near-duplicate detection is off (it runs once at the scan, not per epoch).
    """
    return CXRDataModule(
        name="folder",
        root=str(root),
        classes=list(data.classes),
        image_size=int(data.image_size),
        batch_size=int(data.batch_size),
        num_workers=workers,
        severity_targets=[],
        augment=str(data.augment),
        mean=float(data.mean),
        std=float(data.std),
        split_fractions={"train": 1.0},
        cache_dir=str(cache_dir) if cache_dir else None,
        duplicate_max_distance=None,
    )


class LoaderEpochs:
    """Items/s of a data module's train loader over whole epochs (the loader, and its workers, are kept).

    Args:
        datamodule: set up here; with ``cache_dir`` the cache must be filled already (or is filled now,
            untimed).
        epochs: epochs per measurement (more for a fast, cached loader, so a measurement is not too short).
    """

    def __init__(self, datamodule: CXRDataModule, epochs: int = 1) -> None:
        datamodule.prepare_data()
        datamodule.setup("fit")
        self.loader = datamodule.train_dataloader()
        self.epochs = epochs

    def items_per_second(self) -> float:
        start, items = time.perf_counter(), 0
        for _ in range(self.epochs):
            for batch in self.loader:
                items += len(batch["image"])
        return items / (time.perf_counter() - start)


def cache_fill_rate(datamodule: CXRDataModule) -> dict[str, Any]:
    """Items/s of the one-time cache fill (``prepare_data``: decode, letterbox and write every item)."""
    start = time.perf_counter()
    datamodule.prepare_data()
    seconds = time.perf_counter() - start
    n = len(datamodule.split_items()["train"])
    return {"items": n, "seconds": round(seconds, 3), "items_per_s": round(n / seconds, 2)}


def p3_loader(ctx: Context) -> dict[str, Any]:
    """P3: loader items/s (uncached in two formats, cached; 0 and n workers) / training items/s."""
    setup, sizes = ctx.quickstart(), ctx.sizes
    data = setup.cfg.data
    roots = {
        fmt: write_folder(ctx.tmp / f"p3-{fmt}", sizes.loader_items, sizes.full_size, fmt)
        for fmt in ("png16", "jpeg8")
    }
    cache = ctx.tmp / "p3-cache"
    fill = cache_fill_rate(folder_datamodule(roots["png16"], data, 0, cache))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = sorted({0, min(4, usable)})
    arms: dict[str, Arm] = {}
    for fmt, root in roots.items():
        for w in workers:
            epochs = LoaderEpochs(folder_datamodule(root, data, w, None))
            arms[f"uncached_{fmt}_workers{w}"] = Arm("items/s", epochs.items_per_second)
    for w in workers:
        epochs = LoaderEpochs(folder_datamodule(roots["png16"], data, w, cache), sizes.cached_epochs)
        arms[f"cached_workers{w}"] = Arm("items/s", epochs.items_per_second)
    loaders = list(arms)
    for precision in ctx.precisions:
        loop = ctx.bare(setup, precision)
        arms[f"model/{precision}"] = Arm(
            "items/s",
            lambda loop=loop: setup.batch_size / loop.seconds_per_step(sizes.warmup_steps, sizes.steps),
        )
    values = interleave(arms, sizes.loader_rounds)
    units = {name: arm.unit for name, arm in arms.items()}
    ratios: dict[str, Any] = {}
    for precision in ctx.precisions:
        for name in loaders:
            target = (
                Target(">=", 5.0 if name.startswith("cached") else 1.0) if precision == ctx.default else None
            )
            ratios[f"{name}_over_model/{precision}"] = ratio(
                values,
                units,
                name,
                f"model/{precision}",
                target,
                f"loader items/s / training items/s at {precision}: above 1 the loader keeps up",
            )
    return {
        "model": setup.describe(),
        "dataset": {
            "items": sizes.loader_items,
            "full_size": sizes.full_size,
            "formats": {"png16": "16-bit grayscale PNG", "jpeg8": "8-bit JPEG, quality 95"},
            "masks": "two 8-bit PNG masks per item (lung, infection), full size",
            "augment": str(data.augment),
            "megabytes": {
                fmt: round(sum(p.stat().st_size for p in root.iterdir()) / 2**20, 1)
                for fmt, root in roots.items()
            },
        },
        "cache_fill": fill,
        "protocol": {
            "rounds": sizes.loader_rounds,
            "uncached_epochs_per_round": 1,
            "cached_epochs_per_round": sizes.cached_epochs,
        },
        "ratios": ratios,
    }
