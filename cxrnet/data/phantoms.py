"""Synthetic, radiograph-like chest X-ray phantoms with exact ground truth.

A phantom is a :class:`~cxrnet.data.records.RawItem`: a frontal (PA) chest radiograph rendered from a
random anatomy, with its lung mask, infection mask, class label and severity targets. Phantoms feed
the tests, the quickstart training run and the demos; they need no download.

How a phantom is made (all in the normalised coordinates of :mod:`cxrnet.data._phantom_draw`):

* **Anatomy** (:mod:`cxrnet.data._phantom_anatomy`) as an X-ray *density* map: soft-tissue torso with
  shoulders, spine and mediastinum, heart, aortic knob, two air-filled lungs (blobby superellipses cut by a
  straight mediastinal border and a diaphragm dome, which leaves sharp costophrenic angles), vessels
  radiating from the hila, posterior and anterior ribs, clavicles, humeral heads.
* **Disease** as extra density inside the lungs, by class:

  ============  ========================================================================================
  normal        none
  bacterial     one lung, upper or lower lobe: dense, homogeneous, well-defined consolidation bounded
                by a fissure, sometimes with air bronchograms (dark lines)
  viral         both lungs, perihilar (medial): patchy reticular lines, small nodules and streaks
  covid19       both lungs, lower zones along the lateral borders: hazy, soft-edged ground glass
  ============  ========================================================================================

  The infection mask is where the opacity's envelope reaches :data:`MASK_THRESHOLD` of its peak,
  intersected with the lung mask.
* **Acquisition** (:mod:`cxrnet.data._phantom_acquisition`): exposure curve, gamma, contrast and offset,
  detector blur, Gaussian and Poisson-like noise, and — independently of the class, because they are
  shortcut bait — text markers, ECG electrodes with wires, and tubes or lines.

Random streams are separate for anatomy, disease, acquisition, pixel noise and the label, so the same
seed with a different ``label`` gives the *same patient* with a different disease, and a seed gives
the same phantom at every size (up to pixel noise).
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cxrnet.data import _phantom_draw as draw
from cxrnet.data._phantom_acquisition import draw_overlays, render
from cxrnet.data._phantom_anatomy import Lung, anatomy
from cxrnet.data.records import RawItem
from cxrnet.severity import severity_targets

__all__ = [
    "CLASSES",
    "MASK_THRESHOLD",
    "SEVERITY_TARGETS",
    "generate_phantoms",
    "make_phantom",
    "phantom_seeds",
    "write_phantom_folder",
]

CLASSES: tuple[str, ...] = ("normal", "bacterial", "viral", "covid19")
SEVERITY_TARGETS: tuple[str, ...] = ("geographic_extent", "brixia")

# Share of an opacity envelope's peak above which a pixel counts as infected. High enough that the
# added density at the mask border stays visible, low enough that the mask covers the whole opacity.
MASK_THRESHOLD = 0.3

_F32 = np.float32
_STREAMS = ("label", "anatomy", "disease", "acquisition", "noise")
# Item seeds are ``((seed · 2^34) + split code) · 2^20 + index``: injective, hence disjoint splits.
_INDEX_BITS = 20
_CODE_BITS = 34
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def _streams(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence([seed, 0x43585250]).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


def _normalise_per_lung(envelope: np.ndarray, lungs: Sequence[Lung]) -> np.ndarray:
    """Scale the envelope so that it peaks at 1 inside every lung it touches."""
    out = np.zeros_like(envelope)
    for lung in lungs:
        region = lung.edge > 0.5
        peak = float(envelope[region].max()) if region.any() else 0.0
        if peak > 1e-6:
            out = np.where(region, envelope / peak, out)
    return out


# Each opacity function returns ``(envelope, opacity)``, both float32 (size, size): the envelope is 0-1
# and peaks at 1 in every affected lung (the mask is ``envelope >= MASK_THRESHOLD``); the opacity is the
# envelope times the class texture, in units of the class strength (see ``_OPACITY``).


def _bacterial(rng: np.random.Generator, size: int, lungs: list[Lung]) -> tuple[np.ndarray, np.ndarray]:
    """Lobar consolidation of one lung: dense, homogeneous, sharp along a fissure."""
    y, _ = draw.grid(size)
    lung = lungs[int(rng.integers(2))]
    xi, height, width = lung.xi, lung.base - lung.top, lung.lat - lung.med
    upper = rng.random() < 0.4
    # A fissure bounds the consolidation sharply on one side (lobar pattern).
    y_fis = lung.top + (0.45 + 0.06 * rng.standard_normal()) * height + 0.12 * (xi - lung.med)
    gate = draw.soft_edge((y_fis - y) if upper else (y - y_fis), 0.006)
    cx = lung.med + (0.4 + 0.2 * rng.random()) * width
    f = rng.random()
    cy = lung.top + (0.25 + 0.15 * f if upper else 0.65 + 0.2 * f) * height
    harmonics = np.stack([np.arange(2, 5), 0.08 * rng.random(3), 2 * np.pi * rng.random(3)], axis=1)
    u, v = draw.rotate(xi, y, cx, cy, 0.6 * rng.standard_normal())
    extent = 0.5 + 1.2 * rng.random()
    g = draw.blob(u, v, 0.3 * extent, 0.22 * extent, 2.4, harmonics)
    env = _normalise_per_lung(gate * draw.soft_edge(g, 0.02) * lung.edge, [lung])
    texture = 0.92 + 0.05 * draw.smooth_field(rng, size, 24)
    if rng.random() < 0.6:  # air bronchograms: dark branching lines inside the dense core
        theta = np.arctan2(y - lung.hilum[1], xi - lung.hilum[0])
        bronchi = np.clip(draw.angular_streaks(rng, theta, 40, 6), 0, 1)
        texture = texture * (1 - 0.35 * bronchi * draw.smoothstep((env - 0.6) / 0.3))
    return env, env * texture


def _viral(rng: np.random.Generator, size: int, lungs: list[Lung]) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral perihilar interstitial pattern: reticular lines, small nodules, streaks."""
    y, _ = draw.grid(size)
    env = np.zeros((size, size), _F32)
    patch = draw.smoothstep(0.5 + 0.35 * draw.smooth_field(rng, size, 9))
    for lung in lungs:
        extent = rng.random()  # mild to severe, per lung
        rx = (0.2 + 0.4 * extent) * (lung.lat - lung.med)
        ry = (0.2 + 0.35 * extent) * (lung.base - lung.top)
        d2 = ((lung.xi - lung.hilum[0] + 0.03) / rx) ** 2 + ((y - lung.hilum[1]) / ry) ** 2
        env = env + np.exp(-d2) * lung.edge
    env = draw.smoothstep(1.3 * _normalise_per_lung(env * (0.5 + 0.5 * patch), lungs))
    # Reticular network: the zero set of a band-limited field is a web of curved lines.
    lines = np.exp(-((draw.smooth_field(rng, size, 26) / 0.3) ** 2))
    nodules = np.clip(draw.smooth_field(rng, size, 40) - 1.4, 0, 0.6) * 2.5
    streaks = np.zeros_like(env)
    for lung in lungs:
        # Peribronchial streaks fan out from the hilum; faded at its centre so they do not meet in a star.
        dx, dy = lung.xi - lung.hilum[0], y - lung.hilum[1]
        fan = np.clip(draw.angular_streaks(rng, np.arctan2(dy, dx), 90, 2), 0, 1.5)
        streaks = streaks + fan * draw.smoothstep((np.sqrt(dx * dx + dy * dy) - 0.04) / 0.12) * (
            lung.edge > 0.5
        )
    texture = 0.55 + 0.55 * lines + 0.35 * nodules + 0.25 * streaks
    return env, env * texture


