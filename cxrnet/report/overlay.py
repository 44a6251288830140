"""One PNG per prediction: radiograph with lung contour, infection heatmap, explanation heatmap, and text.

:func:`render_overlay` rasterises the PNG directly, with OpenCV (resizing, colour maps, the lung contour)
and Pillow (text, in the DejaVu fonts that matplotlib ships; :mod:`cxrnet.report.drawing`): a few
milliseconds per image, so ``cxrnet.predict`` keeps pace with the network. :func:`overlay_figure` draws the
same content (:mod:`cxrnet.report.overlay_content`) on a matplotlib figure, for notebooks and reports;
matplotlib is imported only when it is called (:mod:`cxrnet.report.overlay_figure`).

Both shrink the maps to the display size first, so a 3000-pixel radiograph costs no more to draw than a
small one; images of one or two pixels, or a 30000x20 strip (shown stretched), are drawn too.

An output the model's training never supervised (:attr:`~cxrnet.inference.Prediction.untrained`) is not
drawn: its panel or text says which head is untrained instead. The model's caveats (e.g. trained on
synthetic phantoms only) are printed in red above the footer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import ImageColor

from cxrnet.data.transforms import resize
from cxrnet.report.drawing import (
    CAVEAT_STYLE,
    DPI,
    FOOTER_STYLE,
    PANEL_TITLE_STYLE,
    TITLE_STYLE,
    apply_colormap,
    bar_size,
    bar_tile,
    draw_text,
    note_tile,
    paste,
    text_width,
    to_uint8,
)
from cxrnet.report.overlay_content import (
    CAVEAT_COLOR,
    DISCLAIMER,
    DISPLAY_SIZE,
    EXPLANATION_CMAP,
    GAP,
    HEAT_ALPHA,
    INFECTION_CMAP,
    LINE,
    LUNG_COLOR,
    MARGIN,
    MAX_CAVEATS,
    MIN_HEAT,
    TEXT,
    TINT_ALPHA,
    UNTRAINED_TEXT,
    PanelContents,
    caveat_lines,
    ellipsize,
    headings,
    panel_contents,
    text_lines,
    title_line,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cxrnet.prediction import Prediction

__all__ = [
    "CAVEAT_COLOR",
    "DISCLAIMER",
    "DISPLAY_SIZE",
    "DPI",
    "EXPLANATION_CMAP",
    "HEAT_ALPHA",
    "INFECTION_CMAP",
    "LUNG_COLOR",
    "MAX_CAVEATS",
    "MIN_HEAT",
    "PNG_PARAMS",
    "UNTRAINED_TEXT",
    "overlay_figure",
    "render_overlay",
]

# The PNG of render_overlay, in pixels: the figure's layout at DPI, but each image panel display_size square.
MARGIN_PX = round(MARGIN * DPI)
GAP_PX = round(GAP * DPI)
TEXT_PX = round(TEXT * DPI)  # width of the text column, widened for longer lines
LINE_PX = round(LINE * DPI)
TITLE_PX = 24
HEADING_PX = 22
FOOTER_PX = 20
# zlib level 1 with the "up" filter, through OpenCV: measured on a 512 px preview, half the time of Pillow's
# compress_level=1 (which tries every filter on each row) for the same size. Level 0 takes a third of the
# time but writes 7x the bytes; levels 2 and 3 save 6% and 14% of the bytes for 5% and 45% more time.
PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP)

# The canvas is BGR, OpenCV's order, which the PNG encoder takes as it is.
_LUNG_BGR = ImageColor.getrgb(LUNG_COLOR)[::-1]
_CAVEAT_RGB = ImageColor.getrgb(CAVEAT_COLOR)
_CAVEAT_BGR = _CAVEAT_RGB[::-1]


def _panel_shape(contents: PanelContents, size: int) -> tuple[int, int]:
    """Height and width of the image in a ``size`` square panel: aspect kept, a strip stretched to fill it."""
    h, w = contents.image.shape
    if contents.stretched:
        return size, size
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _lung_marks(lungs: np.ndarray, height: int, width: int) -> tuple[np.ndarray, bool] | None:
    """``(mask, is_tint)``: the lung outline's pixels (uint8 0/1) in a panel image of ``height`` x ``width``,
    or a tint's where the image is too small for a contour (fewer than 2x2 pixels); ``None``: no lungs."""
    inside = lungs > 0.5
    if not inside.any():
        return None
    if min(lungs.shape) >= 2 and not inside.all():
        if lungs.shape != (height, width):
            lungs = resize(lungs, height, width, kind="map")
        mask = (lungs > 0.5).view(np.uint8)
        # Two pixels across the mask's edge, about matplotlib's 1.2 pt line; none along the image border.
        # OpenCV's 3x3 dilation and erosion: the same pixels as skimage.morphology's, 25x faster, and a
        # contour traced by skimage.measure.find_contours then drawn costs 100x more per panel.
        return cv2.absdiff(cv2.dilate(mask, None), cv2.erode(mask, None)), False
    return resize(inside.view(np.uint8), height, width, kind="nearest"), True


