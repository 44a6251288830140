"""Shenzhen tuberculosis chest X-ray set: PNG images, lung masks for most of them.

Layout::

    <root>/CXR_png/CHNCXR_0001_0.png
    <root>/mask/CHNCXR_0001_0_mask.png          (present for most, not all, images)

The file name ends in ``_0`` (normal) or ``_1`` (tuberculosis); the part before it is the patient id.
Images without a mask file get no lung mask; their count is reported in the notes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cxrnet.data.sources._common import LabelMapper, SourceResult, as_root, read_suffix_labelled

SOURCE = "shenzhen"

DEFAULT_LABEL_MAP: dict[str, str | None] = {"0": "normal", "1": "tuberculosis"}
"""File-name suffix → canonical class."""

LAYOUT = "  <root>/CXR_png/*.png, <root>/mask/<stem>_mask.png"


def read(
    root: str | os.PathLike[str],
    *,
    label_map: Mapping[str, str | None] | None = None,
    on_unknown_label: str = "error",
    mask_dir: str = "mask",
) -> SourceResult:
    """Read the Shenzhen set.

    Args:
        root: folder holding ``CXR_png`` and the mask folder.
        label_map: file-name suffix (``"0"``, ``"1"``) → canonical class; defaults to :data:`DEFAULT_LABEL_MAP`.
        on_unknown_label: ``"error"`` or ``"exclude"`` for suffixes missing from the map.
        mask_dir: mask folder relative to ``root``.

    Returns:
        Records with a lung mask where the mask file exists; no official split.

    Raises:
        FileNotFoundError: ``CXR_png`` is missing or empty.
    """
    root = as_root(root)
    mapper = LabelMapper(SOURCE, DEFAULT_LABEL_MAP if label_map is None else label_map, on_unknown_label)

    def lung_masks(path: Path) -> tuple[Path, ...] | None:
        mask = root / mask_dir / f"{path.stem}_mask.png"
        return (mask,) if mask.is_file() else None

    result, unmasked = read_suffix_labelled(root, SOURCE, LAYOUT, mapper, lung_masks)
    if unmasked:
        result.notes.append(f"{unmasked} images have no lung mask in {root / mask_dir}")
    return result
