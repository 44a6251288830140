"""One PNG per prediction: radiograph with lung contour, infection heatmap, explanation heatmap, and text.

Drawn on a :class:`matplotlib.figure.Figure` rendered by the Agg canvas (no pyplot, nothing left open), so
it is safe in worker processes and over thousands of files. The maps are shrunk to the display size
first, so a 3000-pixel radiograph costs no more to draw than a small one.
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


def _fit(array: np.ndarray, height: int, width: int) -> np.ndarray:
    if array.shape == (height, width):
        return array.astype(np.float32, copy=False)
    shrinking = height < array.shape[0] or width < array.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array.astype(np.float32), (width, height), interpolation=interpolation)


def _display_shape(height: int, width: int, size: int) -> tuple[int, int]:
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _box(left: float, bottom: float, width: float, height: float) -> tuple[float, float, float, float]:
    """An axes rectangle given in inches, as figure fractions."""
    return left / FIG_WIDTH, bottom / FIG_HEIGHT, width / FIG_WIDTH, height / FIG_HEIGHT


def _masked_heat(values: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_less(values, MIN_HEAT)


_HEADING: dict[str, Any] = {"weight": "bold", "fontsize": 9}
_ROW: dict[str, Any] = {"family": "monospace", "fontsize": 9}
_BLANK: tuple[str, dict[str, Any]] = ("", {})


def _row(name: str, value: str) -> str:
    return f"  {name:<20s}{value:>9s}"


def _text_lines(prediction: Prediction) -> list[tuple[str, dict[str, Any]]]:
    """The text column: (line, text style) pairs."""
    lines = [(f"Predicted: {prediction.label}", {"weight": "bold", "fontsize": 12}), _BLANK]
    lines.append(("Class probabilities", _HEADING))
    for name, p in sorted(prediction.probabilities.items(), key=lambda kv: -kv[1]):
        lines.append((_row(name, f"{p:.1%}"), _ROW))
    maps = prediction.severity.get("from_maps", {})
    if maps:
        rows = [
            ("infected right lung", f"{maps['fraction_right']:.1%}"),
            ("infected left lung", f"{maps['fraction_left']:.1%}"),
            ("Brixia-like total", f"{maps['brixia_total']}/18"),
            ("geographic extent", f"{maps['geographic_extent']}/8"),
            ("grade", str(maps["grade"])),
        ]
        lines += [_BLANK, ("Severity from the maps", _HEADING), *((_row(k, v), _ROW) for k, v in rows)]
    learned = prediction.severity.get("learned", {})
    if learned:
        lines += [_BLANK, ("Severity, learned head", _HEADING)]
        lines += [(_row(name.replace("_", " "), f"{value:.1f}"), _ROW) for name, value in learned.items()]
    return lines


def render_overlay(
    image: np.ndarray,
    prediction: Prediction,
    path: str | Path,
    *,
    title: str | None = None,
    display_size: int = DISPLAY_SIZE,
) -> Path:
    """Write a four-panel PNG summarising one prediction.

    Panels: (1) the radiograph with the predicted lung contour, (2) the infection probability as a heatmap
    over the radiograph, (3) the explanation map as a heatmap over the radiograph, (4) the label, class
    probabilities and severity. A footer carries :data:`DISCLAIMER`.

    Args:
        image: float HxW radiograph in [0, 1]; any size (e.g. a preview): the maps are resized to it.
        prediction: the prediction for that image (maps at the original size).
        path: PNG file to write (parent folders are created).
        title: heading, e.g. the file name; defaults to ``prediction.meta["source"]``.
        display_size: longer side of each image panel, in pixels.

    Returns:
        ``path``.
    """
    path = Path(path)
    h, w = _display_shape(*image.shape[:2], display_size)
    shown = np.clip(_fit(image, h, w), 0.0, 1.0)
    lungs = _fit(prediction.lung_mask.astype(np.float32), h, w)
    infection = np.clip(_fit(prediction.infection_map, h, w), 0.0, 1.0)
    explanation = np.clip(_fit(prediction.explanation, h, w), 0.0, 1.0)

    fig = Figure(figsize=(FIG_WIDTH, FIG_HEIGHT), dpi=DPI)
    FigureCanvasAgg(fig)
    headings = ("radiograph + lung contour", "infection probability", "explanation map")
    panels = [fig.add_axes(_box(MARGIN + i * (PANEL + GAP), BOTTOM, PANEL, PANEL)) for i in range(3)]
    for ax, heading in zip(panels, headings):
        ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
        ax.set_title(heading, fontsize=10)
        ax.set_axis_off()
    if lungs.max() > 0.5:
        for ax in panels[:2]:
            ax.contour(lungs, levels=[0.5], colors=LUNG_COLOR, linewidths=1.2)
    for ax, values, cmap in (
        (panels[1], infection, INFECTION_CMAP),
        (panels[2], explanation, EXPLANATION_CMAP),
    ):
        heat = ax.imshow(
            _masked_heat(values), cmap=cmap, vmin=0.0, vmax=1.0, alpha=HEAT_ALPHA, interpolation="bilinear"
        )
        bar_ax = ax.inset_axes((0.15, -0.07, 0.7, 0.035))
        fig.colorbar(heat, cax=bar_ax, orientation="horizontal", ticks=[0, 0.5, 1])
        bar_ax.tick_params(labelsize=7, length=2, pad=1)

    text_ax = fig.add_axes(_box(MARGIN + 3 * (PANEL + GAP), BOTTOM - 0.3, TEXT, PANEL + 0.55))
    text_ax.set_axis_off()
    step = LINE / (PANEL + 0.55)
    for n, (line, style) in enumerate(_text_lines(prediction)):
        text_ax.text(0.0, 1.0 - n * step, line, transform=text_ax.transAxes, va="top", **style)

    heading = title if title is not None else str(prediction.meta.get("source", ""))
    size = f"{prediction.meta.get('width', w)}x{prediction.meta.get('height', h)} px"
    fig.text(
        0.5,
        1 - 0.12 / FIG_HEIGHT,
        _ellipsize(f"{heading}   ({size})", 120),
        ha="center",
        va="top",
        fontsize=11,
    )
    fig.text(
        0.5,
        0.1 / FIG_HEIGHT,
        DISCLAIMER,
        ha="center",
        va="bottom",
        fontsize=9,
        color="#b00000",
        style="italic",
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    return path


def _ellipsize(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]
