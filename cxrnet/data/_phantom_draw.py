"""Drawing for the synthetic chest X-ray phantoms (:mod:`cxrnet.data.phantoms`): shape primitives,
text markers and devices, the healthy anatomy as a density map, and the detector rendering.

Everything works in normalised image coordinates: ``x`` runs from -1 (image left) to +1 (image
right) along columns, ``y`` from -1 (top) to +1 (bottom) along rows, whatever the pixel size. A
shape drawn from the same random parameters therefore looks the same at 128 and at 512 pixels.
Coordinates come as broadcastable ``(1, N)`` / ``(N, 1)`` float32 arrays so that cheap expressions
never materialise a full grid.

Shapes are described by an approximate *signed distance* ``g`` (normalised units, positive inside):
a mask is ``g > 0`` and the rendered edge is a smooth function of ``g``, so the visible border of a
structure and its ground-truth mask coincide by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

F32 = np.float32


@lru_cache(maxsize=16)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` of shapes ``(size, 1)`` and ``(1, size)``, in [-1, 1]."""
    c = ((np.arange(size, dtype=F32) + 0.5) / size * 2 - 1).astype(F32)
    y, x = c[:, None].copy(), c[None, :].copy()
    y.flags.writeable = False  # cached and shared between calls
    x.flags.writeable = False
    return y, x


def smoothstep(t: np.ndarray | float) -> np.ndarray:
    """Cubic Hermite ramp: 0 for ``t <= 0``, 1 for ``t >= 1``, smooth in between."""
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


