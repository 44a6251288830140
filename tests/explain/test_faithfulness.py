"""Deletion and insertion curves on models whose evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrnet.explain import native_explanation
from cxrnet.explain.faithfulness import Curves, default_baseline, deletion_curve, insertion_curve
from cxrnet.models import create_model
from cxrnet.models.heads import blur

REGION = (slice(16, 32), slice(24, 40))  # rows, columns of the evidence in a 48×64 image


class RegionModel(nn.Module):
    """Class 1's logit is ``10 · mean intensity of REGION − 2``, class 0's is 0: nothing else matters."""

    def __init__(self, gate_fill: str = "zero") -> None:
        super().__init__()
        self.gate_fill = gate_fill
        self.dropout = nn.Dropout(0.0)  # a submodule whose train flag must survive

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        evidence = images[:, 0, REGION[0], REGION[1]].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(evidence), 10 * evidence - 2], dim=1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(4, 1, 48, 64, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5


def region_map(batch: int = 4) -> torch.Tensor:
    maps = torch.zeros(batch, 48, 64)
    maps[:, REGION[0], REGION[1]] = 1.0
    return maps


def test_a_map_of_the_evidence_beats_its_reverse_and_a_random_map(images: torch.Tensor) -> None:
    model = RegionModel()
    good = region_map()
    maps = {
        "region": good,
        "reversed": 1 - good,
        "random": torch.rand(4, 48, 64, generator=torch.Generator().manual_seed(1)),
    }
    deletion = {name: deletion_curve(model, images, m, class_index=1).auc for name, m in maps.items()}
    insertion = {name: insertion_curve(model, images, m, class_index=1).auc for name, m in maps.items()}
    # measured: deletion AUC 0.17 / 0.97 / 0.68-0.71, insertion AUC 0.97 / 0.17 / 0.71-0.74
    # (region / reversed / random map); the logit is steep, so a random map keeps the class for a while
    assert (deletion["region"] < deletion["random"] - 0.1).all()
    assert (deletion["random"] < deletion["reversed"] - 0.1).all()
    assert (insertion["region"] > insertion["random"] + 0.1).all()
    assert (insertion["random"] > insertion["reversed"] + 0.1).all()
    for auc in [*deletion.values(), *insertion.values()]:
        assert ((auc >= 0) & (auc <= 1)).all()


def test_curves_start_and_end_at_the_clean_image_and_the_baseline(images: torch.Tensor) -> None:
    model = RegionModel()
    clean = torch.softmax(model(images), dim=1)[:, 1]
    empty = torch.softmax(model(torch.zeros_like(images)), dim=1)[:, 1]
    deletion = deletion_curve(model, images, region_map(), class_index=1)
    insertion = insertion_curve(model, images, region_map(), class_index=1)
    assert isinstance(deletion, Curves) and deletion.probabilities.shape == (4, 21)
    # 5 % steps, each rounded to whole pixels (3072 here): the fractions report what was removed
    torch.testing.assert_close(deletion.fractions, torch.linspace(0, 1, 21), atol=0.5 / 3072, rtol=0)
    torch.testing.assert_close(deletion.probabilities[:, 0], clean)
    torch.testing.assert_close(deletion.probabilities[:, -1], empty)
    torch.testing.assert_close(insertion.probabilities[:, 0], empty)
    torch.testing.assert_close(insertion.probabilities[:, -1], clean)
    expected = np.trapezoid(deletion.probabilities.numpy(), deletion.fractions.numpy(), axis=1)
    np.testing.assert_allclose(deletion.auc.numpy(), expected, rtol=1e-6)


def test_each_step_removes_an_equal_fraction_of_the_pixels() -> None:
    def mean_model(x: torch.Tensor) -> torch.Tensor:  # logit 1 = mean intensity: 1 − the fraction removed
        return torch.stack([torch.zeros(len(x)), x.mean(dim=(1, 2, 3))], dim=1)

    ones = torch.ones(1, 1, 8, 8)
    saliency = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    curve = deletion_curve(mean_model, ones, saliency, class_index=1, steps=4)
    removed = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    torch.testing.assert_close(curve.fractions, removed)
    torch.testing.assert_close(curve.probabilities[0], torch.sigmoid(1 - removed))
    curve = insertion_curve(mean_model, ones, saliency, class_index=1, steps=4)
    torch.testing.assert_close(curve.probabilities[0], torch.sigmoid(removed))


def test_ties_are_broken_in_row_major_order(images: torch.Tensor) -> None:
    model = RegionModel()
    flat = torch.zeros(4, 48, 64)
    row_major = -torch.arange(48 * 64, dtype=torch.float32).view(1, 48, 64).expand(4, -1, -1)
    for curve in (deletion_curve, insertion_curve):
        tied, ordered = (
            curve(model, images, flat, class_index=1),
            curve(model, images, row_major, class_index=1),
        )
        torch.testing.assert_close(tied.probabilities, ordered.probabilities, rtol=0, atol=0)


def test_batching_does_not_change_the_curves(images: torch.Tensor) -> None:
    model, saliency = RegionModel(), torch.rand(4, 48, 64, generator=torch.Generator().manual_seed(2))
    one = deletion_curve(model, images, saliency, batch_size=1, steps=5)
    many = deletion_curve(model, images, saliency, batch_size=1000, steps=5)
    torch.testing.assert_close(one.probabilities, many.probabilities)


def test_the_default_baseline_is_the_models_gate_fill(images: torch.Tensor) -> None:
    torch.testing.assert_close(default_baseline(RegionModel("zero"), images), torch.zeros_like(images))
    blurred = blur(images, 8)
    torch.testing.assert_close(default_baseline(RegionModel("blur"), images), blurred)
    model = RegionModel("blur")
    end = deletion_curve(model, images, region_map(), class_index=1).probabilities[:, -1]
    torch.testing.assert_close(end, torch.softmax(model(blurred), dim=1)[:, 1])
    baseline = torch.full_like(images, 0.5)
    start = insertion_curve(model, images, region_map(), class_index=1, baseline=baseline).probabilities[:, 0]
    torch.testing.assert_close(start, torch.softmax(model(baseline), dim=1)[:, 1])


def test_predicted_class_and_the_models_mode(images: torch.Tensor) -> None:
    model = RegionModel().train()
    curve = deletion_curve(model, images, region_map())
    assert (curve.class_index == model(images).argmax(1)).all()
    assert all(m.training for m in model.modules())


def test_bad_inputs_say_how_to_fix_them(images: torch.Tensor) -> None:
    model = RegionModel()
    with pytest.raises(ValueError, match="upsample the maps"):
        deletion_curve(model, images, torch.zeros(4, 12, 16))
    with pytest.raises(ValueError, match="class_index"):
        deletion_curve(model, images, region_map(), class_index=2)
    with pytest.raises(ValueError, match="NaN"):
        insertion_curve(model, images, torch.full((4, 48, 64), float("nan")))
    with pytest.raises(ValueError, match="class logits"):
        deletion_curve(lambda x: x.mean(), images, region_map())


def test_runs_on_the_whole_cxrnet() -> None:
    torch.manual_seed(0)
    net = create_model(
        classes=["a", "b", "c"], encoder="tu-mobilenetv3_small_100", decoder_channels=[32, 24, 16, 16, 8]
    )
    net.eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = native_explanation(net, x)
    curve = deletion_curve(net, x, maps, steps=4, batch_size=3)
    with torch.no_grad():
        clean = torch.softmax(net(x).class_logits, dim=1)
    torch.testing.assert_close(curve.probabilities[:, 0], clean.max(dim=1).values)
    assert curve.probabilities.shape == (2, 5) and ((curve.auc >= 0) & (curve.auc <= 1)).all()
