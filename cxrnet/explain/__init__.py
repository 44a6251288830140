"""Explanations of CXRNet decisions and scores that measure them against an infection mask."""

from cxrnet.explain.metrics import (
    explanation_in_region_share,
    explanation_scores,
    pointing_game,
    saliency_average_precision,
    topk_f1,
    topk_iou,
    topk_mask,
)

__all__ = [
    "explanation_in_region_share",
    "explanation_scores",
    "pointing_game",
    "saliency_average_precision",
    "topk_f1",
    "topk_iou",
    "topk_mask",
]