def soft_edge(g: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance ``g``: 0.5 on the border, ~1 deeper than ``width``."""
    return 0.5 + 0.5 * np.tanh(g * (1.0 / width))


def rotate(x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of ``(x, y)`` in a frame centred on ``(cx, cy)`` and turned by ``angle`` radians."""
    c, s = float(np.cos(angle)), float(np.sin(angle))
    dx, dy = x - cx, y - cy
    return (c * dx + s * dy).astype(F32), (-s * dx + c * dy).astype(F32)


def blob(
    u: np.ndarray,
    v: np.ndarray,
    a: np.ndarray | float,
    b: np.ndarray | float,
    p: float = 2.0,
    harmonics: np.ndarray | None = None,
) -> np.ndarray:
    """Signed distance (approximate, normalised units) of a perturbed superellipse.

    Args:
        u, v: coordinates relative to the centre, in the shape's own (possibly rotated) frame.
        a, b: semi-axes along ``u`` and ``v`` (arrays allow different semi-axes per side).
        p: superellipse exponent (2 = ellipse, larger = boxier).
        harmonics: ``(K, 3)`` rows ``(order, amplitude, phase)`` of a low-frequency radial perturbation
            ``r(θ) = 1 + Σ amplitude·cos(order·θ + phase)``, which makes the outline blobby.

    Returns:
        ``g`` broadcast from ``u`` and ``v``: positive inside, about the distance to the outline.
    """
    un, vn = np.abs(u / a), np.abs(v / b)
    f = np.sqrt(un * un + vn * vn) if p == 2.0 else (un**p + vn**p) ** (1.0 / p)
    if harmonics is not None and len(harmonics):
        theta = np.arctan2(v / b, u / a)
        r = 1.0
        for order, amp, phase in np.asarray(harmonics, dtype=float).tolist():
            r = r + amp * np.cos(order * theta + phase)
        f = f / r
    # Scaling by the semi-axis that dominates locally turns the level value into a distance.
    scale = np.where(un > vn, a, b)
    return ((1.0 - f) * scale).astype(F32)


def smooth_max(a: np.ndarray, b: np.ndarray, softness: float) -> np.ndarray:
    """Smooth union of two signed distances (a max with a rounded crease of about ``softness``)."""
    h = np.clip(1.0 - np.abs(a - b) * (1.0 / softness), 0, None)
    return (np.maximum(a, b) + (0.25 * softness) * h * h).astype(F32)


@lru_cache(maxsize=64)
def _spline_taps(size: int, knots: int) -> tuple[np.ndarray, np.ndarray]:
    """Knot indices and cubic B-spline weights, both ``(size, 4)``, mapping ``knots`` onto [-1, 1]."""
    y, _ = grid(size)
    t = (y[:, 0] + 1) / 2 * (knots - 3) + 1  # one knot of margin on each side
    base = np.floor(t).astype(np.intp)
    f = (t - base).astype(F32)[:, None]
    idx = np.clip(base[:, None] + np.arange(-1, 3), 0, knots - 1)
    w = np.concatenate(
        [(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], axis=1
    ) / F32(6)
    idx.flags.writeable = False
    w.flags.writeable = False
    return idx, w.astype(F32)


# Standard deviation of white noise smoothed by a 2-D cubic B-spline, averaged over knot phase
# ((151/315) per axis, the integral of the squared basis); dividing by it gives unit variance without
# a data-dependent normalisation, so the field does not depend on the pixel size.
_SPLINE_STD = float(151 / 315)


def smooth_field(rng: np.random.Generator, size: int, knots: int) -> np.ndarray:
    """Band-limited random field of (about) unit standard deviation, ``(size, size)`` float32.

    The random draws live on a ``(knots, knots)`` grid independent of ``size``, so a seed gives the same
    pattern at every resolution; ``knots`` sets the feature scale (about ``2 / knots`` image widths).
    Separable B-spline taps instead of a matrix product: BLAS threads stall when the CPU is shared.
    """
    idx, w = _spline_taps(size, knots)
    coarse = rng.standard_normal((knots, knots), dtype=F32)
    cols = (coarse[:, idx] * w).sum(axis=2)  # (knots, size)
    field = w[:, 0:1] * cols[idx[:, 0]]
    for k in range(1, 4):
        field += w[:, k : k + 1] * cols[idx[:, k]]
    return field * F32(1 / _SPLINE_STD)


def angular_streaks(
    rng: np.random.Generator, theta: np.ndarray, n_bins: int, sharpness: int = 3
) -> np.ndarray:
    """Thin radial lines: a random 1-D profile over the angle ``theta`` (radians), peaks sharpened.

    Used for vascular markings, perihilar streaks and air bronchograms, which all radiate from a hilum.
    """
    profile = rng.standard_normal(n_bins + 1).astype(F32)
    profile[-1] = profile[0]  # periodic in the angle
    angles = np.linspace(-np.pi, np.pi, n_bins + 1, dtype=F32)
    values = np.interp(theta.ravel(), angles, profile).reshape(theta.shape).astype(F32)
    values = np.clip(values, 0, None)
    out = values
    for _ in range(sharpness - 1):  # integer power by products: np.power is slow on float32
        out = out * values
    return out.astype(F32)


def periodic_bands(phase: np.ndarray, thickness: float) -> np.ndarray:
    """Flat-topped soft bands, one per integer step of ``phase``, each ``thickness`` (0-1) of a period."""
    frac = phase - np.floor(phase)
    d = np.abs(frac - 0.5 * thickness)
    d = np.minimum(d, 1.0 - d)  # wrap-around distance to the band centre
    d2 = (d * (2.0 / thickness)) ** 2
    return np.clip(1.0 - d2 * d2, 0, 1).astype(F32)


def curve_band(
    x: np.ndarray, y: np.ndarray, coeffs: tuple[float, float, float], half_width: float
) -> np.ndarray:
    """Bright band around the parabola ``y = c0 + c1·x + c2·x²`` (vertical distance, soft edges)."""
    c0, c1, c2 = coeffs
    d = (y - (c0 + c1 * x + c2 * x * x)) / half_width
    d2 = d * d
    return np.exp(-(d2 * d2)).astype(F32)


# --- overlays drawn with PIL: text markers and devices (shortcut bait, never class-correlated) ---------

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


# --- anatomy: a density map of the healthy chest, and the lungs the disease is drawn into ---------------


@dataclass
class Lung:
    """One lung of the anatomy. Arrays are (size, size) float32 unless noted; lengths are normalised."""

    side: int  # 1 = patient's right (image left), 2 = patient's left (image right)
    xi: np.ndarray  # (1, size) lateral coordinate: distance from the spine axis towards this lung's side
    g: np.ndarray  # signed distance to the lung outline (heart not removed)
    g_dome: np.ndarray  # signed distance to the diaphragm, positive above it
    med: float  # medial border, lateral coordinate at the dome's height
    lat: float  # lateral border
    top: float  # apex, y
    base: float  # costophrenic angle, y
    hilum: tuple[float, float]  # (xi, y)
    # Filled in once the heart is known:
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # visible lung field
    edge: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), F32))  # soft field, 0.5 on the border
    air: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), F32))  # air content (edge x depth)


