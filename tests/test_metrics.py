"""Training-time metrics: pooled Dice and IoU equal torchmetrics' definitions, items without a mask left out."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

from cxrnet.metrics import PooledOverlap, TaskMetrics
from cxrnet.models.cxrnet import CXRNetOutput


@pytest.mark.parametrize("shift", [-4.0, 0.0, 2.0])
def test_pooled_overlap_equals_torchmetrics_on_probabilities(shift: float) -> None:
    generator = torch.Generator().manual_seed(int(shift) + 10)
    ours, f1, jaccard = PooledOverlap(), BinaryF1Score(), BinaryJaccardIndex()
    for _ in range(3):
        logits = torch.randn(4, 1, 32, 32, generator=generator) * 3 + shift
        target = (torch.rand(4, 1, 32, 32, generator=generator) > 0.6).float()
        ours.update(logits, target)
        f1.update(torch.sigmoid(logits).flatten(), target.flatten().long())
        jaccard.update(torch.sigmoid(logits).flatten(), target.flatten().long())
    scores = ours.compute()
    assert float(scores["dice_pooled"]) == pytest.approx(float(f1.compute()), abs=1e-6)
    assert float(scores["iou_pooled"]) == pytest.approx(float(jaccard.compute()), abs=1e-6)


def test_an_empty_union_scores_zero_and_reset_starts_afresh() -> None:
    metric = PooledOverlap()
    metric.update(torch.full((1, 1, 4, 4), -5.0), torch.zeros(1, 1, 4, 4))
    assert float(metric.compute()["dice_pooled"]) == 0.0 and float(metric.compute()["iou_pooled"]) == 0.0
    metric.reset()
    metric.update(torch.full((1, 1, 4, 4), 5.0), torch.ones(1, 1, 4, 4))
    assert float(metric.compute()["dice_pooled"]) == 1.0


def test_task_metrics_pool_only_items_that_have_the_mask() -> None:
    metrics = TaskMetrics(["a", "b"])
    perfect = torch.where(torch.arange(64).reshape(1, 1, 8, 8) % 2 == 0, 5.0, -5.0).repeat(2, 1, 1, 1)
    mask = (perfect > 0).float()
    wrong = -perfect  # the second item's prediction is the complement of the first's mask
    out = CXRNetOutput(
        lung_logits=torch.cat([perfect[:1], wrong[1:]]),
        infection_logits=perfect,
        explanation=torch.zeros(2, 1, 8, 8),
        class_logits=torch.tensor([[3.0, 0.0], [0.0, 3.0]]),
    )
    batch = {
        "lung_mask": mask,
        "has_lung_mask": torch.tensor([True, False]),  # the wrong item has no lung mask: not scored
        "infection_mask": mask,
        "has_infection_mask": torch.tensor([True, True]),
        "label": torch.tensor([0, 1]),
        "severity": torch.zeros(2, 0),
    }
    metrics.update(out, batch)
    result = metrics.compute("val")
    assert result["val/lung/dice_pooled"] == pytest.approx(1.0) and result["val/lung/n"] == 1.0
    assert result["val/infection/dice_pooled"] == pytest.approx(1.0) and result["val/infection/n"] == 2.0
    # pooled scores say so: evaluate's per-image means are ``dice/mean``, a bare ``dice`` would mean either
    assert {k for k in result if k.startswith("val/lung/")} == {
        "val/lung/n",
        "val/lung/dice_pooled",
        "val/lung/iou_pooled",
    }
    assert result["val/cls/accuracy"] == pytest.approx(1.0)
