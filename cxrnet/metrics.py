"""Training-time metrics: one torchmetrics ``MetricCollection`` per task, cloned per stage.

Logged names are ``<stage>/<task>/<metric>`` with per-class values as ``<stage>/cls/<metric>/<class>``, e.g.
``test/lung/dice_pooled``, ``val/cls/macro_f1``, ``test/cls/sensitivity/covid19``. Segmentation scores are
pooled over all pixels of the items that have the mask (micro Dice / IoU, hence ``dice_pooled`` and
``iou_pooled``: not the per-image mean that ``python -m cxrnet.evaluate`` reports as ``dice/mean``);
``<task>/n`` counts those items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, Metric, MetricCollection, SumMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassRecall,
    MulticlassSpecificity,
)

from cxrnet.models.cxrnet import CXRNetOutput


class PooledOverlap(Metric):
    """Dice and IoU pooled over every pixel seen (micro averages), from summed TP, FP and FN counts.

    Updated with logits: a pixel is predicted positive when its logit is above 0 (probability above 0.5),
    the same rule and the same numbers as torchmetrics' ``BinaryF1Score`` and ``BinaryJaccardIndex``
    on the probabilities, at a fraction of their cost per training step (no sigmoid, no input checks, one
    pass). An empty union scores 0, as theirs do.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        predicted = logits > 0
        truth = target > 0.5
        tp = (predicted & truth).sum()
        self.tp += tp
        self.fp += predicted.sum() - tp
        self.fn += truth.sum() - tp

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, fn = (getattr(self, name).double() for name in ("tp", "fp", "fn"))
        dice = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.zeros_like(tp))
        iou = torch.where(tp > 0, tp / (tp + fp + fn).clamp_min(1), torch.zeros_like(tp))
        return {"dice_pooled": dice.float(), "iou_pooled": iou.float()}


def _classification_collection(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            "sensitivity": MulticlassRecall(num_classes, average=None),
            "specificity": MulticlassSpecificity(num_classes, average=None),
            "auroc": MulticlassAUROC(num_classes, average=None),
        }
    )


class TaskMetrics(nn.Module):
    """All task metrics of one stage.

    Args:
        classes: class names (per-class values are logged under these names).
        severity_targets: names of the regressed severity scores (MAE per score).
    """

    def __init__(self, classes: Sequence[str], severity_targets: Sequence[str] = ()) -> None:
        super().__init__()
        self.classes = list(classes)
        self.severity_targets = list(severity_targets)
        self.tasks = nn.ModuleDict(
            {
                "lung": PooledOverlap(),
                "infection": PooledOverlap(),
                "cls": _classification_collection(len(classes)),
            }
        )
        self.severity = nn.ModuleDict({name: MeanAbsoluteError() for name in self.severity_targets})
        # Synchronised item counts decide, identically on every rank, which tasks have anything to report.
        self.counts = nn.ModuleDict({name: SumMetric() for name in [*self.tasks, *self.severity]})

    @torch.no_grad()
    def update(self, out: CXRNetOutput, batch: Mapping[str, torch.Tensor]) -> None:
        """Accumulate one batch; items without a target are left out of that task."""
        for task, logits, key in (
            ("lung", out.lung_logits, "lung_mask"),
            ("infection", out.infection_logits, "infection_mask"),
        ):
            present = batch[f"has_{key}"]
            self.counts[task].update(present.sum())
            if present.any():
                self.tasks[task].update(logits[present], batch[key][present])
        labelled = batch["label"] >= 0
        self.counts["cls"].update(labelled.sum())
        if labelled.any():
            self.tasks["cls"].update(
                torch.softmax(out.class_logits[labelled].float(), dim=1), batch["label"][labelled]
            )
        for k, name in enumerate(self.severity_targets):
            target = batch["severity"][:, k]
            present = ~torch.isnan(target)
            self.counts[name].update(present.sum())
            if out.severity is not None and present.any():
                self.severity[name].update(out.severity[present, k].float(), target[present])

    def compute(self, stage: str) -> dict[str, float]:
        """Flat ``{"<stage>/<task>/<metric>[/<class>]": value}`` for every task with at least one item."""
        result: dict[str, float] = {}
        for task, collection in self.tasks.items():
            n = int(self.counts[task].compute())
            if n == 0:
                continue
            result[f"{stage}/{task}/n"] = float(n)
            for name, value in collection.compute().items():
                if value.ndim == 0:
                    result[f"{stage}/{task}/{name}"] = float(value)
                    continue
                result.update({f"{stage}/{task}/{name}/{c}": float(v) for c, v in zip(self.classes, value)})
                if name == "auroc":
                    result[f"{stage}/{task}/auroc"] = float(torch.nanmean(value))
        for name, metric in self.severity.items():
            if int(self.counts[name].compute()) > 0:
                result[f"{stage}/severity/mae/{name}"] = float(metric.compute())
        return result

    def reset(self) -> None:
        for module in [*self.tasks.values(), *self.severity.values(), *self.counts.values()]:
            module.reset()
