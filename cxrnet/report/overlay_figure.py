"""The overlay of :mod:`cxrnet.report.overlay` as a matplotlib figure, for notebooks and reports.

Imported by :func:`cxrnet.report.overlay.overlay_figure` when it is first called: it imports matplotlib,
which ``cxrnet.predict`` never needs. The content and layout are those of the PNG
(:mod:`cxrnet.report.overlay_content`, text styles from :mod:`cxrnet.report.drawing`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from cxrnet.report.drawing import (
    CAVEAT_STYLE,
    DPI,
    FOOTER_STYLE,
    NOTE_STYLE,
    PANEL_TITLE_STYLE,
    TICK_STYLE,
    TITLE_STYLE,
)
from cxrnet.report.overlay_content import (
    BOTTOM,
    CAVEAT_COLOR,
    DISCLAIMER,
    DISPLAY_SIZE,
    EXPLANATION_CMAP,
    FIG_HEIGHT,
    FIG_WIDTH,
    GAP,
    HEAT_ALPHA,
    INFECTION_CMAP,
    LINE,
    LUNG_COLOR,
    MARGIN,
    MIN_HEAT,
    PANEL,
    TEXT,
    TINT_ALPHA,
    UNTRAINED_TEXT,
    caveat_lines,
    ellipsize,
    headings,
    panel_contents,
    text_lines,
    title_line,
)

if TYPE_CHECKING:
    from cxrnet.prediction import Prediction


def _box(
    left: float, bottom: float, width: float, height: float, fig_height: float = FIG_HEIGHT
) -> tuple[float, float, float, float]:
    """An axes rectangle given in inches, as figure fractions."""
    return left / FIG_WIDTH, bottom / fig_height, width / FIG_WIDTH, height / fig_height


def _masked_heat(values: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_less(values, MIN_HEAT)


def _draw_lungs(ax: Any, lungs: np.ndarray) -> None:
    """The lung outline; a tint where the image is too small for a contour (fewer than 2x2 pixels)."""
    inside = lungs > 0.5
    if not inside.any():
        return
    if min(lungs.shape) >= 2 and not inside.all():
        ax.contour(lungs, levels=[0.5], colors=LUNG_COLOR, linewidths=1.2)
        return
    tint = np.zeros((*lungs.shape, 4), np.float32)
    tint[inside] = to_rgba(LUNG_COLOR, TINT_ALPHA)
    ax.imshow(tint, interpolation="nearest")


def _say_untrained(ax: Any, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="white",
        bbox={"boxstyle": "round", "facecolor": CAVEAT_COLOR, "alpha": 0.85, "edgecolor": "none"},
        **NOTE_STYLE,
    )


def draw_figure(
    image: np.ndarray,
    prediction: Prediction,
    *,
    title: str | None = None,
    display_size: int = DISPLAY_SIZE,
) -> Figure:
    """:func:`cxrnet.report.overlay.overlay_figure` (see there)."""
    contents = panel_contents(image, prediction, display_size)
    h, w = contents.image.shape
    # Caveat lines get their own room below the colour bars, above the footer.
    caveats = caveat_lines(prediction.caveats)
    lift = LINE * len(caveats)
    fig_height, bottom = FIG_HEIGHT + lift, BOTTOM + lift
    fig = Figure(figsize=(FIG_WIDTH, fig_height), dpi=DPI)
    FigureCanvasAgg(fig)
    panels = [
        fig.add_axes(_box(MARGIN + i * (PANEL + GAP), bottom, PANEL, PANEL, fig_height)) for i in range(3)
    ]
    for ax, heading in zip(panels, headings(contents)):
        # Nearest for images of a few pixels: bilinear would smear one pixel over the whole panel.
        smooth = "bilinear" if min(h, w) >= 8 else "nearest"
        ax.imshow(contents.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation=smooth)
        ax.set_title(heading, **PANEL_TITLE_STYLE)
        ax.set_axis_off()
    if contents.lungs is not None:
        for ax in panels[:2]:
            _draw_lungs(ax, contents.lungs)
    for ax, values, cmap, key in (
        (panels[1], contents.infection, INFECTION_CMAP, "infection_map"),
        (panels[2], contents.explanation, EXPLANATION_CMAP, "explanation"),
    ):
        if values is None:
            _say_untrained(ax, UNTRAINED_TEXT[key])
            continue
        heat = ax.imshow(
            _masked_heat(values), cmap=cmap, vmin=0.0, vmax=1.0, alpha=HEAT_ALPHA, interpolation="bilinear"
        )
        bar_ax = ax.inset_axes((0.15, -0.07, 0.7, 0.035))
        fig.colorbar(heat, cax=bar_ax, orientation="horizontal", ticks=[0, 0.5, 1])
        bar_ax.tick_params(labelsize=TICK_STYLE["fontsize"], length=2, pad=1)

    if contents.stretched:
        for ax in panels:  # after every imshow: each one resets the aspect to "equal"
            ax.set_aspect("auto")

    text_ax = fig.add_axes(_box(MARGIN + 3 * (PANEL + GAP), bottom - 0.3, TEXT, PANEL + 0.55, fig_height))
    text_ax.set_axis_off()
    step = LINE / (PANEL + 0.55)
    for n, (line, style) in enumerate(text_lines(prediction)):
        text_ax.text(0.0, 1.0 - n * step, line, transform=text_ax.transAxes, va="top", **style)

    heading = title_line(prediction, title, contents)
    fig.text(0.5, 1 - 0.12 / fig_height, heading, ha="center", va="top", **TITLE_STYLE)
    footer = {"ha": "center", "va": "bottom", "color": CAVEAT_COLOR}
    fig.text(0.5, 0.1 / fig_height, DISCLAIMER, **footer, **FOOTER_STYLE)
    for n, caveat in enumerate(caveats):
        fig.text(
            0.5,
            (0.1 + LINE * (n + 1.2)) / fig_height,
            ellipsize(caveat, 160),
            ha="center",
            va="bottom",
            color=CAVEAT_COLOR,
            **CAVEAT_STYLE,
        )
    return fig