def _draw_panel(
    out: np.ndarray,
    gray: np.ndarray,
    heat: np.ndarray | None,
    cmap: str,
    shape: tuple[int, int],
    lungs: tuple[np.ndarray, bool] | None,
) -> None:
    """Fill ``out``, a white square of the canvas: the radiograph (``gray``, uint8 at the display shape),
    ``heat`` over it, resized to ``shape`` and centred, then the ``lungs`` of :func:`_lung_marks`."""
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if heat is not None:
        color = apply_colormap(to_uint8(heat), cmap)
        mixed = cv2.addWeighted(bgr, 1.0 - HEAT_ALPHA, color, HEAT_ALPHA, 0.0)
        cv2.copyTo(mixed, (heat >= MIN_HEAT).view(np.uint8), bgr)
    (h, w), (th, tw) = gray.shape, shape
    if (th, tw) != (h, w):
        # Nearest for images of a few pixels: bilinear would smear one pixel over the whole panel.
        bgr = resize(bgr, th, tw, kind="image" if min(h, w) >= 8 else "nearest")
    if lungs is not None:
        mask, tint = lungs
        lung = cv2.merge([np.full(mask.shape, c, np.uint8) for c in _LUNG_BGR])
        if tint:
            lung = cv2.addWeighted(bgr, 1.0 - TINT_ALPHA, lung, TINT_ALPHA, 0.0)
        cv2.copyTo(lung, mask, bgr)
    top, left = (out.shape[0] - th) // 2, (out.shape[1] - tw) // 2
    out[top : top + th, left : left + tw] = bgr


def _raster(image: np.ndarray, prediction: Prediction, title: str | None, display_size: int) -> np.ndarray:
    """The overlay as a BGR uint8 HxWx3 array, laid out like :func:`overlay_figure`."""
    contents = panel_contents(image, prediction, display_size)
    size = display_size
    lines = text_lines(prediction)
    caveats = [ellipsize(caveat, 160) for caveat in caveat_lines(prediction.caveats)]
    titles = headings(contents)
    # Panels narrower than their headings (a small display_size) are spaced by the headings instead.
    cell = max(size, *(text_width(heading, PANEL_TITLE_STYLE) for heading in titles))
    column = MARGIN_PX + 3 * (cell + GAP_PX)
    text_column = max(TEXT_PX, MARGIN_PX + max(text_width(text, style) for text, style in lines))
    text_top = MARGIN_PX + TITLE_PX
    panel_top = text_top + HEADING_PX
    body = max(panel_top + size + bar_size(size)[-1], text_top + LINE_PX * len(lines))
    width = column + text_column + MARGIN_PX
    height = body + LINE_PX * len(caveats) + FOOTER_PX + MARGIN_PX
    canvas = np.full((height, width, 3), 255, np.uint8)

    gray = to_uint8(contents.image)
    shape = _panel_shape(contents, size)
    lungs = None if contents.lungs is None else _lung_marks(contents.lungs, *shape)
    panels = (
        (None, "", None),
        (contents.infection, INFECTION_CMAP, "infection_map"),
        (contents.explanation, EXPLANATION_CMAP, "explanation"),
    )
    for i, (heading, (values, cmap, key)) in enumerate(zip(titles, panels)):
        left = MARGIN_PX + i * (cell + GAP_PX) + (cell - size) // 2
        square = canvas[panel_top : panel_top + size, left : left + size]
        _draw_panel(square, gray, values, cmap, shape, lungs if i < 2 else None)
        draw_text(canvas, (left + size / 2, panel_top - 6), heading, PANEL_TITLE_STYLE, anchor="ms")
        if key is None:
            continue
        if values is None:
            note, alpha = note_tile(UNTRAINED_TEXT[key], size, _CAVEAT_RGB)
            paste(square, (size - alpha.shape[1]) // 2, (size - alpha.shape[0]) // 2, alpha, note)
        else:
            bar = bar_tile(cmap, size)
            canvas[panel_top + size : panel_top + size + bar.shape[0], left : left + size] = bar

    for n, (text, style) in enumerate(lines):
        draw_text(canvas, (column, text_top + n * LINE_PX), text, style)
    heading = title_line(prediction, title, contents)
    draw_text(canvas, (width / 2, MARGIN_PX), heading, TITLE_STYLE, anchor="ma", once=True)
    for n, caveat in enumerate(caveats):
        draw_text(canvas, (width / 2, body + (n + 0.5) * LINE_PX), caveat, CAVEAT_STYLE, _CAVEAT_BGR, "mm")
    draw_text(canvas, (width / 2, height - MARGIN_PX), DISCLAIMER, FOOTER_STYLE, _CAVEAT_BGR, "md")
    return canvas


def render_overlay(
    image: np.ndarray,
    prediction: Prediction,
    path: str | Path,
    *,
    title: str | None = None,
    display_size: int = DISPLAY_SIZE,
) -> Path:
    """Write the four panels of :func:`overlay_figure` as a PNG to ``path`` (parent folders are created).

    Rasterised directly (no matplotlib), each image panel ``display_size`` pixels square. The file is
    written beside ``path`` and renamed into place, so a killed run never leaves half a PNG under its name.

    Args:
        image: float HxW radiograph in [0, 1]; any size (e.g. a preview): the maps are resized to it.
        prediction: the prediction for that image (maps at the original size).
        path: the PNG to write.
        title: heading, e.g. the file name; defaults to ``prediction.meta["source"]``.
        display_size: side of each image panel, in pixels.

    Returns:
        ``path``.
    """
    path = Path(path)
    ok, png = cv2.imencode(".png", _raster(image, prediction, title, display_size), PNG_PARAMS)
    if not ok:
        raise OSError(f"could not encode the overlay for {path} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    try:
        partial.write_bytes(png)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
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
    # Imported here: render_overlay, which predict's workers call, must not pay for matplotlib.
    from cxrnet.report.overlay_figure import draw_figure

    return draw_figure(image, prediction, title=title, display_size=display_size)
