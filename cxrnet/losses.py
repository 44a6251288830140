"""Losses. Every supervised term is masked by the batch's presence flags: a missing target is never faked.

A term with no targets in the batch contributes an exact zero that is still connected to the graph (so DDP
sees every parameter used), never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrnet.models.cxrnet import CXRNetOutput

# The task weights' default values: the only place they are written (train.yaml names the weights, with null
# meaning "this default", so that an override such as loss.weights.cls=2 needs no "+").
DEFAULT_WEIGHTS: dict[str, float] = {
    "lung": 1.0,
    "infection": 1.0,
    "cls": 1.0,
    "cls_ungated": 0.0,
    "severity": 0.5,
    "explanation_area": 0.05,
    "explanation_smoothness": 0.05,
    "explanation_guidance": 0.0,
    "deletion": 0.0,
}


#: The terms that shape the explanation map, ramped in by ``explanation_warmup``.
WARMED_UP = ("explanation_area", "deletion")


def _zero_like(t: torch.Tensor) -> torch.Tensor:
    return t.sum() * 0.0


def dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """Soft Dice (per item, averaged) + pixel BCE, on the items whose mask is present.

    Args:
        logits: B×1×H×W.
        target: B×1×H×W in {0, 1}.
        present: B bool.
        smooth: Dice smoothing; keeps an empty target with an empty prediction at zero loss.

    Returns:
        Scalar loss; zero (graph-connected) when no item has the mask.
    """
    if not bool(present.any()):
        return _zero_like(logits)
    logits, target = logits[present], target[present]
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    # Per item, so that a small lesion weighs as much as a large one; an empty target with an empty
    # prediction scores 1, and any false positive on it is penalised.
    intersection = (prob * target).sum(dim=(1, 2, 3))
    dice = (2 * intersection + smooth) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + smooth)
    return bce + (1 - dice).mean()


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0, focal_gamma: float = 0.0
) -> torch.Tensor:
    """Cross-entropy (or focal loss when ``focal_gamma`` > 0) over items with a label (label >= 0)."""
    present = labels >= 0
    if not bool(present.any()):
        return _zero_like(logits)
    logits, labels = logits[present], labels[present]
    if focal_gamma <= 0:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return (-((1 - log_p.exp()) ** focal_gamma) * log_p).mean()


def severity_loss(pred: torch.Tensor, target: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between predicted and reference scores, each divided by its scale; NaN targets are skipped."""
    present = ~torch.isnan(target)
    if not bool(present.any()):
        return _zero_like(pred)
    diff = (pred - torch.nan_to_num(target)) / scales
    return F.smooth_l1_loss(diff[present], torch.zeros_like(diff[present]), beta=0.1)


def soft_dice_bce(
    prob: torch.Tensor, target: torch.Tensor, present: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """:func:`dice_bce_loss` for B×1×H×W probabilities (a map that is already a probability, e.g. the gate)."""
    if not bool(present.any()):
        return _zero_like(prob)
    prob, target = prob[present].float().clamp(1e-6, 1 - 1e-6), target[present].float()
    bce = F.binary_cross_entropy(prob, target)
    intersection = (prob * target).sum(dim=(1, 2, 3))
    dice = (2 * intersection + smooth) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + smooth)
    return bce + (1 - dice).mean()


