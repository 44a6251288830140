"""Acquisition of a phantom (:mod:`cxrnet.data.phantoms`): text markers and devices, and the detector.

The overlays (burnt-in text, ECG electrodes with wires, tubes and lines) are shortcut bait, drawn from their
own random stream and never correlated with the class; :func:`render` turns a density map into the detector
image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from cxrnet.data._phantom_draw import F32

MARKER_TEXTS: tuple[str, ...] = ("L", "R", "PA", "AP", "PORTABLE", "ERECT", "SUPINE", "L  PA", "R AP")


def _px(size: int, x: float, y: float) -> tuple[float, float]:
    return ((x + 1) / 2 * size, (y + 1) / 2 * size)


def draw_overlays(
    rng: np.random.Generator,
    size: int,
    p_text: float,
    p_ecg: float,
    p_tube: float,
) -> np.ndarray:
    """Layer of text markers, ECG electrodes with wires, and tubes/lines; float32 ``(size, size)`` in [0, 1].

    Args:
        rng: generator for the overlay stream (kept separate from the label so overlays carry no class
            information).
        size: side of the image in pixels.
        p_text, p_ecg, p_tube: probabilities of a text marker, of ECG electrodes, of a tube or line.

    Returns:
        The layer; 1 is radio-opaque metal or burnt-in text, 0 is nothing.
    """
    # Decide everything first so that the number of draws does not depend on what is drawn.
    flags = rng.random(3) < np.array([p_text, p_ecg, p_tube])
    params = rng.random(24)
    if not flags.any():
        return np.zeros((size, size), F32)
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    line_w = max(1, round(size / 160))
    if flags[0]:
        text = MARKER_TEXTS[int(params[0] * len(MARKER_TEXTS))]
        font = ImageFont.load_default(size=max(8, round(size * (0.05 + 0.04 * params[1]))))
        corner = int(params[2] * 4)
        mx, my = 0.04 + 0.06 * params[3], 0.03 + 0.05 * params[4]
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx = mx * size if corner % 2 == 0 else size * (1 - mx) - (right - left)
        ty = my * size if corner < 2 else size * (1 - my) - (bottom - top)
        draw.text((tx - left, ty - top), text, fill=int(200 + 55 * params[5]), font=font)
    if flags[1]:
        n_electrodes = 1 + int(params[6] * 4)
        for k in range(n_electrodes):
            ex = -0.75 + 1.5 * params[7 + k]
            ey = -0.85 + 0.9 * params[11 + k]
            r = size * (0.018 + 0.01 * params[15])
            cx, cy = _px(size, ex, ey)
            # The wire leaves towards the nearer top corner, sagging on its way.
            end = _px(size, -1.05 if ex < 0 else 1.05, -1.05 + 0.5 * params[16 + k])
            mid = ((cx + end[0]) / 2, (cy + end[1]) / 2 + size * 0.05)
            draw.line([(cx, cy), mid, end], fill=150, width=line_w)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=170, outline=240, width=line_w)
    if flags[2]:
        t = np.linspace(0, 1, 12)
        if params[20] < 0.5:  # central venous line entering from a shoulder
            sx = -1.0 if params[21] < 0.5 else 1.0
            xs = sx * (0.95 - 0.85 * t) + 0.03 * np.sin(6 * t + 6 * params[22])
            ys = -0.75 + 0.15 * np.sin(np.pi * t) * (params[23] - 0.5) + 0.55 * t**2
        else:  # tube down the midline (endotracheal / nasogastric)
            xs = 0.04 * np.sin(3 * t + 6 * params[22]) + 0.05 * (params[21] - 0.5)
            ys = -1.05 + (0.9 + 0.9 * params[23]) * t
        pts = [_px(size, float(a), float(b)) for a, b in zip(xs, ys)]
        draw.line(pts, fill=190, width=line_w + 1, joint="curve")
    return np.asarray(layer, dtype=F32) * (1.0 / 255.0)


def render(
    dens: np.ndarray, rng: np.random.Generator, noise_rng: np.random.Generator, size: int, difficulty: float
) -> np.ndarray:
    """Density map → detector image: exposure curve, gamma, contrast, offset, blur, noise; in [0, 1]."""
    var = 0.5 + difficulty
    k = 1.7 + 0.25 * var * rng.standard_normal()
    # Python floats, not numpy float64 scalars, so that the arithmetic stays in float32.
    image = (1 - np.exp(-k * np.clip(dens, 0, None))) * float(1 / (1 - np.exp(-k * 0.85)))
    image = np.clip(image, 0, None) ** float(np.exp(0.12 * var * rng.standard_normal()))
    image = 0.04 + 0.03 * var * rng.random() + (0.9 + 0.08 * var * rng.standard_normal()) * image
    sigma = (0.6 + 0.6 * difficulty) * size / 256
    image = ndimage.gaussian_filter(image.astype(F32), sigma, truncate=2.5)
    sd_gauss, sd_quantum = 0.004 + 0.04 * difficulty, 0.003 + 0.025 * difficulty
    noise = noise_rng.standard_normal((2, size, size), dtype=F32)
    image = image + sd_gauss * noise[0] + sd_quantum * np.sqrt(np.clip(image, 0, None)) * noise[1]
    return np.clip(image, 0, 1).astype(F32)
