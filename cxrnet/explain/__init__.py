"""Explanations of CXRNet decisions and scores that measure them against an infection mask.

Explainers (each ``explainer(images, class_index=None) -> B×H×W`` maps in [0, 1] at the input size):
``native`` (the E-D-E map, :mod:`cxrnet.explain.native`), ``gradcam`` and ``gradcam++`` (on encoder 2,
:mod:`cxrnet.explain.gradcam`). Build one by name with :func:`get_explainer`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cxrnet.explain.gradcam import GradCAM, GradCAMPlusPlus
from cxrnet.explain.metrics import (
    explanation_in_region_share,
    explanation_scores,
    pointing_game,
    saliency_average_precision,
    topk_f1,
    topk_iou,
    topk_mask,
)
from cxrnet.explain.native import NativeExplainer, native_explanation, normalize_per_image

EXPLAINERS: dict[str, type] = {
    "native": NativeExplainer,
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
}


def get_explainer(name: str, net: nn.Module, **kwargs: Any) -> NativeExplainer | GradCAM:
    """The explainer called ``name`` wrapped around ``net``.

    Args:
        name: one of :data:`EXPLAINERS` (``native``, ``gradcam``, ``gradcam++``).
        net: a :class:`~cxrnet.models.CXRNet`.
        **kwargs: passed to the explainer (e.g. ``target_layer`` for the Grad-CAM family).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer {name!r}; valid explainers: {', '.join(EXPLAINERS)}")
    return EXPLAINERS[name](net, **kwargs)


__all__ = [
    "EXPLAINERS",
    "GradCAM",
    "GradCAMPlusPlus",
    "NativeExplainer",
    "explanation_in_region_share",
    "explanation_scores",
    "get_explainer",
    "native_explanation",
    "normalize_per_image",
    "pointing_game",
    "saliency_average_precision",
    "topk_f1",
    "topk_iou",
    "topk_mask",
]
