"""One PNG per prediction: radiograph with lung contour, infection heatmap, explanation heatmap, and text.

Drawn on a :class:`matplotlib.figure.Figure` rendered by the Agg canvas (no pyplot, nothing left open), so
it is safe in worker processes and over thousands of files. The maps are shrunk to the display size
first, so a 3000-pixel radiograph costs no more to draw than a small one; images of one or two pixels, or
a 30000x20 strip, are drawn too.

An output the model's training never supervised (:attr:`~cxrnet.inference.Prediction.untrained`) is not
drawn: its panel or text says which head is untrained instead. The model's caveats (e.g. trained on
synthetic phantoms only) are printed in red above the footer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from cxrnet.inference import Prediction

DISCLAIMER = "research software — not for clinical use"
DISPLAY_SIZE = 384  # longer side of each panel's image, in pixels
DPI = 100
# Layout in inches: three square image panels, a text column, a title line above and a footer below.
PANEL = 3.4
TEXT = 3.0
GAP = 0.15
MARGIN = 0.15
BOTTOM = 0.72  # room for the colour bars and the footer
LINE = 0.17  # text line height
FIG_WIDTH = 2 * MARGIN + 3 * (PANEL + GAP) + TEXT
FIG_HEIGHT = BOTTOM + PANEL + 0.6
LUNG_COLOR = "#00e000"
INFECTION_CMAP = "inferno"
EXPLANATION_CMAP = "viridis"
HEAT_ALPHA = 0.55
MIN_HEAT = 0.1  # map values below this are drawn transparent, so the anatomy stays visible
MAX_ASPECT = 4.0  # longer / shorter side beyond which panels are stretched to square (a strip is unreadable)
CAVEAT_COLOR = "#b00000"
MAX_CAVEATS = 4  # lines of caveats drawn (one per head at most)
UNTRAINED_TEXT = {
    "lung_mask": "lung head untrained",
    "infection_map": "infection head untrained",
    "explanation": "explanation untrained (no class labels)",
    "probabilities": "classifier untrained",
}


def _fit(array: np.ndarray, height: int, width: int) -> np.ndarray:
    if array.shape == (height, width):
        return array.astype(np.float32, copy=False)
    shrinking = height < array.shape[0] or width < array.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array.astype(np.float32), (width, height), interpolation=interpolation)


def _stretched(height: int, width: int) -> bool:
    return max(height, width) > MAX_ASPECT * min(height, width)


def _display_shape(height: int, width: int, size: int) -> tuple[int, int]:
    if _stretched(height, width):
        # Drawn stretched to a square panel: shrinking both sides alike would leave a 384x1 sliver.
        return min(height, size), min(width, size)
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _box(
    left: float, bottom: float, width: float, height: float, fig_height: float = FIG_HEIGHT
) -> tuple[float, float, float, float]:
    """An axes rectangle given in inches, as figure fractions."""
    return left / FIG_WIDTH, bottom / fig_height, width / FIG_WIDTH, height / fig_height


def _masked_heat(values: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_less(values, MIN_HEAT)


_HEADING: dict[str, Any] = {"weight": "bold", "fontsize": 9}
_ROW: dict[str, Any] = {"family": "monospace", "fontsize": 9}
_BLANK: tuple[str, dict[str, Any]] = ("", {})


def _row(name: str, value: str) -> str:
    return f"  {name:<20s}{value:>9s}"


def _untrained_reason(prediction: Prediction) -> str:
    """Why the map-derived severity is withheld: the untrained head(s) it would come from."""
    heads = [UNTRAINED_TEXT[k] for k in ("lung_mask", "infection_map") if k in prediction.untrained]
    return ", ".join(heads) or "untrained"


def _text_lines(prediction: Prediction) -> list[tuple[str, dict[str, Any]]]:
    """The text column: (line, text style) pairs."""
    untrained = prediction.untrained
    if prediction.label is None or "probabilities" in untrained:
        lines = [("Predicted: n/a", {"weight": "bold", "fontsize": 12}), _BLANK]
        lines.append((f"  {UNTRAINED_TEXT['probabilities']}", _ROW))
    else:
        lines = [(f"Predicted: {prediction.label}", {"weight": "bold", "fontsize": 12}), _BLANK]
        lines.append(("Class probabilities", _HEADING))
        for name, p in sorted(prediction.probabilities.items(), key=lambda kv: -kv[1]):
            lines.append((_row(name, f"{p:.1%}"), _ROW))
    maps = prediction.severity.get("from_maps", {})
    if "severity.from_maps" in untrained:
        # A number from a head that never learned would read as a finding: say why there is none.
        lines += [_BLANK, ("Severity from the maps", _HEADING)]
        lines += [("  not available:", _ROW), (f"  {_untrained_reason(prediction)}", _ROW)]
    elif maps:
        rows = [
            ("infected right lung", f"{maps['fraction_right']:.1%}"),
            ("infected left lung", f"{maps['fraction_left']:.1%}"),
            ("Brixia-like total", f"{maps['brixia_total']}/18"),
            ("geographic extent", f"{maps['geographic_extent']}/8"),
            ("grade", str(maps["grade"])),
        ]
        lines += [_BLANK, ("Severity from the maps", _HEADING), *((_row(k, v), _ROW) for k, v in rows)]
    learned = prediction.severity.get("learned", {})
    unlearned = sorted(k.rsplit(".", 1)[1] for k in untrained if k.startswith("severity.learned."))
    if learned or unlearned:
        lines += [_BLANK, ("Severity, learned head", _HEADING)]
        lines += [(_row(name.replace("_", " "), f"{value:.1f}"), _ROW) for name, value in learned.items()]
        lines += [(_row(name.replace("_", " "), "untrained"), _ROW) for name in unlearned]
    return lines


def _caveat_lines(caveats: list[str]) -> list[str]:
    if len(caveats) <= MAX_CAVEATS:
        return list(caveats)
    rest = len(caveats) - MAX_CAVEATS + 1
    return [*caveats[: MAX_CAVEATS - 1], f"and {rest} more caveats (see the prediction's caveats)"]


def _draw_lungs(ax: Any, lungs: np.ndarray) -> None:
    """The lung outline; a tint where the image is too small for a contour (fewer than 2x2 pixels)."""
    inside = lungs > 0.5
    if not inside.any():
        return
    if min(lungs.shape) >= 2 and not inside.all():
        ax.contour(lungs, levels=[0.5], colors=LUNG_COLOR, linewidths=1.2)
        return
    tint = np.zeros((*lungs.shape, 4), np.float32)
    tint[inside] = (0.0, 0.88, 0.0, 0.35)
    ax.imshow(tint, interpolation="nearest")


def _say_untrained(ax: Any, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=11,
        color="white",
        bbox={"boxstyle": "round", "facecolor": CAVEAT_COLOR, "alpha": 0.85, "edgecolor": "none"},
    )


def render_overlay(
    image: np.ndarray,
    prediction: Prediction,
    path: str | Path,
    *,
    title: str | None = None,
    display_size: int = DISPLAY_SIZE,
) -> Path:
    """Write the four-panel PNG of :func:`overlay_figure` to ``path`` (parent folders are created).

    Returns:
        ``path``.
    """
    path = Path(path)
    fig = overlay_figure(image, prediction, title=title, display_size=display_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    return path


def overlay_figure(
    image: np.ndarray,
    prediction: Prediction,
    *,
    title: str | None = None,
    display_size: int = DISPLAY_SIZE,
) -> Figure:
    """A four-panel figure summarising one prediction (Agg canvas attached, nothing opened in pyplot).

    Panels: (1) the radiograph with the predicted lung contour, (2) the infection probability as a heatmap
    over the radiograph, (3) the explanation map as a heatmap over the radiograph, (4) the label, class
    probabilities and severity. A footer carries :data:`DISCLAIMER` and the prediction's caveats. A map or
    number of an untrained head is replaced by a note naming the head (e.g. "infection head untrained").

    Args:
        image: float HxW radiograph in [0, 1]; any size (e.g. a preview): the maps are resized to it.
        prediction: the prediction for that image (maps at the original size).
        title: heading, e.g. the file name; defaults to ``prediction.meta["source"]``.
        display_size: longer side of each image panel, in pixels.

    Returns:
        The figure; its first three axes are the image panels.
    """
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"overlay image must be a non-empty HxW array, got shape {image.shape}")
    h, w = _display_shape(*image.shape[:2], display_size)
    shown = np.clip(_fit(image, h, w), 0.0, 1.0)

    def fitted(values: np.ndarray | None, key: str) -> np.ndarray | None:
        # Withheld (None) or flagged (kept with keep_untrained): either way, not drawn.
        if values is None or key in prediction.untrained:
            return None
        return np.clip(_fit(values.astype(np.float32, copy=False), h, w), 0.0, 1.0)

    lungs = fitted(prediction.lung_mask, "lung_mask")
    infection = fitted(prediction.infection_map, "infection_map")
    explanation = fitted(prediction.explanation, "explanation")

    # Caveat lines get their own room below the colour bars, above the footer.
    caveats = _caveat_lines(prediction.caveats)
    lift = LINE * len(caveats)
    fig_height, bottom = FIG_HEIGHT + lift, BOTTOM + lift
    fig = Figure(figsize=(FIG_WIDTH, fig_height), dpi=DPI)
    FigureCanvasAgg(fig)
    headings = (
        "radiograph + lung contour" if lungs is not None else f"radiograph ({UNTRAINED_TEXT['lung_mask']})",
        "infection probability",
        "explanation map",
    )
    panels = [
        fig.add_axes(_box(MARGIN + i * (PANEL + GAP), bottom, PANEL, PANEL, fig_height)) for i in range(3)
    ]
    stretched = _stretched(*image.shape[:2])
    for ax, heading in zip(panels, headings):
        # Nearest for images of a few pixels: bilinear would smear one pixel over the whole panel.
        smooth = "bilinear" if min(h, w) >= 8 else "nearest"
        ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation=smooth)
        ax.set_title(heading, fontsize=10)
        ax.set_axis_off()
    if lungs is not None:
        for ax in panels[:2]:
            _draw_lungs(ax, lungs)
    for ax, values, cmap, key in (
        (panels[1], infection, INFECTION_CMAP, "infection_map"),
        (panels[2], explanation, EXPLANATION_CMAP, "explanation"),
    ):
        if values is None:
            _say_untrained(ax, UNTRAINED_TEXT[key])
            continue
        heat = ax.imshow(
            _masked_heat(values), cmap=cmap, vmin=0.0, vmax=1.0, alpha=HEAT_ALPHA, interpolation="bilinear"
        )
        bar_ax = ax.inset_axes((0.15, -0.07, 0.7, 0.035))
        fig.colorbar(heat, cax=bar_ax, orientation="horizontal", ticks=[0, 0.5, 1])
        bar_ax.tick_params(labelsize=7, length=2, pad=1)

    if stretched:
        for ax in panels:  # after every imshow: each one resets the aspect to "equal"
            ax.set_aspect("auto")

    text_ax = fig.add_axes(_box(MARGIN + 3 * (PANEL + GAP), bottom - 0.3, TEXT, PANEL + 0.55, fig_height))
    text_ax.set_axis_off()
    step = LINE / (PANEL + 0.55)
    for n, (line, style) in enumerate(_text_lines(prediction)):
        text_ax.text(0.0, 1.0 - n * step, line, transform=text_ax.transAxes, va="top", **style)

    heading = title if title is not None else str(prediction.meta.get("source", ""))
    size = f"{prediction.meta.get('width', w)}x{prediction.meta.get('height', h)} px"
    if stretched:
        size += ", shown stretched"
    fig.text(
        0.5,
        1 - 0.12 / fig_height,
        _ellipsize(f"{heading}   ({size})", 120),
        ha="center",
        va="top",
        fontsize=11,
    )
    fig.text(
        0.5,
        0.1 / fig_height,
        DISCLAIMER,
        ha="center",
        va="bottom",
        fontsize=9,
        color=CAVEAT_COLOR,
        style="italic",
    )
    for n, caveat in enumerate(caveats):
        fig.text(
            0.5,
            (0.1 + LINE * (n + 1.2)) / fig_height,
            _ellipsize(caveat, 160),
            ha="center",
            va="bottom",
            fontsize=9,
            color=CAVEAT_COLOR,
            weight="bold",
        )
    return fig


def _ellipsize(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]
