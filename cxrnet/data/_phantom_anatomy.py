"""The healthy chest of a phantom (:mod:`cxrnet.data.phantoms`) as an X-ray density map, and its two lungs.

Torso, mediastinum, heart, spine, trachea, ribs, clavicles and humeral heads are drawn with the primitives of
:mod:`cxrnet.data._phantom_draw`, in its normalised coordinates; the :class:`Lung` records are what the
disease is drawn into.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cxrnet.data._phantom_draw import (
    F32,
    angular_streaks,
    blob,
    curve_band,
    grid,
    periodic_bands,
    rotate,
    smooth_max,
    smoothstep,
    soft_edge,
)


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