def _lung(rng: np.random.Generator, size: int, side: int, spine: float, var: float, body_w: float) -> Lung:
    y, x = grid(size)
    s = -1.0 if side == 1 else 1.0
    xi = (s * (x - spine)).astype(F32)
    larger = 1.0 if side == 1 else 0.0  # the right lung is broader; its dome sits higher (liver)
    med = float(np.clip(0.12 + 0.02 * var * rng.standard_normal(), 0.075, 0.18))
    lat = float(np.clip(0.72 + 0.025 * larger + 0.035 * var * rng.standard_normal(), 0.6, body_w - 0.09))
    top = float(-0.70 + 0.035 * var * rng.standard_normal())
    base = float(0.50 - 0.035 * larger + 0.04 * var * rng.standard_normal())
    dome = float(np.clip(0.18 + 0.03 * var * rng.standard_normal(), 0.06, 0.22))
    p = 2.0 + 0.6 * rng.random()
    tilt = s * 0.04 * var * rng.standard_normal()
    m_slope = 0.05 * var * rng.standard_normal()
    harmonics = np.stack(
        [np.arange(2, 6), 0.02 * var * np.abs(rng.standard_normal(4)), 2 * np.pi * rng.random(4)], axis=1
    )
    xc, yc = med + 0.4 * (lat - med), base - 0.08
    u, v = rotate(xi, y, xc, yc, tilt)
    # Asymmetric semi-axes: the medial side overshoots so that the straight mediastinal border cuts
    # it; the lower side overshoots so that the dome cuts it while the lung is still wide.
    a = np.where(u > 0, F32(lat - xc), F32(xc - med + 0.1))
    b = np.where(v < 0, F32(yc - top), F32(0.6))
    g = blob(u, v, a, b, p, harmonics)
    xd = med + 0.45 * (lat - med)
    t = (xi - xd) / (lat - xd + 0.02)
    g_dome = base - dome * np.clip(1 - t * t, 0, None) - y
    g_med = xi - (med + m_slope * (y - yc))
    g = np.minimum(np.minimum(g, g_dome), g_med).astype(F32)
    hilum = (med + 0.09, top + 0.5 * (base - top))
    return Lung(side, xi, g, g_dome, med, lat, top, base, hilum)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def _bones(
    rng: np.random.Generator, size: int, spine: float, body_w: float, thickness: np.ndarray, var: float
) -> np.ndarray:
    """Density of ribs, clavicles and humeral heads."""
    y, x = grid(size)
    normal = rng.standard_normal
    ax = np.abs(x - spine)
    # Ribs are flat-topped bands periodic along a curved coordinate. Posterior ribs arch laterally
    # downwards (y = y0 - c1·|x| + c2·x², spacing sp, drawn per side); anterior ribs, fainter, slope
    # down towards the midline.
    left = x < spine
    rib_p = {k: rng.normal(m, sd * var, 2).astype(F32) for k, m, sd in _RIB_PRIORS}
    pick = {k: np.where(left, v[0], v[1]) for k, v in rib_p.items()}
    phase = (y + pick["c1"] * ax - pick["c2"] * ax * ax - pick["y0"]) / pick["sp"]
    n_ribs = 10 + int(3 * rng.random())
    ribs = periodic_bands(phase, float(np.clip(0.45 + 0.06 * var * normal(), 0.3, 0.6)))
    ribs = ribs * ((phase >= 0) & (phase < n_ribs))
    phase_a = (y + 0.45 * ax - pick["y0"] - 0.35) / (pick["sp"] * 1.25)
    ribs_a = periodic_bands(phase_a, 0.4) * ((phase_a >= 0) & (phase_a < 6)) * smoothstep(ax - 0.2)
    cage = smoothstep((ax - 0.04) / 0.05) * smoothstep((body_w - 0.06 - ax) / 0.08)
    cage = cage * thickness * smoothstep((0.75 - y) / 0.45)  # ribs fade over the abdomen
    dens = (0.06 + 0.015 * var * rng.random()) * (ribs + 0.45 * ribs_a) * cage

    for sign in (-1.0, 1.0):
        xi = sign * (x - spine)
        c0 = -0.74 + 0.04 * var * normal()
        clav = curve_band(xi, y, (c0, -0.12, 0.12 + 0.05 * normal()), 0.03)
        end = 0.55 + 0.06 * normal()
        dens = dens + 0.13 * clav * smoothstep((xi - 0.05) / 0.04) * smoothstep((end - xi) / 0.08)
        head = blob(xi - 0.98, y + 0.86 - 0.04 * normal(), 0.14, 0.14)
        dens = dens + 0.12 * soft_edge(head, 0.02)
    return dens


_RIB_PRIORS = (("c1", 0.3, 0.04), ("c2", 0.85, 0.08), ("y0", -0.98, 0.04), ("sp", 0.15, 0.012))


