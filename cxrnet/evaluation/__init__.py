"""Numerical core of ``python -m cxrnet.evaluate``: pure functions on numpy arrays.

- :mod:`.classification`: confusion matrix, per-class and averaged rates, ROC / PR curves, AUROC, AP,
  sensitivity at fixed specificity (flat keys documented in ``KEY_DOCS``).
- :mod:`.calibration`: expected calibration error, reliability curve, Brier score, temperature scaling.
- :mod:`.segmentation`: Dice, IoU, HD95 per image and aggregated.
- :mod:`.correlation`: agreement of severity estimates with reference scores.
- :mod:`.bootstrap`: patient-level bootstrap confidence intervals for any of the above.
- :mod:`.results`: what an evaluation keeps of a split (:class:`~.results.Collected`), filled by
  :func:`cxrnet.collect.collect`, which runs the network.
- :mod:`.summary`: the ``metrics.json`` keys and their bootstrap intervals, from a ``Collected``.

None of these import torch or scikit-learn, nor any part of cxrnet outside this package: the network runs in
:mod:`cxrnet.collect`, and the figures and report are drawn by :mod:`cxrnet.report`.
"""

from cxrnet.evaluation.bootstrap import CI, bootstrap_ci, group_bootstrap_indices
from cxrnet.evaluation.calibration import (
    ReliabilityCurve,
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)
from cxrnet.evaluation.classification import (
    KEY_DOCS,
    auroc,
    average_precision,
    classification_metrics,
    confusion_matrix,
    covidnet_table,
    describe_key,
    precision_recall_curve,
    roc_curve,
    sensitivity_at_specificity,
)
from cxrnet.evaluation.correlation import agreement
from cxrnet.evaluation.segmentation import dice, hausdorff95, iou, segmentation_metrics, surface_distances

__all__ = [
    "CI",
    "KEY_DOCS",
    "ReliabilityCurve",
    "agreement",
    "apply_temperature",
    "auroc",
    "average_precision",
    "bootstrap_ci",
    "brier_score",
    "classification_metrics",
    "confusion_matrix",
    "covidnet_table",
    "describe_key",
    "dice",
    "expected_calibration_error",
    "fit_temperature",
    "group_bootstrap_indices",
    "hausdorff95",
    "iou",
    "precision_recall_curve",
    "reliability_curve",
    "roc_curve",
    "segmentation_metrics",
    "sensitivity_at_specificity",
    "surface_distances",
]
