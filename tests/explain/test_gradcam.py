"""Explainers: maps of the input's shape in [0, 1], no trace left on the model, and a known answer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrnet.explain import EXPLAINERS, GradCAM, GradCAMPlusPlus, get_explainer, native_explanation
from cxrnet.explain.layers import gated_input
from cxrnet.models import CXRNet, Heads, create_model

CLASSES = ["normal", "bacterial", "viral", "covid19"]


@pytest.fixture(scope="module")
def net() -> CXRNet:
    torch.manual_seed(0)
    return create_model(
        classes=CLASSES, encoder="tu-mobilenetv3_small_100", decoder_channels=[32, 24, 16, 16, 8]
    ).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 1, 64, 96, generator=torch.Generator().manual_seed(0))


def _hook_count(net: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in net.modules()
    )


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_maps_have_the_input_size_and_lie_in_unit_range(net: CXRNet, images: torch.Tensor, name: str) -> None:
    maps = get_explainer(name, net)(images)
    assert maps.shape == (2, 64, 96)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    for one in maps:  # per-image normalisation: each non-flat map spans [0, 1]
        if one.max() > one.min():
            assert one.min() == 0 and one.max() == pytest.approx(1.0)


def test_native_map_is_the_models_explanation_rescaled(net: CXRNet, images: torch.Tensor) -> None:
    with torch.no_grad():
        raw = net(images).explanation[:, 0]
    maps = native_explanation(net, images)
    for one, reference in zip(maps, raw):
        expected = (reference - reference.min()) / (reference.max() - reference.min())
        torch.testing.assert_close(one, expected)


def test_gated_path_reproduces_the_forward_pass(net: CXRNet, images: torch.Tensor) -> None:
    with torch.no_grad():
        logits = net.forward_heads(net.forward_features(gated_input(net, images))).class_logits
        torch.testing.assert_close(logits, net(images).class_logits)


@pytest.mark.parametrize("target_layer", [None, "classifier_encoder.model.blocks.3"])
@pytest.mark.parametrize("explainer", [GradCAM, GradCAMPlusPlus])
def test_gradcam_leaves_no_trace_on_the_model(
    net: CXRNet, images: torch.Tensor, explainer: type[GradCAM], target_layer: str | None
) -> None:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()  # the explainer runs in eval mode and restores the caller's mode
    try:
        maps = explainer(net, target_layer=target_layer)(images, class_index=[1, 3])
    finally:
        training = [m.training for m in net.modules()]
        net.eval()
    assert all(training)
    assert maps.shape == (2, 64, 96)
    assert _hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())
    for key, value in net.state_dict().items():  # weights and BatchNorm statistics
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


def test_hooks_are_removed_when_the_call_fails(net: CXRNet, images: torch.Tensor) -> None:
    cam = GradCAM(net, target_layer="classifier_encoder.model.blocks.3")
    with pytest.raises(ValueError, match="class_index"):
        cam(images, class_index=len(CLASSES))
    assert _hook_count(net) == 0


def test_frozen_weights_still_give_a_map(images: torch.Tensor) -> None:
    torch.manual_seed(1)
    frozen = create_model(
        classes=CLASSES, encoder="tu-mobilenetv3_small_100", decoder_channels=[32, 24, 16, 16, 8]
    ).eval()
    frozen.requires_grad_(False)
    maps = GradCAM(frozen)(images)
    assert maps.shape == (2, 64, 96) and torch.isfinite(maps).all()


def test_bad_names_and_layers_say_what_is_valid(net: CXRNet) -> None:
    with pytest.raises(ValueError, match=r"valid explainers: native, gradcam, gradcam\+\+"):
        get_explainer("lime", net)
    with pytest.raises(ValueError, match="classifier_encoder"):
        GradCAM(net, target_layer="classifier_encoder.no_such_block")
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(net, target_layer=nn.Conv2d(1, 1, 1))


class QuadrantNet(nn.Module):
    """A hand-built stand-in with CXRNet's interface whose class evidence has a known place.

    The explanation gate is open everywhere. Encoder 2 has two channels: ``relu(x)`` (bright evidence) and
    ``relu(-x)`` (dark evidence), pooled to 8×8; class 0 ("bright") and class 1 ("dark") are their means.
    """

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        self.classifier_encoder = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(8))

    def gated_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(torch.full_like(x, 20.0))  # explanation ≈ 1: the gate keeps the whole image

    def forward_features(self, gated: torch.Tensor) -> torch.Tensor:
        return self.classifier_encoder(gated)

    def forward_heads(self, features: torch.Tensor) -> Heads:
        return Heads(features.mean(dim=(2, 3)), None)


def _quadrant_of_peak(saliency: torch.Tensor) -> tuple[int, int]:
    row, col = divmod(int(saliency.argmax()), saliency.shape[1])
    return row // (saliency.shape[0] // 2), col // (saliency.shape[1] // 2)


@pytest.mark.parametrize("explainer", [GradCAM, GradCAMPlusPlus])
def test_known_answer_peaks_in_the_quadrant_holding_the_evidence(explainer: type[GradCAM]) -> None:
    image = torch.zeros(1, 1, 64, 64)
    image[..., 8:24, 40:56] = 1.0  # bright evidence, top-right quadrant (the larger one: predicted class)
    image[..., 44:52, 8:16] = -1.0  # dark evidence, bottom-left quadrant
    cam = explainer(QuadrantNet())
    predicted = cam(image)[0]
    assert _quadrant_of_peak(predicted) == (0, 1)
    assert predicted[:32, 32:].mean() > 5 * predicted[32:, :32].mean()
    dark = cam(image, class_index=1)[0]
    assert _quadrant_of_peak(dark) == (1, 0)
    assert dark[32:, :32].mean() > 5 * dark[:32, 32:].mean()
