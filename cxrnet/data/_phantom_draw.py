"""Drawing primitives of the synthetic chest X-ray phantoms (:mod:`cxrnet.data.phantoms`): coordinates,
signed-distance shapes and band-limited random fields. The healthy anatomy is drawn with them in
:mod:`cxrnet.data._phantom_anatomy`; markers, devices and the detector are in
:mod:`cxrnet.data._phantom_acquisition`.

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

from functools import lru_cache

import numpy as np

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
