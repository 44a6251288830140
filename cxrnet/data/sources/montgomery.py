"""Montgomery County tuberculosis chest X-ray set: PNG images with left and right lung masks.

Layout::

    <root>/CXR_png/MCUCXR_0001_0.png
    <root>/ManualMask/leftMask/MCUCXR_0001_0.png
    <root>/ManualMask/rightMask/MCUCXR_0001_0.png

The file name ends in ``_0`` (normal) or ``_1`` (tuberculosis); the part before it is the patient id (one
image per patient). The lung mask is the union of the two masks, listed as ``(leftMask, rightMask)``:
"left" and "right" are the patient's sides as the dataset names them. An image with only one of the two
masks gets no lung mask (half a lung field would be a wrong target) and is counted in the notes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cxrnet.data.sources._common import LabelMapper, SourceResult, as_root, read_suffix_labelled

SOURCE = "montgomery"

DEFAULT_LABEL_MAP: dict[str, str | None] = {"0": "normal", "1": "tuberculosis"}
"""File-name suffix → canonical class."""

LAYOUT = "  <root>/CXR_png/*.png, <root>/ManualMask/leftMask/*.png, <root>/ManualMask/rightMask/*.png"


def read(
    root: str | os.PathLike[str],
    *,
    label_map: Mapping[str, str | None] | None = None,
    on_unknown_label: str = "error",
) -> SourceResult:
    """Read the Montgomery set.

    Args:
        root: folder holding ``CXR_png`` and ``ManualMask``.
        label_map: file-name suffix (``"0"``, ``"1"``) → canonical class; defaults to :data:`DEFAULT_LABEL_MAP`.
        on_unknown_label: ``"error"`` or ``"exclude"`` for suffixes missing from the map.

    Returns:
        Records with both lung-mask files when present; no official split.

    Raises:
        FileNotFoundError: ``CXR_png`` is missing or empty.
    """
    root = as_root(root)
    mapper = LabelMapper(SOURCE, DEFAULT_LABEL_MAP if label_map is None else label_map, on_unknown_label)
    half_masked = 0

    def lung_masks(path: Path) -> tuple[Path, ...] | None:
        nonlocal half_masked
        masks = tuple(root / "ManualMask" / side / path.name for side in ("leftMask", "rightMask"))
        present = [m.is_file() for m in masks]
        half_masked += any(present) and not all(present)
        return masks if all(present) else None

    result, _ = read_suffix_labelled(root, SOURCE, LAYOUT, mapper, lung_masks)
    if half_masked:
        result.notes.append(
            f"{half_masked} images have only one of the two lung masks; they get no lung mask"
        )
    return result
