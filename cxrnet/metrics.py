"""Training-time metrics: one torchmetrics ``MetricCollection`` per task, cloned per stage.

Logged names are ``<stage>/<task>/<metric>`` with per-class values as ``<stage>/cls/<metric>/<class>``, e.g.
``test/lung/dice``, ``val/cls/macro_f1``, ``test/cls/sensitivity/covid19``. Segmentation scores are pooled
over all pixels of the items that have the mask (micro Dice / IoU); ``<task>/n`` counts those items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryJaccardIndex,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassRecall,
    MulticlassSpecificity,
)

from cxrnet.models.cxrnet import CXRNetOutput

SEGMENTATION_TASKS = ("lung", "infection")


def _segmentation_collection() -> MetricCollection:
    return MetricCollection({"dice": BinaryF1Score(), "iou": BinaryJaccardIndex()})


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
                "lung": _segmentation_collection(),
                "infection": _segmentation_collection(),
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
                self.tasks[task].update(
                    torch.sigmoid(logits[present]).flatten(), batch[key][present].flatten().long()
                )
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
