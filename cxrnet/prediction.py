"""What a prediction returns: :class:`Prediction` for one radiograph, :class:`FileResult` for one file.

Plain containers, importable without torch's model code (the overlay renderer and the viewer take them).
Research software, not a medical device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["FileResult", "Prediction", "SyntheticTrainingWarning"]


class SyntheticTrainingWarning(UserWarning):
    """A model trained on synthetic phantoms only is predicting on real image files."""


@dataclass
class Prediction:
    """Everything the model says about one radiograph, at the image's original size (HxW).

    An output whose head saw no training target is withheld (``None``, an empty dict, or a key left out of
    ``severity``) and named in :attr:`untrained`, unless the predictor was built with ``keep_untrained=True``.

    Attributes:
        probabilities: class name → probability, in the checkpoint's class order; sums to 1. Empty when the
            classifier is untrained.
        label: the most probable class; ``None`` when the classifier is untrained.
        lung_mask: bool HxW, lung probability > 0.5; ``None`` when the lung head is untrained.
        infection_map: float32 HxW infection probability in [0, 1]; ``None`` when the infection head is
            untrained.
        explanation: float32 HxW explanation map in [0, 1] (the region encoder 2 classified); ``None`` when
            the classifier, which it is learned from, is untrained.
        severity: ``{"from_maps": assess_severity(...).to_dict()}``, computed on the lung and infection
            maps at the model's resolution when the image is larger (areas in original pixels), plus, when
            the model has a severity head, ``"learned": {target: score in its own units}``. ``from_maps`` is
            left out when the lung or the infection head is untrained, and so is each learned target
            without training scores.
        meta: ``source`` (the path, or ``"<array>"``/``"<tensor>"``), ``height``, ``width`` (pixels),
            ``model_size`` (side of the square the model saw).
        untrained: outputs of heads that saw no training target, named as in
            :data:`cxrnet.provenance.OUTPUTS`: ``"lung_mask"``, ``"infection_map"``, ``"explanation"``,
            ``"probabilities"``, ``"severity.from_maps"``, ``"severity.learned.<target>"``. Empty for
            checkpoints that do not record their heads.
        caveats: notes about the model's training that a report must carry, e.g.
            :data:`cxrnet.provenance.SYNTHETIC_CAVEAT`.
    """

    probabilities: dict[str, float]
    label: str | None
    lung_mask: np.ndarray | None
    infection_map: np.ndarray | None
    explanation: np.ndarray | None
    severity: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    untrained: frozenset[str] = frozenset()
    caveats: list[str] = field(default_factory=list)

    def to_dict(self, include_maps: bool = False) -> dict[str, Any]:
        """JSON-ready summary: label, probabilities, severity, meta, untrained outputs (sorted) and caveats.

        Args:
            include_maps: also add ``lung_mask``, ``infection_map`` and ``explanation`` as nested lists
                (large: HxW numbers each; ``None`` for a withheld map).
        """
        out: dict[str, Any] = {
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "severity": {kind: dict(values) for kind, values in self.severity.items()},
            "meta": dict(self.meta),
            "untrained": sorted(self.untrained),
            "caveats": list(self.caveats),
        }
        if include_maps:
            for name in ("lung_mask", "infection_map", "explanation"):
                values = getattr(self, name)
                out[name] = None if values is None else values.tolist()
        return out


class FileResult(NamedTuple):
    """One item of :meth:`cxrnet.inference.Predictor.predict_files`: a prediction, or the reason the file failed.

    Attributes:
        path: the input file.
        prediction: the prediction, ``None`` when the file could not be read.
        error: why the file could not be read (:class:`~cxrnet.data.images.ImageReadError` reason), ``None`` when it worked.
        preview: the image (float32 in [0, 1]) shrunk so its longer side is at most ``preview_size``,
            for overlays; ``None`` on error.
    """

    path: Path
    prediction: Prediction | None
    error: str | None
    preview: np.ndarray | None
