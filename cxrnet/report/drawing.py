"""The overlay's look, rasterised: text styles and fonts, text, alpha blending, colour maps, colour bars and notes.

Pillow renders the text (in the DejaVu fonts that matplotlib ships), OpenCV the rest, on BGR uint8 canvases:
OpenCV's order, which the PNG encoder takes as it is. What repeats from one image to the next (headings,
colour bars, notes, the words of the text rows) is rendered once and cached. Text styles are written in
matplotlib's terms (``fontsize`` in points, ``weight``, ``style``, ``family``), so that
:mod:`cxrnet.report.overlay_figure` draws the same text with them.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

DPI = 100  # pixels per inch: the figure's resolution, and the scale of points to pixels in the PNG
TICKS_PX = 18  # colour bar tick marks and labels

# Text styles in matplotlib's terms (fontsize in points), used by both renderers.
TITLE_STYLE: dict[str, Any] = {"fontsize": 11}
PANEL_TITLE_STYLE: dict[str, Any] = {"fontsize": 10}
NOTE_STYLE: dict[str, Any] = {"fontsize": 11}
TICK_STYLE: dict[str, Any] = {"fontsize": 7}
CAVEAT_STYLE: dict[str, Any] = {"fontsize": 9, "weight": "bold"}
FOOTER_STYLE: dict[str, Any] = {"fontsize": 9, "style": "italic"}
HEADING_STYLE: dict[str, Any] = {"weight": "bold", "fontsize": 9}
ROW_STYLE: dict[str, Any] = {"family": "monospace", "fontsize": 9}

BLACK = (0, 0, 0)
_NOTE_PAD = 6
_CV2_COLORMAPS = {"inferno": cv2.COLORMAP_INFERNO, "viridis": cv2.COLORMAP_VIRIDIS}

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
# predict draws overlays in several threads, and a FreeType face must not be used by two at once: every
# use of a font goes through this lock (text is mostly drawn from the caches, so it is rarely contended).
_FONT_LOCK = threading.Lock()


@functools.cache
def _font_file(name: str, size: int) -> Font:
    # matplotlib's own DejaVu files, found without importing matplotlib.
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"
        try:
            return ImageFont.truetype(folder / name, size, layout_engine=ImageFont.Layout.BASIC)
        except OSError:
            pass
    return ImageFont.load_default(size)


def font_of(style: dict[str, Any]) -> Font:
    """The DejaVu font of a matplotlib text style (``family``, ``weight``, ``style``, ``fontsize`` in pt)."""
    family = "DejaVuSansMono" if style.get("family") == "monospace" else "DejaVuSans"
    bold, italic = style.get("weight") == "bold", style.get("style") == "italic"
    variant = ("Bold" if bold else "") + ("Oblique" if italic else "")
    return _font_file(
        f"{family}-{variant}.ttf" if variant else f"{family}.ttf", round(style.get("fontsize", 10) * DPI / 72)
    )


@functools.cache
def _advance(font: Font) -> float:
    with _FONT_LOCK:
        return font.getlength(" ")


def _render_text(text: str, font: Font, anchor: str = "la") -> tuple[np.ndarray, int, int]:
    """``text`` as an alpha mask (uint8 HxW), and the offset of its top-left corner from the anchor point."""
    with _FONT_LOCK:
        x0, y0, x1, y1 = (int(v) for v in font.getbbox(text, anchor=anchor))
        mask = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)))
        ImageDraw.Draw(mask).text((-x0, -y0), text, 255, font, anchor=anchor)
    return np.asarray(mask), x0, y0


_glyphs = functools.lru_cache(maxsize=4096)(_render_text)


def paste(canvas: np.ndarray, x: int, y: int, alpha: np.ndarray, ink: tuple[int, ...] | np.ndarray) -> None:
    """Blend ``ink`` (a BGR colour, or a BGR image shaped like ``alpha``) into ``canvas`` at (x, y), clipped."""
    h, w = alpha.shape
    top, left, bottom, right = max(y, 0), max(x, 0), min(y + h, canvas.shape[0]), min(x + w, canvas.shape[1])
    if top >= bottom or left >= right:
        return
    region = canvas[top:bottom, left:right]
    if ink is BLACK:  # exact on the white background all black text is drawn on, and a tenth of the time
        np.minimum(region, 255 - alpha[top - y : bottom - y, left - x : right - x, None], out=region)
        return
    weight = alpha[top - y : bottom - y, left - x : right - x, None] * np.float32(1 / 255)
    if isinstance(ink, np.ndarray):
        ink = ink[top - y : bottom - y, left - x : right - x]
    region[...] = region + (np.asarray(ink, np.float32) - region) * weight + 0.5


def _monospaced(style: dict[str, Any]) -> bool:
    return style.get("family") == "monospace"


def text_width(text: str, style: dict[str, Any]) -> int:
    """Width of ``text`` drawn in ``style``, in pixels."""
    if not text:
        return 0
    if _monospaced(style):
        return round(len(text) * _advance(font_of(style)))
    mask, x0, _ = _glyphs(text, font_of(style))
    return x0 + mask.shape[1]


def draw_text(
    canvas: np.ndarray,
    xy: tuple[float, float],
    text: str,
    style: dict[str, Any],
    ink: tuple[int, ...] = BLACK,
    anchor: str = "la",
    *,
    once: bool = False,
) -> None:
    """Draw ``text`` at ``xy`` (a Pillow anchor); ``once``: a string of this image only, left out of the cache."""
    font = font_of(style)
    x, y = round(xy[0]), round(xy[1])
    if _monospaced(style) and anchor == "la":
        # The rows change with every image: drawn word by word from the cache, each word at its column.
        for word in re.finditer(r"\S+", text):
            mask, dx, dy = _glyphs(word.group(), font)
            paste(canvas, x + round(word.start() * _advance(font)) + dx, y + dy, mask, ink)
        return
    mask, dx, dy = (_render_text if once else _glyphs)(text, font, anchor)
    paste(canvas, x + dx, y + dy, mask, ink)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Float values in [0, 1] as uint8 0-255, rounded and saturated."""
    return cv2.convertScaleAbs(values, alpha=255.0)


