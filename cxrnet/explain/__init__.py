"""Explanations of CXRNet decisions and scores that measure them against an infection mask.

Explainers (each ``explainer(images, class_index=None) -> B×H×W`` maps in [0, 1] at the input size):
``native`` (the E-D-E map, :mod:`cxrnet.explain.native`) and the CAM family on encoder 2 computed by
``pytorch-grad-cam`` (:mod:`cxrnet.explain.cams`): ``gradcam``, ``gradcam++``, ``scorecam``, ``eigencam``,
``layercam``, ``xgradcam``. Build one by name with :func:`get_explainer`.

The library-backed Grad-CAM and Grad-CAM++ agree with independent hand-written implementations of the papers'
formulas, kept as a test oracle (``tests/explain/reference_cam.py``; Spearman ρ ≥ 0.95 per image: Grad-CAM is
identical, Grad-CAM++ differs only by the library's larger ε).

Faithfulness curves are in :mod:`cxrnet.explain.faithfulness`, sanity checks in :mod:`cxrnet.explain.sanity`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cxrnet.explain.cams import CAMExplainer, EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM
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
    "scorecam": ScoreCAM,
    "eigencam": EigenCAM,
    "layercam": LayerCAM,
    "xgradcam": XGradCAM,
}


def get_explainer(name: str, net: nn.Module, **kwargs: Any) -> NativeExplainer | CAMExplainer:
    """The explainer called ``name`` wrapped around ``net``.

    Args:
        name: one of :data:`EXPLAINERS` (``native``, ``gradcam``, ``gradcam++``, ``scorecam``, ``eigencam``,
            ``layercam``, ``xgradcam``).
        net: a :class:`~cxrnet.models.CXRNet`.
        **kwargs: passed to the explainer (e.g. ``target_layer`` for the CAM family, ``batch_size`` for
            ``scorecam``).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer {name!r}; valid explainers: {', '.join(EXPLAINERS)}")
    return EXPLAINERS[name](net, **kwargs)


__all__ = [
    "EXPLAINERS",
    "CAMExplainer",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerCAM",
    "NativeExplainer",
    "ScoreCAM",
    "XGradCAM",
    "cams",
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
