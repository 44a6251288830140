"""Figures of ``python -m cxrnet.explain.evaluate``: the methods' maps side by side, and their curves.

Drawn like :mod:`cxrnet.report.plots` (own Figure, Agg canvas, no pyplot); imports matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cxrnet.report.plots import COLORS, TRUE_COLOR, _save

PANEL = 1.9  # inches per panel


def plot_explanation_grid(
    images: Sequence[np.ndarray],
    infection_masks: Sequence[np.ndarray],
    maps: Mapping[str, Sequence[np.ndarray]],
    titles: Sequence[str],
    path: str | Path,
    reference: str = "infection mask",
) -> Path:
    """One row per image: the radiograph, its infection mask, then each method's map over the radiograph.

    Args:
        images: K gray images H×W (each shown with its own min-max).
        infection_masks: K reference masks H×W (drawn as a green contour on every panel).
        maps: method name → K maps H×W in [0, 1] (shown with a fixed 0-1 colour scale, so methods compare).
        titles: K row titles (e.g. the class and the file name).
        path: PNG file to write.
        reference: what the masks are, as the second column's title (``"lung mask"`` for a dataset that has
            only lung masks).

    Returns:
        ``path``.
    """
    k = len(images)
    if not k or len(infection_masks) != k or len(titles) != k or any(len(m) != k for m in maps.values()):
        raise ValueError(f"need the same non-zero number of images ({k}), masks, titles and maps per method")
    columns = ["image", reference, *maps]
    fig = Figure(figsize=(PANEL * len(columns), PANEL * k + 0.5), layout="compressed")
    axes = fig.subplots(k, len(columns), squeeze=False)
    for row in range(k):
        image = np.asarray(images[row], dtype=np.float64)
        mask = np.asarray(infection_masks[row]) > 0.5
        for col, name in enumerate(columns):
            ax = axes[row, col]
            ax.set_axis_off()
            ax.imshow(image, cmap="gray", interpolation="bilinear")
            if name == reference:
                ax.imshow(
                    np.ma.masked_where(~mask, mask.astype(float)), cmap="Reds", vmin=0, vmax=1.5, alpha=0.6
                )
            elif name != "image":
                ax.imshow(
                    np.asarray(maps[name][row], dtype=np.float64), cmap="jet", vmin=0, vmax=1, alpha=0.45
                )
            if col > 0 and mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=TRUE_COLOR, linewidths=0.8)
            if row == 0:
                ax.set_title(name, fontsize="small")
        axes[row, 0].text(
            -0.04, 0.5, titles[row], transform=axes[row, 0].transAxes, rotation=90, ha="right", va="center",
            fontsize="x-small",
        )  # fmt: skip
    return _save(fig, path)


def plot_faithfulness_curves(
    fractions: np.ndarray,
    deletion: Mapping[str, np.ndarray],
    insertion: Mapping[str, np.ndarray],
    path: str | Path,
) -> Path:
    """Mean deletion and insertion curves per method (probability of the explained class vs pixels changed).

    Args:
        fractions: (S+1,) fractions of pixels removed / revealed.
        deletion: method → (S+1,) mean probability as the most salient pixels are removed (lower is better).
        insertion: method → (S+1,) mean probability as they are revealed on the baseline (higher is better).
        path: PNG file to write.
    """
    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    panels = (
        (left, deletion, "deletion (lower AUC is better)"),
        (right, insertion, "insertion (higher AUC is better)"),
    )
    for ax, curves, title in panels:
        for i, (name, curve) in enumerate(curves.items()):
            auc = float(((curve[1:] + curve[:-1]) / 2 * np.diff(fractions)).sum())  # trapezoid rule
            ax.plot(fractions, curve, color=COLORS[i % len(COLORS)], label=f"{name} (AUC {auc:.3f})")
        ax.set(
            title=title, xlabel="fraction of pixels, most salient first", ylabel="probability of the class"
        )
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small")
    return _save(fig, path)
