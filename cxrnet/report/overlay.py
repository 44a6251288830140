"""One PNG per prediction: radiograph with lung contour, infection heatmap, explanation heatmap, and text.

:func:`render_overlay` rasterises the PNG directly, with OpenCV (resizing, colour maps, the lung contour)
and Pillow (text, in the DejaVu fonts that matplotlib ships): a few milliseconds per image, so
``cxrnet.predict`` keeps pace with the network; matplotlib is imported only when :func:`overlay_figure` is
called, which draws the same content on a matplotlib figure, for notebooks and reports.

Both shrink the maps to the display size first, so a 3000-pixel radiograph costs no more to draw than a
small one; images of one or two pixels, or a 30000x20 strip (shown stretched), are drawn too.

An output the model's training never supervised (:attr:`~cxrnet.inference.Prediction.untrained`) is not
drawn: its panel or text says which head is untrained instead. The model's caveats (e.g. trained on
synthetic phantoms only) are printed in red above the footer.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
# The PNG of render_overlay, in pixels: the figure's layout at DPI, but each image panel display_size square.
MARGIN_PX = round(MARGIN * DPI)
GAP_PX = round(GAP * DPI)
TEXT_PX = round(TEXT * DPI)  # width of the text column, widened for longer lines
LINE_PX = round(LINE * DPI)
TITLE_PX = 24
HEADING_PX = 22
TICKS_PX = 18  # colour bar tick marks and labels
FOOTER_PX = 20
# zlib level 1 with the "up" filter, through OpenCV: measured on a 512 px preview, half the time of Pillow's
# compress_level=1 (which tries every filter on each row) for the same size. Level 0 takes a third of the
# time but writes 7x the bytes; levels 2 and 3 save 6% and 14% of the bytes for 5% and 45% more time.
PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP)

# Text styles in matplotlib's terms (fontsize in points), used by both renderers.
_TITLE: dict[str, Any] = {"fontsize": 11}
_PANEL_TITLE: dict[str, Any] = {"fontsize": 10}
_NOTE: dict[str, Any] = {"fontsize": 11}
_TICK: dict[str, Any] = {"fontsize": 7}
_CAVEAT: dict[str, Any] = {"fontsize": 9, "weight": "bold"}
_FOOTER: dict[str, Any] = {"fontsize": 9, "style": "italic"}
_LUNG_RGB = ImageColor.getrgb(LUNG_COLOR)
_CAVEAT_RGB = ImageColor.getrgb(CAVEAT_COLOR)
_TINT_ALPHA = 0.35
_CV2_COLORMAPS = {"inferno": cv2.COLORMAP_INFERNO, "viridis": cv2.COLORMAP_VIRIDIS}


def _fit(array: np.ndarray, height: int, width: int, *, smooth: bool = False) -> np.ndarray:
    """``array`` resized to ``height`` x ``width``, as float32.

    ``smooth``: sampled bilinearly when shrinking too. For the maps, which are upsampled from the network's
    output to the original size: sampling them loses nothing that area averaging (which the radiograph
    needs) would keep, and area averaging a 2000-pixel map costs ~50x more.
    """
    if array.shape == (height, width):
        return array.astype(np.float32, copy=False)
    shrinking = height < array.shape[0] or width < array.shape[1]
    interpolation = cv2.INTER_AREA if shrinking and not smooth else cv2.INTER_LINEAR
    if array.dtype == bool:  # as 0/1 bytes: a quarter of the memory traffic of float32
        return cv2.resize(array.view(np.uint8), (width, height), interpolation=interpolation).astype(
            np.float32
        )
    return cv2.resize(array.astype(np.float32, copy=False), (width, height), interpolation=interpolation)


def _stretched(height: int, width: int) -> bool:
    return max(height, width) > MAX_ASPECT * min(height, width)


def _display_shape(height: int, width: int, size: int) -> tuple[int, int]:
    if _stretched(height, width):
        # Drawn stretched to a square panel: shrinking both sides alike would leave a 384x1 sliver.
        return min(height, size), min(width, size)
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class _Shown(NamedTuple):
    """What the panels draw, at the display shape: float32 in [0, 1]; ``None`` for a map not drawn."""

    image: np.ndarray
    lungs: np.ndarray | None
    infection: np.ndarray | None
    explanation: np.ndarray | None
    stretched: bool


def _shown(image: np.ndarray, prediction: Prediction, display_size: int) -> _Shown:
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"overlay image must be a non-empty HxW array, got shape {image.shape}")
    h, w = _display_shape(*image.shape, display_size)

    def fitted(values: np.ndarray | None, key: str) -> np.ndarray | None:
        # Withheld (None) or flagged (kept with keep_untrained): either way, not drawn.
        if values is None or key in prediction.untrained:
            return None
        return np.clip(_fit(values, h, w, smooth=True), 0.0, 1.0)

    return _Shown(
        np.clip(_fit(image, h, w), 0.0, 1.0),
        fitted(prediction.lung_mask, "lung_mask"),
        fitted(prediction.infection_map, "infection_map"),
        fitted(prediction.explanation, "explanation"),
        _stretched(*image.shape),
    )


def _headings(shown: _Shown) -> tuple[str, str, str]:
    first = (
        "radiograph + lung contour"
        if shown.lungs is not None
        else f"radiograph ({UNTRAINED_TEXT['lung_mask']})"
    )
    return first, "infection probability", "explanation map"


def _title(prediction: Prediction, title: str | None, shown: _Shown) -> str:
    heading = title if title is not None else str(prediction.meta.get("source", ""))
    h, w = shown.image.shape
    size = f"{prediction.meta.get('width', w)}x{prediction.meta.get('height', h)} px"
    if shown.stretched:
        size += ", shown stretched"
    return _ellipsize(f"{heading}   ({size})", 120)


def _ellipsize(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


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


# --- the PNG, rasterised with OpenCV and Pillow -------------------------------------------------------
# The canvas is BGR, OpenCV's order, which the PNG encoder takes as it is. What repeats from one image to
# the next (headings, colour bars, notes, the words of the text rows) is rendered once and cached.

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_BLACK = (0, 0, 0)
_LUNG_BGR = _LUNG_RGB[::-1]
_CAVEAT_BGR = _CAVEAT_RGB[::-1]
_NOTE_PAD = 6


@functools.cache
def _font_file(name: str, size: int) -> _Font:
    # matplotlib's own DejaVu files, found without importing matplotlib.
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"
        try:
            return ImageFont.truetype(folder / name, size, layout_engine=ImageFont.Layout.BASIC)
        except OSError:
            pass
    return ImageFont.load_default(size)


def _font(style: dict[str, Any]) -> _Font:
    """The DejaVu font of a matplotlib text style (``family``, ``weight``, ``style``, ``fontsize`` in pt)."""
    family = "DejaVuSansMono" if style.get("family") == "monospace" else "DejaVuSans"
    bold, italic = style.get("weight") == "bold", style.get("style") == "italic"
    variant = ("Bold" if bold else "") + ("Oblique" if italic else "")
    return _font_file(
        f"{family}-{variant}.ttf" if variant else f"{family}.ttf", round(style.get("fontsize", 10) * DPI / 72)
    )


@functools.cache
def _advance(font: _Font) -> float:
    return font.getlength(" ")


def _render_text(text: str, font: _Font, anchor: str = "la") -> tuple[np.ndarray, int, int]:
    """``text`` as an alpha mask (uint8 HxW), and the offset of its top-left corner from the anchor point."""
    x0, y0, x1, y1 = (int(v) for v in font.getbbox(text, anchor=anchor))
    mask = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)))
    ImageDraw.Draw(mask).text((-x0, -y0), text, 255, font, anchor=anchor)
    return np.asarray(mask), x0, y0


_glyphs = functools.lru_cache(maxsize=4096)(_render_text)


def _paste(canvas: np.ndarray, x: int, y: int, alpha: np.ndarray, ink: tuple[int, ...] | np.ndarray) -> None:
    """Blend ``ink`` (a BGR colour, or a BGR image shaped like ``alpha``) into ``canvas`` at (x, y), clipped."""
    h, w = alpha.shape
    top, left, bottom, right = max(y, 0), max(x, 0), min(y + h, canvas.shape[0]), min(x + w, canvas.shape[1])
    if top >= bottom or left >= right:
        return
    region = canvas[top:bottom, left:right]
    if ink is _BLACK:  # exact on the white background all black text is drawn on, and a tenth of the time
        np.minimum(region, 255 - alpha[top - y : bottom - y, left - x : right - x, None], out=region)
        return
    weight = alpha[top - y : bottom - y, left - x : right - x, None] * np.float32(1 / 255)
    if isinstance(ink, np.ndarray):
        ink = ink[top - y : bottom - y, left - x : right - x]
    region[...] = region + (np.asarray(ink, np.float32) - region) * weight + 0.5


def _monospaced(style: dict[str, Any]) -> bool:
    return style.get("family") == "monospace"


def _text_width(text: str, style: dict[str, Any]) -> int:
    if not text:
        return 0
    if _monospaced(style):
        return round(len(text) * _advance(_font(style)))
    mask, x0, _ = _glyphs(text, _font(style))
    return x0 + mask.shape[1]


def _text(
    canvas: np.ndarray,
    xy: tuple[float, float],
    text: str,
    style: dict[str, Any],
    ink: tuple[int, ...] = _BLACK,
    anchor: str = "la",
    *,
    once: bool = False,
) -> None:
    """Draw ``text`` at ``xy`` (a Pillow anchor); ``once``: a string of this image only, left out of the cache."""
    font = _font(style)
    x, y = round(xy[0]), round(xy[1])
    if _monospaced(style) and anchor == "la":
        # The rows change with every image: drawn word by word from the cache, each word at its column.
        for word in re.finditer(r"\S+", text):
            mask, dx, dy = _glyphs(word.group(), font)
            _paste(canvas, x + round(word.start() * _advance(font)) + dx, y + dy, mask, ink)
        return
    mask, dx, dy = (_render_text if once else _glyphs)(text, font, anchor)
    _paste(canvas, x + dx, y + dy, mask, ink)


def _bar_size(size: int) -> tuple[int, int, int, int, int]:
    """Colour bar geometry under a ``size`` panel, as in :func:`overlay_figure`: gap above, height,
    left, width, and the band's total height (ticks and labels included)."""
    gap, height = round(0.035 * size), max(3, round(0.035 * size))
    return gap, height, round(0.15 * size), max(2, round(0.7 * size)), gap + height + TICKS_PX


