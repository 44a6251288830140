"""The built-in ``synthetic`` dataset: phantoms generated in memory, split by disjoint seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrnet.data.dataset import drop_labels
from cxrnet.data.phantoms import CLASSES, generate_phantoms
from cxrnet.data.records import RawItem


def synthetic_splits(
    n_train: int = 800,
    n_val: int = 160,
    n_test: int = 240,
    *,
    size: int = 256,
    difficulty: float = 0.5,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    label_only_fraction: float = 0.0,
    mask_only_fraction: float = 0.0,
) -> dict[str, list[RawItem]]:
    """Phantom train/val/test splits; seeds never overlap between splits (held-out test by construction).

    Args:
        n_train, n_val, n_test: items per split (class-balanced).
        size: phantom side in pixels (generate at the training size: no resizing needed).
        difficulty: 0 (easy) to 1 (hard), see :mod:`cxrnet.data.phantoms`.
        seed: base seed.
        classes: which phantom classes to generate.
        label_only_fraction: share of *training* items that keep only their class label (masks and severity
            dropped); demonstrates and tests partial labels.
        mask_only_fraction: share of training items that keep only their masks (label dropped).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.
    """
    if label_only_fraction + mask_only_fraction > 1:
        raise ValueError("label_only_fraction + mask_only_fraction must not exceed 1")
    common = {"seed": seed, "size": size, "difficulty": difficulty, "classes": classes}
    splits = {
        split: generate_phantoms(n, split=split, **common)
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test))
    }
    if label_only_fraction or mask_only_fraction:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(splits["train"]))
        n_label_only = round(label_only_fraction * len(order))
        n_mask_only = round(mask_only_fraction * len(order))
        train = list(splits["train"])
        for rank, index in enumerate(order[: n_label_only + n_mask_only]):
            train[index] = drop_labels(train[index], masks=rank < n_label_only, label=rank >= n_label_only)
        splits["train"] = train
    return splits