def _covid(rng: np.random.Generator, size: int, lungs: list[Lung]) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral peripheral lower-zone ground glass: hazy, soft-edged, along the lateral borders."""
    y, _ = draw.grid(size)
    env = np.zeros((size, size), _F32)
    patch = draw.smoothstep(0.55 + 0.4 * draw.smooth_field(rng, size, 7))
    for lung in lungs:
        height, width = lung.base - lung.top, lung.lat - lung.med
        extent = rng.random()  # mild to severe, per lung
        start = lung.top + (0.6 - 0.4 * extent) * height
        lower = draw.smoothstep((y - start) / (0.35 * height))
        lateral = draw.smoothstep((lung.xi - lung.med - 0.25 * width) / (0.6 * width))
        band = 0.06 + 0.25 * extent
        periph = np.exp(-np.clip(lung.g, 0, None) / band)
        env = env + lower * lateral * periph * lung.edge
    # Saturate: ground glass is a hazy plateau with soft margins, not a peak.
    env = draw.smoothstep(1.6 * _normalise_per_lung(env * (0.35 + 0.65 * patch), lungs))
    return env, env * (0.9 + 0.08 * draw.smooth_field(rng, size, 30))


# Peak added density as a share of the lung darkness (1 = the air fully replaced by soft tissue); the
# difficulty scales it by 1.2 - 0.7 · difficulty (1.2 at 0, 0.85 at 0.5, 0.5 at 1).
_OPACITY = {"bacterial": (_bacterial, 1.0), "viral": (_viral, 0.9), "covid19": (_covid, 0.8)}


def _check_label(label: str) -> None:
    if label not in CLASSES:
        raise ValueError(f"unknown phantom label {label!r}; expected one of {CLASSES}")


def make_phantom(seed: int, size: int = 256, label: str | None = None, difficulty: float = 0.5) -> RawItem:
    """Render one phantom chest radiograph with its ground truth.

    Args:
        seed: non-negative integer; the phantom is a deterministic function of
            ``(seed, size, label, difficulty)``.
        size: side of the square image in pixels (>= 32).
        label: one of :data:`CLASSES`, or ``None`` to draw it from the seed (uniformly). A given
            label keeps the seed's anatomy and acquisition: only the disease changes.
        difficulty: 0-1. 0 gives high-contrast opacities, little noise and little anatomical
            variation; 1 gives subtle opacities, heavy noise, more markers/devices and more varied
            anatomy.

    Returns:
        A :class:`RawItem` with ``image`` float32 ``(size, size)`` in [0, 1]; ``lung_mask`` and
        ``infection_mask`` bool ``(size, size)`` (infection ⊂ lung, empty for ``"normal"``); ``label``;
        ``severity`` with the :data:`SEVERITY_TARGETS` keys (geographic extent 0-8, Brixia 0-18); and
        ``meta`` with ``path``, ``patient_id``, ``source`` (``"synthetic"``), ``seed``, ``difficulty``
        and ``lung_sides`` (int8 ``(size, size)``: 0 background, 1 patient's right lung = image left,
        2 patient's left lung).

    Raises:
        ValueError: on a negative seed, a size below 32, a difficulty outside [0, 1] or an unknown label.
    """
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(size) != size or size < 32:
        raise ValueError(f"size must be an integer >= 32 pixels, got {size!r}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1], got {difficulty!r}")
    seed, size, difficulty = int(seed), int(size), float(difficulty)
    rngs = _streams(seed)
    if label is None:
        label = CLASSES[int(rngs["label"].integers(len(CLASSES)))]
    _check_label(label)

    dens, lungs, darkness = anatomy(rngs["anatomy"], size, 0.5 + difficulty)
    lung_mask = lungs[0].mask | lungs[1].mask
    infection_mask = np.zeros_like(lung_mask)
    if label != "normal":
        opacity_fn, strength = _OPACITY[label]
        envelope, shape = opacity_fn(rngs["disease"], size, lungs)
        infection_mask = (envelope >= MASK_THRESHOLD) & lung_mask
        edge = lungs[0].edge + lungs[1].edge
        depth = (lungs[0].air + lungs[1].air) / np.maximum(edge, 1e-3)
        # Opacity replaces air: scaled by the lung darkness it fills in, weaker at higher difficulty.
        amplitude = strength * darkness * (1.2 - 0.7 * difficulty)
        dens = dens + amplitude * shape * depth

    acq = rngs["acquisition"]
    p_overlay = 0.08 + 0.3 * difficulty
    overlay = draw_overlays(acq, size, p_overlay, 0.6 * p_overlay, 0.6 * p_overlay)
    image = render(dens + 0.7 * overlay, acq, rngs["noise"], size, difficulty)

    sides = np.zeros((size, size), np.int8)
    sides[lungs[0].mask] = 1
    sides[lungs[1].mask] = 2
    targets = severity_targets(lung_mask, infection_mask)
    return RawItem(
        image=image,
        lung_mask=lung_mask,
        infection_mask=infection_mask,
        label=label,
        severity={name: float(targets[name]) for name in SEVERITY_TARGETS},
        meta={
            "path": f"phantom://item/{seed}/{label}",
            "patient_id": f"phantom-{seed}",
            "source": "synthetic",
            "seed": seed,
            "difficulty": difficulty,
            "lung_sides": sides,
        },
    )


def phantom_seeds(split: str, n: int, seed: int = 0) -> list[int]:
    """Item seeds of a split, disjoint across splits (and across ``seed`` values) by construction.

    Item ``i`` of split ``split`` gets ``((seed · 2^34) + code(split)) · 2^20 + i``, an injective map,
    where ``code`` is 0, 1, 2 for ``"train"``, ``"val"``, ``"test"`` and ``3 + crc32(split)`` for any
    other name. (Two *custom* names share seeds only if their CRC-32 checksums collide.)

    Args:
        split: split name.
        n: number of seeds, 0 to 2^20 (1 048 576).
        seed: non-negative dataset seed.

    Returns:
        ``n`` distinct non-negative integers.
    """
    if not 0 <= n <= 1 << _INDEX_BITS:
        raise ValueError(f"n must lie in [0, {1 << _INDEX_BITS}], got {n}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    code = _SPLIT_CODES.get(split, 3 + zlib.crc32(split.encode("utf-8")))
    base = ((seed << _CODE_BITS) + code) << _INDEX_BITS
    return [base + i for i in range(n)]


def generate_phantoms(
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    size: int = 256,
    difficulty: float = 0.5,
    classes: Sequence[str] = CLASSES,
) -> list[RawItem]:
    """A class-balanced list of phantoms: item ``i`` has label ``classes[i % len(classes)]``.

    Args:
        n: number of phantoms.
        split: split name; items use :func:`phantom_seeds` ``(split, n, seed)``, so splits never share
            a phantom (nor a patient id).
        seed: dataset seed.
        size: image side in pixels.
        difficulty: 0-1, see :func:`make_phantom`.
        classes: labels to cycle through (a subset of :data:`CLASSES`).

    Returns:
        ``n`` :class:`RawItem`, with ``meta["path"] = "phantom://<split>/<item seed>/<label>"``.
    """
    if not classes:
        raise ValueError("classes must name at least one class")
    for name in classes:
        _check_label(name)
    items = []
    for i, item_seed in enumerate(phantom_seeds(split, n, seed)):
        item = make_phantom(item_seed, size, classes[i % len(classes)], difficulty)
        item.meta["path"] = f"phantom://{split}/{item_seed}/{item.label}"
        items.append(item)
    return items


MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",
    "label",
    "patient_id",
    "lung_mask",
    "infection_mask",
    *SEVERITY_TARGETS,
)


def write_phantom_folder(
    root: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 256,
    difficulty: float = 0.5,
    split: str = "test",
) -> Path:
    """Write phantoms as a folder dataset with a CSV manifest.

    Layout under ``root``: ``images/<id>.png`` (8-bit grayscale), ``lung_masks/<id>.png`` and
    ``infection_masks/<id>.png`` (8-bit, 0 or 255), and ``manifest.csv`` with the columns
    :data:`MANIFEST_COLUMNS` (paths relative to ``root``, severity as numbers).

    Args:
        root: output folder (created if missing).
        n: number of phantoms (class-balanced, see :func:`generate_phantoms`).
        seed: dataset seed.
        size: image side in pixels.
        difficulty: 0-1, see :func:`make_phantom`.
        split: split name the seeds are drawn from.

    Returns:
        Path of ``manifest.csv``.
    """
    root = Path(root)
    for sub in ("images", "lung_masks", "infection_masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for item in generate_phantoms(n, split=split, seed=seed, size=size, difficulty=difficulty):
        item_id = f"{split}-{item.meta['seed']}"
        files = {sub: f"{sub}/{item_id}.png" for sub in ("images", "lung_masks", "infection_masks")}
        Image.fromarray(np.round(item.image * 255).astype(np.uint8)).save(root / files["images"])
        Image.fromarray(item.lung_mask.astype(np.uint8) * 255).save(root / files["lung_masks"])
        Image.fromarray(item.infection_mask.astype(np.uint8) * 255).save(root / files["infection_masks"])
        rows.append(
            {
                "path": files["images"],
                "label": item.label,
                "patient_id": item.meta["patient_id"],
                "lung_mask": files["lung_masks"],
                "infection_mask": files["infection_masks"],
                **{name: item.severity[name] for name in SEVERITY_TARGETS},
            }
        )
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest
