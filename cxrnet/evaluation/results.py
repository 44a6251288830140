"""What an evaluation keeps of a split, per item: plain dataclasses of numpy arrays.

:func:`cxrnet.collect.collect` fills a :class:`Collected` by running a network over a dataset; the rest of
:mod:`cxrnet.evaluation` and the report (:mod:`cxrnet.report.evaluation`) read it. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Map-derived estimate (a key of ``Severity.to_dict()``) compared with each reference score, by reference name.
MAP_ESTIMATES: dict[str, str] = {
    "geographic_extent": "geographic_extent",
    "brixia": "brixia_total",
    "infected_fraction": "fraction_total",
}
#: The mask kinds every item is scored on, in report order.
MASKS = ("lung", "infection")


@dataclass
class MaskScores:
    """Per-item scores of one predicted mask against its reference (NaN / 0 where there is no reference).

    Attributes:
        has_reference: bool (N,), the item has this reference mask.
        dice, iou, hd95: float (N,); HD95 in pixels at model resolution, NaN when exactly one mask is empty.
        intersection, predicted, reference, union: int (N,) pixel counts, for pooled (micro-averaged) scores.
    """

    has_reference: np.ndarray
    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray
    intersection: np.ndarray
    predicted: np.ndarray
    reference: np.ndarray
    union: np.ndarray

    @property
    def reference_empty(self) -> np.ndarray:
        """bool (N,): the item has a reference mask and it is empty (e.g. the infection mask of a normal)."""
        return self.has_reference & (self.reference == 0)


@dataclass
class Example:
    """One item kept for the overlay figures.

    Attributes:
        image: uint8 H×W, the model input mapped back to [0, 255].
        masks: ``{"lung": (reference or None, prediction), "infection": (...)}``, bool H×W.
        dice: ``{"lung": float, "infection": float}`` (NaN without reference).
        title: patient id and true → predicted class.
        score: the ranking score (mean Dice over the informative masks).
    """

    image: np.ndarray
    masks: dict[str, tuple[np.ndarray | None, np.ndarray]]
    dice: dict[str, float]
    title: str
    score: float


@dataclass
class Collected:
    """Everything :func:`cxrnet.collect.collect` keeps of a split (N items, C classes).

    Attributes:
        classes: C class names.
        patient_ids, paths, sources: (N,) item provenance.
        labels: int64 (N,), -1 when unlabelled.
        logits: float64 (N, C) class logits (before any temperature).
        masks: ``{"lung": MaskScores, "infection": MaskScores}``.
        severity_reference: reference scores by name, float (N,), NaN where absent.
        severity_map: map-derived estimates by *reference* name (see :data:`MAP_ESTIMATES`), float (N,).
        severity_learned: severity-head outputs by target name, float (N,).
        explanation: explanation scores by name, float (N,), NaN where undefined.
        examples: a few :class:`Example` s by kind: ``best`` (highest segmentation score, among images with a
            lesion when there are any), ``worst`` and ``worst_lesion`` (lowest, overall and among lesion images).
        precision: the precision the network ran at (e.g. ``"bf16-mixed"``).
    """

    classes: list[str]
    patient_ids: np.ndarray
    paths: list[str]
    sources: list[str]
    labels: np.ndarray
    logits: np.ndarray
    masks: dict[str, MaskScores]
    severity_reference: dict[str, np.ndarray]
    severity_map: dict[str, np.ndarray]
    severity_learned: dict[str, np.ndarray]
    explanation: dict[str, np.ndarray]
    examples: dict[str, list[Example]] = field(default_factory=dict)
    precision: str = "32-true"

    def __len__(self) -> int:
        return len(self.labels)
