"""What the overlay of a prediction shows, whichever renderer draws it: layout, panels, headings and text.

Shared by the PNG (:func:`cxrnet.report.overlay.render_overlay`) and the matplotlib figure
(:mod:`cxrnet.report.overlay_figure`). The maps are shrunk to the display size first, so a 3000-pixel
radiograph costs no more to draw than a small one; an output the model's training never supervised is left
out and named instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cxrnet.data.transforms import resize
from cxrnet.report.drawing import HEADING_STYLE, ROW_STYLE

if TYPE_CHECKING:
    from cxrnet.prediction import Prediction

DISCLAIMER = "research software — not for clinical use"
DISPLAY_SIZE = 384  # longer side of each panel's image, in pixels
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
TINT_ALPHA = 0.35  # the lungs of an image too small for a contour
MAX_ASPECT = 4.0  # longer / shorter side beyond which panels are stretched to square (a strip is unreadable)
CAVEAT_COLOR = "#b00000"
MAX_CAVEATS = 4  # lines of caveats drawn (one per head at most)
UNTRAINED_TEXT = {
    "lung_mask": "lung head untrained",
    "infection_map": "infection head untrained",
    "explanation": "explanation untrained (no class labels)",
    "probabilities": "classifier untrained",
}

_BLANK: tuple[str, dict[str, Any]] = ("", {})


def _stretched(height: int, width: int) -> bool:
    return max(height, width) > MAX_ASPECT * min(height, width)


def _display_shape(height: int, width: int, size: int) -> tuple[int, int]:
    if _stretched(height, width):
        # Drawn stretched to a square panel: shrinking both sides alike would leave a 384x1 sliver.
        return min(height, size), min(width, size)
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class PanelContents(NamedTuple):
    """What the panels draw, at the display shape: float32 in [0, 1]; ``None`` for a map not drawn."""

    image: np.ndarray
    lungs: np.ndarray | None
    infection: np.ndarray | None
    explanation: np.ndarray | None
    stretched: bool


def panel_contents(image: np.ndarray, prediction: Prediction, display_size: int) -> PanelContents:
    """The radiograph and the drawn maps of ``prediction``, resized to the display shape of ``image``.

    Raises:
        ValueError: ``image`` is not a non-empty HxW array.
    """
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"overlay image must be a non-empty HxW array, got shape {image.shape}")
    h, w = _display_shape(*image.shape, display_size)

    def fitted(values: np.ndarray | None, key: str) -> np.ndarray | None:
        # Withheld (None) or flagged (kept with keep_untrained): either way, not drawn.
        if values is None or key in prediction.untrained:
            return None
        return np.clip(resize(values, h, w, kind="map"), 0.0, 1.0)

    return PanelContents(
        np.clip(resize(image.astype(np.float32, copy=False), h, w), 0.0, 1.0),
        fitted(prediction.lung_mask, "lung_mask"),
        fitted(prediction.infection_map, "infection_map"),
        fitted(prediction.explanation, "explanation"),
        _stretched(*image.shape),
    )


def headings(contents: PanelContents) -> tuple[str, str, str]:
    """The titles of the three image panels."""
    first = (
        "radiograph + lung contour"
        if contents.lungs is not None
        else f"radiograph ({UNTRAINED_TEXT['lung_mask']})"
    )
    return first, "infection probability", "explanation map"


def title_line(prediction: Prediction, title: str | None, contents: PanelContents) -> str:
    """The line above the panels: ``title`` (default: the source) and the image's size in pixels."""
    heading = title if title is not None else str(prediction.meta.get("source", ""))
    h, w = contents.image.shape
    size = f"{prediction.meta.get('width', w)}x{prediction.meta.get('height', h)} px"
    if contents.stretched:
        size += ", shown stretched"
    return ellipsize(f"{heading}   ({size})", 120)


def ellipsize(text: str, limit: int) -> str:
    """``text``, or its last ``limit`` - 1 characters after an ellipsis when longer than ``limit``."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _row(name: str, value: str) -> str:
    return f"  {name:<20s}{value:>9s}"


def _untrained_reason(prediction: Prediction) -> str:
    """Why the map-derived severity is withheld: the untrained head(s) it would come from."""
    heads = [UNTRAINED_TEXT[k] for k in ("lung_mask", "infection_map") if k in prediction.untrained]
    return ", ".join(heads) or "untrained"


def text_lines(prediction: Prediction) -> list[tuple[str, dict[str, Any]]]:
    """The text column: (line, text style) pairs."""
    untrained = prediction.untrained
    if prediction.label is None or "probabilities" in untrained:
        lines = [("Predicted: n/a", {"weight": "bold", "fontsize": 12}), _BLANK]
        lines.append((f"  {UNTRAINED_TEXT['probabilities']}", ROW_STYLE))
    else:
        lines = [(f"Predicted: {prediction.label}", {"weight": "bold", "fontsize": 12}), _BLANK]
        lines.append(("Class probabilities", HEADING_STYLE))
        for name, p in sorted(prediction.probabilities.items(), key=lambda kv: -kv[1]):
            lines.append((_row(name, f"{p:.1%}"), ROW_STYLE))
    maps = prediction.severity.get("from_maps", {})
    if "severity.from_maps" in untrained:
        # A number from a head that never learned would read as a finding: say why there is none.
        lines += [_BLANK, ("Severity from the maps", HEADING_STYLE)]
        lines += [("  not available:", ROW_STYLE), (f"  {_untrained_reason(prediction)}", ROW_STYLE)]
    elif maps:
        rows = [
            ("infected right lung", f"{maps['fraction_right']:.1%}"),
            ("infected left lung", f"{maps['fraction_left']:.1%}"),
            ("Brixia-like total", f"{maps['brixia_total']}/18"),
            ("geographic extent", f"{maps['geographic_extent']}/8"),
            ("grade", str(maps["grade"])),
        ]
        lines += [
            _BLANK,
            ("Severity from the maps", HEADING_STYLE),
            *((_row(k, v), ROW_STYLE) for k, v in rows),
        ]
    learned = prediction.severity.get("learned", {})
    unlearned = sorted(k.rsplit(".", 1)[1] for k in untrained if k.startswith("severity.learned."))
    if learned or unlearned:
        lines += [_BLANK, ("Severity, learned head", HEADING_STYLE)]
        lines += [
            (_row(name.replace("_", " "), f"{value:.1f}"), ROW_STYLE) for name, value in learned.items()
        ]
        lines += [(_row(name.replace("_", " "), "untrained"), ROW_STYLE) for name in unlearned]
    return lines


def caveat_lines(caveats: list[str]) -> list[str]:
    """The caveat lines drawn: all of them up to :data:`MAX_CAVEATS`, else the first ones and a count."""
    if len(caveats) <= MAX_CAVEATS:
        return list(caveats)
    rest = len(caveats) - MAX_CAVEATS + 1
    return [*caveats[: MAX_CAVEATS - 1], f"and {rest} more caveats (see the prediction's caveats)"]