@functools.lru_cache(maxsize=16)
def _bar_tile(cmap: str, size: int) -> np.ndarray:
    """The colour bar under a heat panel, ticks at 0, 0.5 and 1: an opaque BGR tile, ``size`` wide."""
    gap, height, left, width, band = _bar_size(size)
    tile = np.full((band, size, 3), 255, np.uint8)
    ramp = np.linspace(0, 255, width).round().astype(np.uint8)[None, :]
    tile[gap : gap + height, left : left + width] = cv2.applyColorMap(ramp, _CV2_COLORMAPS[cmap])
    cv2.rectangle(tile, (left, gap), (left + width - 1, gap + height - 1), _BLACK, 1)
    for tick, label in ((0.0, "0"), (0.5, "0.5"), (1.0, "1")):
        x = left + round(tick * (width - 1))
        cv2.line(tile, (x, gap + height), (x, gap + height + 2), _BLACK, 1)
        _text(tile, (x, gap + height + 3), label, _TICK, anchor="ma")
    tile.flags.writeable = False
    return tile


def _wrapped(text: str, font: _Font, width: float) -> str:
    lines = [""]
    for word in text.split():
        longer = f"{lines[-1]} {word}".strip()
        if lines[-1] and font.getlength(longer) > width:
            lines.append(word)
        else:
            lines[-1] = longer
    return "\n".join(lines)