def anatomy(rng: np.random.Generator, size: int, var: float) -> tuple[np.ndarray, list[Lung], float]:
    """Density map of a healthy chest.

    Args:
        rng: generator of the anatomy stream.
        size: image side in pixels.
        var: scale of the anatomical variation (1 = nominal).

    Returns:
        ``(density, lungs, darkness)``: float32 (size, size) density (about 0 for air outside the body
        to 0.8 for bone over the mediastinum), the two :class:`Lung` (patient's right first), and the
        density the air of a lung removes (what a fully consolidated lung fills back in).
    """
    y, x = grid(size)
    normal = rng.standard_normal
    spine = float(0.025 * var * normal())
    body_x, body_w = spine + 0.02 * var * normal(), float(np.clip(0.9 + 0.04 * var * normal(), 0.82, 0.98))

    # Torso, shoulders and neck as a smooth union; thickness fades towards the skin line.
    g_body = blob(x - body_x, y - 0.35, body_w, 1.5, 2.6)
    for sx in (-1.0, 1.0):
        g_body = smooth_max(g_body, blob(x - body_x - sx * 0.62, y + 0.86, 0.5, 0.3), 0.06)
    g_body = smooth_max(g_body, np.minimum(0.22 - np.abs(x - body_x), -0.6 - y), 0.06)
    thickness = np.sqrt(smoothstep(g_body / 0.3))
    dens = 0.36 * thickness

    lungs = [_lung(rng, size, side, spine, var, body_w) for side in (1, 2)]

    # Heart: overlaps the medial lower part of the patient's left lung and sits on the diaphragm.
    # Its long axis runs from the upper image left down to the lower image right.
    hx, hy = spine + 0.15 + 0.03 * var * normal(), lungs[1].base - 0.25 + 0.03 * var * normal()
    ha, hb = 0.4 + 0.03 * var * normal(), 0.28 + 0.02 * var * normal()
    hu, hv = rotate(x, y, hx, hy, 0.95 + 0.1 * var * normal())
    g_heart = blob(hu, hv, ha, hb, 2.2)
    heart = soft_edge(g_heart, 0.012)

    edge_w = 0.008 + 0.004 * var * rng.random()
    for lung in lungs:
        # Real lung masks stop at the heart border, so the heart is cut out of the lung field.
        lung.mask = _largest_component((lung.g > 0) & (g_heart <= 0))
        # Slivers cut off by the heart or a pinched costophrenic tip are not in the mask; keep them
        # out of the image too, so that every dark lung pixel is a mask pixel.
        keep = ndimage.binary_dilation(lung.mask, iterations=max(1, round(size * edge_w)) + 2)
        lung.edge = (soft_edge(lung.g, edge_w) * (1 - heart) * keep).astype(F32)
        apex = 0.75 + 0.25 * smoothstep((y - lung.top) / 0.35)  # shoulder soft tissue over the apex
        lung.air = (lung.edge * (0.6 + 0.4 * smoothstep(lung.g / 0.18)) * apex).astype(F32)

    # Mediastinum, heart and liver are equally dense soft tissue, hence a max rather than a sum.
    ax = np.abs(x - spine)
    abdomen = soft_edge(-np.where(x < spine, lungs[0].g_dome, lungs[1].g_dome), 0.03)
    central = np.maximum(np.maximum(soft_edge(0.16 - ax, 0.03), heart), 0.9 * abdomen)
    dens = dens + 0.14 * central * thickness
    # Spine with vertebral bodies, trachea down to the carina, aortic knob.
    vert = 0.7 + 0.3 * periodic_bands((y + 1 + 0.1 * rng.random()) / (0.11 + 0.01 * normal()), 0.8)
    dens = dens + 0.12 * soft_edge(0.075 - ax, 0.012) * vert
    trachea = soft_edge(0.032 - np.abs(x - spine - 0.01 * normal()), 0.008)
    dens = dens - 0.09 * trachea * soft_edge(-0.3 + 0.04 * normal() - y, 0.03)
    dens = dens + 0.1 * np.exp(-((x - spine - 0.13) ** 2 + (y + 0.36 - 0.03 * normal()) ** 2) / 0.004)
    dens = dens + _bones(rng, size, spine, body_w, thickness, var)

    # Air in the stomach under the left dome, seen in about half of the films.
    if rng.random() < 0.5:
        g_bubble = blob(x - spine - 0.38, y - lungs[1].base - 0.12, 0.11, 0.06)
        dens = dens - 0.07 * soft_edge(g_bubble, 0.02)

    darkness = float(0.30 + 0.03 * normal())
    for lung in lungs:
        # Vessels radiate from the hilum and thin out towards the periphery.
        theta = np.arctan2(y - lung.hilum[1], lung.xi - lung.hilum[0])
        r = np.sqrt((lung.xi - lung.hilum[0]) ** 2 + (y - lung.hilum[1]) ** 2)
        vessels = np.clip(angular_streaks(rng, theta, 70, 3), 0, 1.5) * np.exp(-r / 0.35)
        dens = dens - darkness * lung.air + 0.06 * vessels * lung.air
        dens = dens + 0.06 * np.exp(-(r * r) / 0.005) * lung.edge  # hilar vessels
    return dens.astype(F32), lungs, darkness


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
