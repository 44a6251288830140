"""QaTa-COV19 (v2): COVID-19 images with infection masks, plus a control group.

Layout (folder names contain spaces)::

    <root>/Train Set/Images/covid_1.png             <root>/Train Set/Ground-truths/mask_covid_1.png
    <root>/Test Set/Images/...                      <root>/Test Set/Ground-truths/...

Masks are 0/255 PNGs named ``mask_<image file name>``. Images whose name starts with ``covid`` are
COVID-19 (raw label ``"covid"``); all others belong to the control group (raw label ``"control"``).

Control images are COVID-19 negatives, so an absent mask file for a control image means its infection
mask is known to be empty: such records carry ``meta["infection_mask_empty"] = True`` and
:func:`cxrnet.data.items.load_record` gives them an all-zero infection mask (supervision, not a guess).
A COVID-19 image without a mask gets no infection mask (unknown) and is counted in the notes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cxrnet.data.images import find_images
from cxrnet.data.records import Record
from cxrnet.data.sources._common import LabelMapper, SourceResult, as_root

SOURCE = "qata"

DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "covid": "covid19",
    # The control group is COVID-19 negative; the QaTa authors draw it from public normal and
    # non-COVID collections, so map it to "non_covid" in a config when that distinction matters.
    "control": "normal",
}
"""Raw QaTa labels (derived from the file name) → canonical classes."""

SPLIT_DIRS = {"train": "Train Set", "test": "Test Set"}
LAYOUT = "  <root>/{Train Set,Test Set}/Images/*.png and <root>/{Train Set,Test Set}/Ground-truths/mask_*.png"


def read(
    root: str | os.PathLike[str],
    *,
    label_map: Mapping[str, str | None] | None = None,
    on_unknown_label: str = "error",
    split_dirs: Mapping[str, str] | None = None,
) -> SourceResult:
    """Read a QaTa-COV19 folder.

    Args:
        root: folder holding ``Train Set`` and/or ``Test Set``.
        label_map: raw label (``"covid"``, ``"control"``) → canonical class; defaults to
            :data:`DEFAULT_LABEL_MAP`.
        on_unknown_label: ``"error"`` or ``"exclude"`` for labels missing from the map.
        split_dirs: split → folder name; defaults to :data:`SPLIT_DIRS`.

    Returns:
        Records with ``infection_mask`` where a mask file exists, ``split`` from the folder, and
        ``meta["infection_mask_empty"]`` (see the module docstring).

    Raises:
        FileNotFoundError: neither split folder holds an ``Images`` folder.
    """
    root = as_root(root)
    mapper = LabelMapper(SOURCE, DEFAULT_LABEL_MAP if label_map is None else label_map, on_unknown_label)
    result = SourceResult(SOURCE)
    covid_without_mask = 0
    for split, folder in (split_dirs or SPLIT_DIRS).items():
        image_dir, mask_dir = root / folder / "Images", root / folder / "Ground-truths"
        if not image_dir.is_dir():
            continue
        images = find_images(image_dir, recursive=False)
        masks = {p.name for p in find_images(mask_dir, recursive=False)} if mask_dir.is_dir() else set()
        orphans = masks - {f"mask_{p.name}" for p in images}
        if orphans:
            result.notes.append(f"{len(orphans)} masks in {mask_dir} have no image (e.g. {min(orphans)})")
        for path in images:
            raw = "covid" if path.name.lower().startswith("covid") else "control"
            label = mapper(raw, path)
            if label is None:
                continue
            has_mask = f"mask_{path.name}" in masks
            covid_without_mask += raw == "covid" and not has_mask
            result.records.append(
                Record(
                    path=str(path),
                    patient_id=path.stem,  # QaTa has no patient ids
                    source=SOURCE,
                    label=label,
                    raw_label=raw,
                    infection_mask=str(mask_dir / f"mask_{path.name}") if has_mask else None,
                    split=split,
                    meta={"infection_mask_empty": raw == "control" and not has_mask},
                )
            )
    result.excluded += mapper.excluded
    if covid_without_mask:
        result.notes.append(
            f"{covid_without_mask} COVID-19 images have no mask file (infection mask unknown)"
        )
    if not result.records:
        raise FileNotFoundError(f"{SOURCE}: no images under {root}\nexpected layout:\n{LAYOUT}")
    return result