@functools.lru_cache(maxsize=16)
def _note_tile(text: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An untrained panel's note, white on an opaque rounded red box: BGR and alpha, wrapped to ``size``."""
    font, pad = _font(_NOTE), _NOTE_PAD
    text = _wrapped(text, font, size - 4 * pad)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    x0, y0, x1, y1 = probe.multiline_textbbox((0, 0), text, font=font, anchor="mm", align="center")
    tile = Image.new("RGBA", (int(x1 - x0) + 2 * pad, int(y1 - y0) + 2 * pad))
    draw = ImageDraw.Draw(tile)
    draw.rounded_rectangle((0, 0, tile.width - 1, tile.height - 1), pad, (*_CAVEAT_RGB, 255))
    draw.multiline_text((pad - x0, pad - y0), text, "white", font, anchor="mm", align="center")
    rgba = np.asarray(tile)
    return np.ascontiguousarray(rgba[..., 2::-1]), rgba[..., 3]


def _panel_shape(shown: _Shown, size: int) -> tuple[int, int]:
    """Height and width of the image in a ``size`` square panel: aspect kept, a strip stretched to fill it."""
    h, w = shown.image.shape
    if shown.stretched:
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
            lungs = cv2.resize(lungs, (width, height), interpolation=cv2.INTER_LINEAR)
        mask = (lungs > 0.5).view(np.uint8)
        # Two pixels across the mask's edge, about matplotlib's 1.2 pt line; none along the image border.
        return cv2.absdiff(cv2.dilate(mask, None), cv2.erode(mask, None)), False
    tint = cv2.resize(inside.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return tint, True


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
        color = cv2.applyColorMap(_to_uint8(heat), _CV2_COLORMAPS[cmap])
        mixed = cv2.addWeighted(bgr, 1.0 - HEAT_ALPHA, color, HEAT_ALPHA, 0.0)
        cv2.copyTo(mixed, (heat >= MIN_HEAT).view(np.uint8), bgr)
    (h, w), (th, tw) = gray.shape, shape
    if (th, tw) != (h, w):
        # Nearest for images of a few pixels: bilinear would smear one pixel over the whole panel.
        smooth = cv2.INTER_LINEAR if min(h, w) >= 8 else cv2.INTER_NEAREST
        bgr = cv2.resize(bgr, (tw, th), interpolation=smooth)
    if lungs is not None:
        mask, tint = lungs
        lung = cv2.merge([np.full(mask.shape, c, np.uint8) for c in _LUNG_BGR])
        if tint:
            lung = cv2.addWeighted(bgr, 1.0 - _TINT_ALPHA, lung, _TINT_ALPHA, 0.0)
        cv2.copyTo(lung, mask, bgr)
    top, left = (out.shape[0] - th) // 2, (out.shape[1] - tw) // 2
    out[top : top + th, left : left + tw] = bgr


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return cv2.convertScaleAbs(values, alpha=255.0)


def _raster(image: np.ndarray, prediction: Prediction, title: str | None, display_size: int) -> np.ndarray:
    """The overlay as a BGR uint8 HxWx3 array, laid out like :func:`overlay_figure`."""
    shown = _shown(image, prediction, display_size)
    size = display_size
    lines = _text_lines(prediction)
    caveats = [_ellipsize(caveat, 160) for caveat in _caveat_lines(prediction.caveats)]
    headings = _headings(shown)
    # Panels narrower than their headings (a small display_size) are spaced by the headings instead.
    cell = max(size, *(_text_width(heading, _PANEL_TITLE) for heading in headings))
    column = MARGIN_PX + 3 * (cell + GAP_PX)
    text_width = max(TEXT_PX, MARGIN_PX + max(_text_width(text, style) for text, style in lines))
    text_top = MARGIN_PX + TITLE_PX
    panel_top = text_top + HEADING_PX
    body = max(panel_top + size + _bar_size(size)[-1], text_top + LINE_PX * len(lines))
    width = column + text_width + MARGIN_PX
    height = body + LINE_PX * len(caveats) + FOOTER_PX + MARGIN_PX
    canvas = np.full((height, width, 3), 255, np.uint8)

    gray = _to_uint8(shown.image)
    shape = _panel_shape(shown, size)
    lungs = None if shown.lungs is None else _lung_marks(shown.lungs, *shape)
    panels = (
        (None, "", None),
        (shown.infection, INFECTION_CMAP, "infection_map"),
        (shown.explanation, EXPLANATION_CMAP, "explanation"),
    )
    for i, (heading, (values, cmap, key)) in enumerate(zip(headings, panels)):
        left = MARGIN_PX + i * (cell + GAP_PX) + (cell - size) // 2
        square = canvas[panel_top : panel_top + size, left : left + size]
        _draw_panel(square, gray, values, cmap, shape, lungs if i < 2 else None)
        _text(canvas, (left + size / 2, panel_top - 6), heading, _PANEL_TITLE, anchor="ms")
        if key is None:
            continue
        if values is None:
            note, alpha = _note_tile(UNTRAINED_TEXT[key], size)
            _paste(square, (size - alpha.shape[1]) // 2, (size - alpha.shape[0]) // 2, alpha, note)
        else:
            bar = _bar_tile(cmap, size)
            canvas[panel_top + size : panel_top + size + bar.shape[0], left : left + size] = bar

    for n, (text, style) in enumerate(lines):
        _text(canvas, (column, text_top + n * LINE_PX), text, style)
    _text(canvas, (width / 2, MARGIN_PX), _title(prediction, title, shown), _TITLE, anchor="ma", once=True)
    for n, caveat in enumerate(caveats):
        _text(canvas, (width / 2, body + (n + 0.5) * LINE_PX), caveat, _CAVEAT, _CAVEAT_BGR, "mm")
    _text(canvas, (width / 2, height - MARGIN_PX), DISCLAIMER, _FOOTER, _CAVEAT_BGR, "md")
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


# --- the matplotlib figure, for notebooks and reports --------------------------------------------------


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
    tint[inside] = (*(c / 255 for c in _LUNG_RGB), _TINT_ALPHA)
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
        **_NOTE,
    )


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = _shown(image, prediction, display_size)
    h, w = shown.image.shape
    # Caveat lines get their own room below the colour bars, above the footer.
    caveats = _caveat_lines(prediction.caveats)
    lift = LINE * len(caveats)
    fig_height, bottom = FIG_HEIGHT + lift, BOTTOM + lift
    fig = Figure(figsize=(FIG_WIDTH, fig_height), dpi=DPI)
    FigureCanvasAgg(fig)
    panels = [
        fig.add_axes(_box(MARGIN + i * (PANEL + GAP), bottom, PANEL, PANEL, fig_height)) for i in range(3)
    ]
    for ax, heading in zip(panels, _headings(shown)):
        # Nearest for images of a few pixels: bilinear would smear one pixel over the whole panel.
        smooth = "bilinear" if min(h, w) >= 8 else "nearest"
        ax.imshow(shown.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation=smooth)
        ax.set_title(heading, **_PANEL_TITLE)
        ax.set_axis_off()
    if shown.lungs is not None:
        for ax in panels[:2]:
            _draw_lungs(ax, shown.lungs)
    for ax, values, cmap, key in (
        (panels[1], shown.infection, INFECTION_CMAP, "infection_map"),
        (panels[2], shown.explanation, EXPLANATION_CMAP, "explanation"),
    ):
        if values is None:
            _say_untrained(ax, UNTRAINED_TEXT[key])
            continue
        heat = ax.imshow(
            _masked_heat(values), cmap=cmap, vmin=0.0, vmax=1.0, alpha=HEAT_ALPHA, interpolation="bilinear"
        )
        bar_ax = ax.inset_axes((0.15, -0.07, 0.7, 0.035))
        fig.colorbar(heat, cax=bar_ax, orientation="horizontal", ticks=[0, 0.5, 1])
        bar_ax.tick_params(labelsize=_TICK["fontsize"], length=2, pad=1)

    if shown.stretched:
        for ax in panels:  # after every imshow: each one resets the aspect to "equal"
            ax.set_aspect("auto")

    text_ax = fig.add_axes(_box(MARGIN + 3 * (PANEL + GAP), bottom - 0.3, TEXT, PANEL + 0.55, fig_height))
    text_ax.set_axis_off()
    step = LINE / (PANEL + 0.55)
    for n, (line, style) in enumerate(_text_lines(prediction)):
        text_ax.text(0.0, 1.0 - n * step, line, transform=text_ax.transAxes, va="top", **style)

    fig.text(0.5, 1 - 0.12 / fig_height, _title(prediction, title, shown), ha="center", va="top", **_TITLE)
    fig.text(0.5, 0.1 / fig_height, DISCLAIMER, ha="center", va="bottom", color=CAVEAT_COLOR, **_FOOTER)
    for n, caveat in enumerate(caveats):
        fig.text(
            0.5,
            (0.1 + LINE * (n + 1.2)) / fig_height,
            _ellipsize(caveat, 160),
            ha="center",
            va="bottom",
            color=CAVEAT_COLOR,
            **_CAVEAT,
        )
    return fig