def total_variation(maps: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of B×1×H×W maps (a smoothness penalty)."""
    dy = (maps[..., 1:, :] - maps[..., :-1, :]).abs().mean()
    dx = (maps[..., :, 1:] - maps[..., :, :-1]).abs().mean()
    return dx + dy


class MultiTaskLoss(nn.Module):
    """Weighted sum of the task losses of :class:`~cxrnet.models.CXRNetOutput` against a batch.

    Args:
        weights: task weights by name (see ``DEFAULT_WEIGHTS``); a missing name, or ``None`` (what
            ``train.yaml`` gives), keeps its default.
        label_smoothing: for the classification cross-entropy.
        focal_gamma: > 0 switches classification to focal loss.
        explanation_warmup: fraction of training over which the weights of the terms that shape the map
            (``explanation_area``, ``deletion``) ramp linearly from 0 to their value, so that the gate closes
            only once the classes are learned; 0 applies them from the first step. Needs :attr:`progress`
            (the module sets it every training step).
        deletion_exempt: class names the deletion term skips: classes without localised evidence (e.g.
            ``normal``), whose image keeps its class whatever a map removes. Bound to class indices by
            :meth:`bind_classes` (the module does it); names not in the model's classes are ignored.
        guide_raw_map: ``explanation_guidance`` holds the map *before* the lung gate to the infection mask
            (outside the lungs too: the module then passes ``raw_explanation``), rather than the gated map.
            Measured on 3 phantom seeds in experiments/explanations/README.md: it removed the bright rim along
            the lung borders in the seed that had it, but one other seed's map spread over both lung fields;
            off by default.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
        explanation_warmup: float = 0.0,
        deletion_exempt: Sequence[str] = (),
        guide_raw_map: bool = False,
    ) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = set(weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; valid: {sorted(DEFAULT_WEIGHTS)}")
        self.weights = {**DEFAULT_WEIGHTS, **{k: v for k, v in weights.items() if v is not None}}
        self.label_smoothing = label_smoothing
        self.focal_gamma = focal_gamma
        if not 0.0 <= explanation_warmup <= 1.0:
            raise ValueError(
                f"explanation_warmup must be a fraction of training in [0, 1], got {explanation_warmup}"
            )
        self.explanation_warmup = float(explanation_warmup)
        self.progress = 1.0  # fraction of training done; evaluation uses the full weights
        self.deletion_exempt = tuple(deletion_exempt)
        self.guide_raw_map = bool(guide_raw_map)
        self._exempt_indices: tuple[int, ...] = ()

    def bind_classes(self, classes: Sequence[str]) -> None:
        """Resolve :attr:`deletion_exempt` to indices of ``classes`` (the model's class order)."""
        self._exempt_indices = tuple(i for i, name in enumerate(classes) if name in self.deletion_exempt)

    def forward(
        self,
        out: CXRNetOutput,
        batch: Mapping[str, torch.Tensor],
        severity_scales: torch.Tensor | None = None,
        deletion_logits: torch.Tensor | None = None,
        ungated_logits: torch.Tensor | None = None,
        raw_explanation: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-term losses and their weighted ``total``.

        Args:
            out: model output for the batch.
            batch: collated samples (see ``cxrnet.data.dataset``).
            severity_scales: K scales that make severity errors comparable across scores (default 1).
            deletion_logits: class logits for the image with the explanation removed, when the deletion term
                is on: the true class should become unlikely once its evidence is gone.
            ungated_logits: class logits for the lung fields without the explanation gate, when the
                ``cls_ungated`` term is on (:meth:`cxrnet.models.CXRNet.ungated_logits`).
            raw_explanation: the explanation map before the lung gate
                (:meth:`cxrnet.models.CXRNet.forward_with_raw_map`); ``explanation_guidance`` then holds the map
                to the infection mask everywhere, outside the lung fields too (else it uses ``out.explanation``).

        Returns:
            dict of scalar tensors, one per term, plus ``total``.
        """
        terms = {
            "lung": dice_bce_loss(out.lung_logits, batch["lung_mask"], batch["has_lung_mask"]),
            "infection": dice_bce_loss(
                out.infection_logits, batch["infection_mask"], batch["has_infection_mask"]
            ),
            "cls": classification_loss(
                out.class_logits,
                batch["label"],
                label_smoothing=self.label_smoothing,
                focal_gamma=self.focal_gamma,
            ),
            "explanation_area": out.explanation.mean(),
            "explanation_smoothness": total_variation(out.explanation),
        }
        if self.weights["explanation_guidance"] > 0:
            # where the data says where the disease is, the map is asked to be there (Dice + BCE against the
            # infection mask, normal images included: their empty mask asks for a closed gate)
            guided = out.explanation if raw_explanation is None else raw_explanation
            terms["explanation_guidance"] = soft_dice_bce(
                guided, batch["infection_mask"], batch["has_infection_mask"]
            )
        if out.severity is not None:
            if severity_scales is None:
                severity_scales = torch.ones(out.severity.shape[1], device=out.severity.device)
            terms["severity"] = severity_loss(out.severity, batch["severity"], severity_scales)
        if ungated_logits is not None:
            terms["cls_ungated"] = classification_loss(
                ungated_logits,
                batch["label"],
                label_smoothing=self.label_smoothing,
                focal_gamma=self.focal_gamma,
            )
        if deletion_logits is not None:
            labels = batch["label"]
            present = labels >= 0
            for index in self._exempt_indices:
                present = present & (labels != index)
            if bool(present.any()):
                p_true = F.softmax(deletion_logits[present], dim=1).gather(1, labels[present, None])
                terms["deletion"] = p_true.mean()
            else:
                terms["deletion"] = _zero_like(deletion_logits)
        ramp = 1.0 if self.explanation_warmup <= 0 else min(1.0, self.progress / self.explanation_warmup)
        weights = {**self.weights, **{name: self.weights[name] * ramp for name in WARMED_UP}}
        terms["total"] = sum(weights[name] * value for name, value in terms.items())
        return terms
