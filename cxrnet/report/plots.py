"""Evaluation figures written straight to PNG files.

Each function draws on its own :class:`matplotlib.figure.Figure` rendered by the Agg canvas: no pyplot, no
global backend switch, nothing left open, so the functions are safe in servers, tests and worker processes.
Each returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cxrnet.evaluation.calibration import DEFAULT_N_BINS, reliability_curve
from cxrnet.evaluation.classification import (
    auroc,
    average_precision,
    check_labels_and_probs,
    precision_recall_curve,
    roc_curve,
    sensitivity_at_specificity,
)
from cxrnet.evaluation.correlation import agreement

#: Resolution of every PNG; with the sizes below, text stays legible when the image is shown at 100 %.
DPI = 120
SQUARE_SIZE = (5.5, 5.0)  # inches
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TRUE_COLOR = "#00c000"
PRED_COLOR = "#ff2020"
PRED_FILL_ALPHA = 0.3
GRID_COLUMNS = 4
PANEL_INCHES = 3.2  # width of one overlay panel
MIN_GRID_WIDTH = 4.5  # inches; a single panel would otherwise be too small to read


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _curve_classes(n_classes: int) -> list[int]:
    # With two classes the one-vs-rest curves mirror each other; show only the positive class (index 1).
    return [1] if n_classes == 2 else list(range(n_classes))


def _kind(class_names: Sequence[str]) -> str:
    return f"{class_names[1]} vs {class_names[0]}" if len(class_names) == 2 else "one-vs-rest"


def plot_roc(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    specificity_target: float | None = 0.90,
) -> Path:
    """One-vs-rest ROC curve of each class (the positive class only when there are two).

    Args:
        y_true: int (N,), -1 for absent (dropped).
        probs: float (N, C).
        class_names: C names, used in the legend with the AUROC and the number of positives.
        path: PNG file to write.
        specificity_target: marks the operating point with the best sensitivity at this specificity;
            ``None`` for no marker.

    Returns:
        ``path``.
    """
    y, p, _ = check_labels_and_probs(y_true, probs, len(class_names))
    fig = Figure(figsize=SQUARE_SIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    for c in _curve_classes(len(class_names)):
        pos = y == c
        n_pos = int(pos.sum())
        if n_pos == 0 or n_pos == y.size:
            ax.plot([], [], color=_color(c), label=f"{class_names[c]} (undefined: n+={n_pos})")
            continue
        fpr, tpr, _ = roc_curve(pos, p[:, c])
        label = f"{class_names[c]} (AUC {auroc(pos, p[:, c]):.3f}, n+={n_pos})"
        ax.plot(fpr, tpr, color=_color(c), linewidth=1.8, label=label)
        if specificity_target is not None:
            sens, _ = sensitivity_at_specificity(pos, p[:, c], specificity_target)
            ax.plot(1 - specificity_target, sens, "o", color=_color(c), markersize=5)
    if specificity_target is not None:
        ax.axvline(1 - specificity_target, color="0.8", linewidth=0.8, zorder=0)
        ax.plot([], [], "o", color="0.4", label=f"sensitivity at {specificity_target:.0%} specificity")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", title=f"ROC ({_kind(class_names)})")
    ax.set_xlabel("1 \u2212 specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_pr(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """One-vs-rest precision-recall curve of each class, with its prevalence as the chance level.

    Args:
        y_true: int (N,), -1 for absent (dropped).
        probs: float (N, C).
        class_names: C names; the legend gives average precision and prevalence.
        path: PNG file to write.

    Returns:
        ``path``.
    """
    y, p, _ = check_labels_and_probs(y_true, probs, len(class_names))
    fig = Figure(figsize=SQUARE_SIZE, layout="constrained")
    ax = fig.add_subplot()
    for c in _curve_classes(len(class_names)):
        pos = y == c
        if not pos.any():
            ax.plot([], [], color=_color(c), label=f"{class_names[c]} (undefined: no positives)")
            continue
        precision, recall, _ = precision_recall_curve(pos, p[:, c])
        prevalence = pos.mean()
        label = f"{class_names[c]} (AP {average_precision(pos, p[:, c]):.3f}, prev. {prevalence:.2f})"
        # Step plot from recall 0, as average precision integrates it.
        ax.step(
            np.r_[0.0, recall],
            np.r_[precision[0], precision],
            where="pre",
            color=_color(c),
            linewidth=1.8,
            label=label,
        )
        ax.axhline(prevalence, color=_color(c), linestyle=":", linewidth=1)
    ax.plot([], [], color="0.4", linestyle=":", label="chance (prevalence)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.02), title=f"Precision-recall ({_kind(class_names)})")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str], path: str | Path, normalize: bool = False
) -> Path:
    """Confusion matrix as an annotated heat map.

    Args:
        cm: int (C, C) counts, rows true classes, columns predicted classes.
        class_names: C names.
        path: PNG file to write.
        normalize: colour and label each row as fractions of its true class (so the diagonal is the
            sensitivity); the count is still shown below each fraction.

    Returns:
        ``path``.
    """
    cm = np.asarray(cm)
    n_cls = len(class_names)
    if cm.shape != (n_cls, n_cls):
        raise ValueError(f"confusion matrix is {cm.shape} but {n_cls} class names were given")
    row_sums = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shown = np.where(row_sums > 0, cm / row_sums, np.nan) if normalize else cm.astype(float)
    side = min(3.0 + 0.8 * n_cls, 12.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(np.nanmax(shown)) if shown.size else 1.0, 1.0)
    image = ax.imshow(np.nan_to_num(shown), cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "items")
    for i in range(n_cls):
        for j in range(n_cls):
            value = shown[i, j]
            text = f"{value:.1%}\n({cm[i, j]})" if normalize else f"{cm[i, j]}"
            if normalize and np.isnan(value):
                text = "n/a"
            dark = not np.isnan(value) and value > 0.6 * vmax
            ax.text(
                j, i, text, ha="center", va="center", fontsize="small", color="white" if dark else "black"
            )
    ax.set_xticks(range(n_cls), class_names, rotation=30, ha="right")
    ax.set_yticks(range(n_cls), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else f" (n={int(cm.sum())})"))
    return _save(fig, path)


def plot_reliability(
    y_true: np.ndarray, probs: np.ndarray, path: str | Path, n_bins: int = DEFAULT_N_BINS
) -> Path:
    """Reliability diagram of the top-label confidence, with the ECE in the title and item counts below.

    Args:
        y_true: int (N,), -1 for absent (dropped).
        probs: float (N, C) probabilities.
        path: PNG file to write.
        n_bins: equal-width confidence bins.

    Returns:
        ``path``.
    """
    curve = reliability_curve(y_true, probs, n_bins)
    width = np.diff(curve.edges)
    centers = curve.edges[:-1] + width / 2
    fig = Figure(figsize=(5.5, 6.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    used = curve.counts > 0
    top.bar(
        centers[used],
        curve.accuracy[used],
        width=width[used] * 0.95,
        color=COLORS[0],
        alpha=0.8,
        edgecolor="white",
        label="accuracy in bin",
    )
    top.plot(
        curve.confidence[used],
        curve.accuracy[used],
        "o",
        color="black",
        markersize=3,
        label="mean confidence in bin",
    )
    top.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="accuracy")
    top.set_title(f"Reliability (top label): ECE {curve.ece:.3f}, n={int(curve.counts.sum())}")
    top.grid(alpha=0.3)
    # Outside the axes: sparse low-confidence bins can reach 1.0 anywhere, so no inside corner stays free.
    fig.legend(loc="outside lower center", ncols=3, fontsize="small")
    bottom.bar(centers, curve.counts, width=width * 0.95, color="0.5")
    bottom.set(xlabel="confidence (highest class probability)", ylabel="items")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def plot_severity_scatter(
    estimate: np.ndarray,
    reference: np.ndarray,
    path: str | Path,
    xlabel: str = "reference score",
    ylabel: str = "estimated score",
) -> Path:
    """Estimated against reference severity, with the identity line and agreement statistics.

    Args:
        estimate: float (N,); NaN pairs are dropped.
        reference: float (N,), plotted on the x axis.
        path: PNG file to write.
        xlabel: name and unit of the reference score.
        ylabel: name and unit of the estimate.

    Returns:
        ``path``.
    """
    x = np.asarray(reference, dtype=np.float64).ravel()
    y = np.asarray(estimate, dtype=np.float64).ravel()
    stats = agreement(y, x)
    keep = ~(np.isnan(x) | np.isnan(y))
    fig = Figure(figsize=SQUARE_SIZE, layout="constrained")
    ax = fig.add_subplot()
    # Jitter-free but translucent, because reference scores are often integers and points stack.
    ax.scatter(x[keep], y[keep], s=14, alpha=0.5, color=COLORS[0], edgecolor="none", label="image")
    if keep.any():
        lo = float(min(x[keep].min(), y[keep].min()))
        hi = float(max(x[keep].max(), y[keep].max()))
        pad = 0.03 * (hi - lo or 1.0)
        ax.plot(
            [lo - pad, hi + pad],
            [lo - pad, hi + pad],
            color="0.4",
            linestyle="--",
            linewidth=1,
            label="identity",
        )
        ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad))
    ax.set_title(
        f"r {stats['pearson_r']:.3f}, \u03c1 {stats['spearman_rho']:.3f}, "
        f"MAE {stats['mae']:.3f}, n={int(stats['n'])}"
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def plot_segmentation_grid(
    images: Sequence[np.ndarray],
    true_masks: Sequence[np.ndarray | None],
    pred_masks: Sequence[np.ndarray],
    scores: Sequence[float] | None,
    titles: Sequence[str] | None,
    path: str | Path,
    *,
    score_name: str = "Dice",
) -> Path:
    """Grid of radiographs with the reference contour (green) and the prediction (red fill and contour).

    Args:
        images: K gray images HxW (any range; each is shown with its own min-max).
        true_masks: K reference masks HxW, or ``None`` where an image has none.
        pred_masks: K predicted masks HxW (bool or probabilities, binarised at 0.5).
        scores: K scores shown under each title (e.g. Dice), or ``None``.
        titles: K titles (e.g. file name and class), or ``None``.
        path: PNG file to write.
        score_name: what ``scores`` are.

    Returns:
        ``path``.
    """
    k = len(images)
    if not k or len(true_masks) != k or len(pred_masks) != k:
        raise ValueError(
            f"need the same non-zero number of images ({k}), true masks ({len(true_masks)}) "
            f"and predicted masks ({len(pred_masks)})"
        )
    ncols = min(GRID_COLUMNS, k)
    nrows = int(np.ceil(k / ncols))
    # "compressed" is the constrained layout for grids of fixed-aspect images; it keeps titles inside.
    width = max(PANEL_INCHES * ncols, MIN_GRID_WIDTH)
    fig = Figure(figsize=(width, width / ncols * 1.12 * nrows + 0.4), layout="compressed")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= k:
            continue
        image = np.asarray(images[i], dtype=np.float64)
        pred = np.asarray(pred_masks[i])
        pred = pred if pred.dtype == bool else pred > 0.5
        ax.imshow(image, cmap="gray", interpolation="bilinear")
        fill = np.zeros((*pred.shape, 4))
        fill[pred] = (1.0, 0.13, 0.13, PRED_FILL_ALPHA)
        ax.imshow(fill, interpolation="nearest")
        if pred.any() and not pred.all():
            ax.contour(pred.astype(float), levels=[0.5], colors=PRED_COLOR, linewidths=1.0)
        true = true_masks[i]
        lines = [titles[i]] if titles is not None else []
        if true is None:
            lines.append("no reference mask")
        else:
            true = np.asarray(true)
            true = true if true.dtype == bool else true > 0.5
            if true.any() and not true.all():
                ax.contour(true.astype(float), levels=[0.5], colors=TRUE_COLOR, linewidths=1.4)
        if scores is not None:
            lines.append(f"{score_name} {scores[i]:.3f}" if np.isfinite(scores[i]) else f"{score_name} n/a")
        ax.set_title("\n".join(lines), fontsize="small")
    fig.legend(
        handles=[
            Patch(facecolor="none", edgecolor=TRUE_COLOR, linewidth=1.4, label="reference"),
            Patch(facecolor=(1.0, 0.13, 0.13, PRED_FILL_ALPHA), edgecolor=PRED_COLOR, label="prediction"),
        ],
        loc="outside lower center",
        ncols=2,
        fontsize="small",
    )
    return _save(fig, path)
