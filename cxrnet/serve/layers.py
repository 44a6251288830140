"""The pictures of one prediction as the browser composites them: the radiograph and transparent layers.

Each layer is a PNG of the preview's size (the radiograph shrunk to the viewer's ``preview_size``), drawn with
the look of the predict overlay (:mod:`cxrnet.report.overlay_content`: lung colour, colour maps, the heat
threshold below which a map is transparent), so the page and ``cxrnet.predict``'s overlays read alike:

- ``lung``: the predicted lung contour, opaque on a transparent background;
- ``infection`` and ``explanation``: the heatmaps, transparent where the map is below
  :data:`~cxrnet.report.overlay_content.MIN_HEAT` (the page sets their opacity);
- ``zones``: the borders between the six Brixia-like zones of :func:`cxrnet.lung_regions.lung_zones`, with
  the zones' centres for the page to write each zone's score on.

Masks for download are written at the image's original size, 0 or 255.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import ImageColor

from cxrnet.lung_regions import lung_zones, split_lungs
from cxrnet.report.drawing import apply_colormap, to_uint8
from cxrnet.report.overlay import PNG_PARAMS
from cxrnet.report.overlay_content import EXPLANATION_CMAP, INFECTION_CMAP, LUNG_COLOR, MIN_HEAT
from cxrnet.severity import ZONE_NAMES

__all__ = [
    "LAYERS",
    "ZONE_COLOR",
    "contour_layer",
    "encode_png",
    "heat_layer",
    "image_png",
    "mask_png",
    "zone_layer",
]

LAYERS = ("lung", "infection", "explanation", "zones")
"""Layer names, bottom to top."""

ZONE_COLOR = "#ffffff"
_LUNG_BGR = ImageColor.getrgb(LUNG_COLOR)[::-1]
_ZONE_BGR = ImageColor.getrgb(ZONE_COLOR)[::-1]
_ZONE_ALPHA = 200


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 HxW, HxWx3 (BGR) or HxWx4 (BGRA) pixels as PNG bytes (the predict overlay's fast settings)."""
    ok, png = cv2.imencode(".png", pixels, PNG_PARAMS)
    if not ok:
        raise OSError(f"could not encode a {pixels.shape} image as PNG")
    return png.tobytes()


def image_png(image: np.ndarray) -> bytes:
    """The radiograph (float32 HxW in [0, 1]) as an 8-bit grayscale PNG."""
    return encode_png(to_uint8(image))


def _line_width(shape: tuple[int, ...]) -> int:
    """Odd kernel size giving lines about 2 px wide when the preview is shown 500 px across."""
    return max(3, 2 * round(max(shape[:2]) / 500) + 1)


def _layer(marks: np.ndarray, bgr: tuple[int, ...], alpha: int = 255) -> np.ndarray:
    """BGRA layer: colour ``bgr`` where ``marks`` (bool HxW), transparent elsewhere."""
    out = np.zeros((*marks.shape, 4), np.uint8)
    out[marks] = (*bgr, alpha)
    return out


def contour_layer(lungs: np.ndarray) -> np.ndarray:
    """BGRA layer of the outline of ``lungs`` (float or bool HxW, lung where > 0.5)."""
    mask = (np.asarray(lungs) > 0.5).view(np.uint8)
    kernel = np.ones((_line_width(mask.shape),) * 2, np.uint8)
    # The predict overlay's outline (dilation minus erosion), widened for a large preview.
    edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, kernel) > 0
    return _layer(edge, _LUNG_BGR)


def heat_layer(values: np.ndarray, cmap: str) -> np.ndarray:
    """BGRA heatmap of ``values`` (float HxW in [0, 1]) in the colour map ``cmap``; transparent below MIN_HEAT."""
    out = np.zeros((*values.shape, 4), np.uint8)
    out[..., :3] = apply_colormap(to_uint8(values), cmap)
    out[..., 3] = np.where(values >= MIN_HEAT, 255, 0)
    return out


def zone_layer(lungs: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The six zones of ``lungs`` (float or bool HxW): a BGRA layer of their borders, and where each lies.

    Returns:
        ``(layer, zones)``; ``zones`` holds, per zone of :data:`~cxrnet.severity.ZONE_NAMES`, ``zone``, and
        ``x``, ``y``: its centre as fractions of the width and height (``None`` for a zone that is empty).
    """
    mask = np.asarray(lungs) > 0.5
    right, left = split_lungs(mask)
    labels = np.zeros(mask.shape, np.uint8)
    for number, zone in enumerate((*lung_zones(right), *lung_zones(left)), start=1):
        labels[zone] = number
    h, w = mask.shape
    zones = []
    for number, name in enumerate(ZONE_NAMES, start=1):
        rows, cols = np.nonzero(labels == number)
        if rows.size == 0:
            zones.append({"zone": name, "x": None, "y": None})
            continue
        zones.append({"zone": name, "x": float((cols.mean() + 0.5) / w), "y": float((rows.mean() + 0.5) / h)})
    kernel = np.ones((_line_width(mask.shape),) * 2, np.uint8)
    high, low = cv2.dilate(labels, kernel), cv2.erode(labels, kernel)
    # Borders between two zones only: where the erosion reaches the background it is the lung's own outline.
    borders = (high != low) & (low > 0)
    return _layer(borders, _ZONE_BGR, _ZONE_ALPHA), zones


def mask_png(mask: np.ndarray) -> bytes:
    """A bool HxW mask as an 8-bit PNG, 255 inside and 0 outside."""
    return encode_png(np.where(np.asarray(mask, dtype=bool), np.uint8(255), np.uint8(0)))


COLOR_MAPS = {"infection": INFECTION_CMAP, "explanation": EXPLANATION_CMAP}
"""The colour map of each heatmap layer."""