def apply_colormap(values: np.ndarray, cmap: str) -> np.ndarray:
    """uint8 HxW ``values`` as BGR colours of the matplotlib colour map ``cmap`` ("inferno" or "viridis")."""
    return cv2.applyColorMap(values, _CV2_COLORMAPS[cmap])


def bar_size(size: int) -> tuple[int, int, int, int, int]:
    """Colour bar geometry under a ``size`` panel, as in the matplotlib figure: gap above, height, left,
    width, and the band's total height (ticks and labels included)."""
    gap, height = round(0.035 * size), max(3, round(0.035 * size))
    return gap, height, round(0.15 * size), max(2, round(0.7 * size)), gap + height + TICKS_PX


@functools.lru_cache(maxsize=16)
def bar_tile(cmap: str, size: int) -> np.ndarray:
    """The colour bar under a heat panel, ticks at 0, 0.5 and 1: an opaque BGR tile, ``size`` wide."""
    gap, height, left, width, band = bar_size(size)
    tile = np.full((band, size, 3), 255, np.uint8)
    ramp = np.linspace(0, 255, width).round().astype(np.uint8)[None, :]
    tile[gap : gap + height, left : left + width] = apply_colormap(ramp, cmap)
    cv2.rectangle(tile, (left, gap), (left + width - 1, gap + height - 1), BLACK, 1)
    for tick, label in ((0.0, "0"), (0.5, "0.5"), (1.0, "1")):
        x = left + round(tick * (width - 1))
        cv2.line(tile, (x, gap + height), (x, gap + height + 2), BLACK, 1)
        draw_text(tile, (x, gap + height + 3), label, TICK_STYLE, anchor="ma")
    tile.flags.writeable = False
    return tile


def _wrapped(text: str, font: Font, width: float) -> str:
    """``text`` wrapped to ``width`` pixels in ``font``; the caller holds :data:`_FONT_LOCK`."""
    lines = [""]
    for word in text.split():
        longer = f"{lines[-1]} {word}".strip()
        if lines[-1] and font.getlength(longer) > width:
            lines.append(word)
        else:
            lines[-1] = longer
    return "\n".join(lines)


@functools.lru_cache(maxsize=16)
def note_tile(text: str, size: int, fill: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A note, white on an opaque rounded box of RGB colour ``fill``: BGR and alpha, wrapped to ``size``."""
    font, pad = font_of(NOTE_STYLE), _NOTE_PAD
    with _FONT_LOCK:
        text = _wrapped(text, font, size - 4 * pad)
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        x0, y0, x1, y1 = probe.multiline_textbbox((0, 0), text, font=font, anchor="mm", align="center")
        tile = Image.new("RGBA", (int(x1 - x0) + 2 * pad, int(y1 - y0) + 2 * pad))
        draw = ImageDraw.Draw(tile)
        draw.rounded_rectangle((0, 0, tile.width - 1, tile.height - 1), pad, (*fill, 255))
        draw.multiline_text((pad - x0, pad - y0), text, "white", font, anchor="mm", align="center")
    rgba = np.asarray(tile)
    return np.ascontiguousarray(rgba[..., 2::-1]), rgba[..., 3]
