"""One shared suite over encoders × decoders, plus the input checks users meet first."""

from __future__ import annotations

import pytest
import torch

from cxrnet.models import CXRNet, create_model, list_decoders, list_encoders, pad_to_multiple

CLASSES = ["normal", "bacterial", "viral", "covid19"]
ENCODERS = ["resnet18", "efficientnet-b0", "tu-convnext_atto", "tu-mobilenetv3_small_100"]
DECODERS = ["unet", "unetplusplus", "fpn", "deeplabv3plus"]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_forward_backward_every_head(encoder: str, decoder: str) -> None:
    torch.manual_seed(0)
    net = create_model(
        classes=CLASSES,
        encoder=encoder,
        decoder=decoder,
        severity_targets=["brixia"],
        severity_scales={"brixia": 18},
    )
    x = torch.randn(2, 1, 64, 64)
    out = net(x)
    expl, severity = out.explanation.detach(), out.severity.detach()
    assert out.lung_logits.shape == out.infection_logits.shape == out.explanation.shape == (2, 1, 64, 64)
    assert out.class_logits.shape == (2, 4)
    assert out.severity.shape == (2, 1)
    assert float(expl.min()) >= 0 and float(expl.max()) <= 1
    assert float(severity.min()) >= 0 and float(severity.max()) <= 18
    loss = (
        out.lung_logits.mean() + out.infection_logits.mean() + out.class_logits.mean() + out.severity.mean()
    )
    loss.backward()
    for part in (
        net.encoder,
        net.decoder,
        net.segmentation_head,
        net.classifier_encoder,
        net.classification_head,
        net.severity_head,
    ):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), (
            f"no gradient reaches {type(part).__name__}"
        )


def test_densenet_encoder_with_unet() -> None:
    net = create_model(classes=CLASSES, encoder="densenet121", decoder="unet")
    assert net(torch.randn(1, 1, 64, 64)).class_logits.shape == (1, 4)


def test_explanation_gates_what_the_classifier_sees() -> None:
    torch.manual_seed(0)
    net = create_model(classes=CLASSES, encoder="tu-mobilenetv3_small_100").eval()
    x = torch.randn(1, 1, 64, 64)
    maps = net.segment(x)
    gated = net.gate(x, maps[:, :1], torch.zeros_like(maps[:, :1]))
    closed = net.forward_heads(net.forward_features(gated)).class_logits
    blank = net.forward_heads(net.forward_features(torch.zeros_like(x))).class_logits
    # With a closed gate the classifier sees nothing of the image: same logits as for a blank input.
    torch.testing.assert_close(closed, blank)


def test_gate_with_lungs_removes_everything_outside_the_lungs() -> None:
    net = create_model(
        classes=CLASSES, encoder="tu-mobilenetv3_small_100", gate_with_lungs=True, lung_dilation=0
    )
    x = torch.randn(1, 1, 64, 64)
    lung_logits = torch.full((1, 1, 64, 64), -20.0)
    lung_logits[..., 10:30, 10:30] = 20.0
    gated = net.gate(x, lung_logits, torch.ones_like(x))
    assert float(gated[..., :10, :].abs().max()) < 1e-6 and float(gated[..., 30:, :].abs().max()) < 1e-6
    torch.testing.assert_close(gated[..., 10:30, 10:30], x[..., 10:30, 10:30])
    # The explanation users get is this effective gate, not the raw map: outside the lungs it is zero.
    gate = net.gate_map(lung_logits, torch.ones_like(x))
    assert float(gate[..., :10, :].max()) < 1e-6 and float(gate[..., 10:30, 10:30].min()) > 0.99
    out = net.eval()(x)
    outside = out.lung_logits <= 0  # the predicted lung fields are where the probability exceeds 0.5
    assert outside.any() and float(out.explanation[outside].abs().max()) == 0.0


def test_size_not_divisible_by_32_says_how_to_pad() -> None:
    net = create_model(classes=CLASSES, encoder="tu-mobilenetv3_small_100")
    with pytest.raises(ValueError, match=r"250×250 is not divisible by 32; pad it to 256×256"):
        net(torch.zeros(1, 1, 250, 250))
    padded, original = pad_to_multiple(torch.zeros(1, 1, 250, 250), 32)
    assert padded.shape[-2:] == (256, 256) and original == (250, 250)
    assert net.eval()(padded).lung_logits.shape[-2:] == (256, 256)


def test_rgb_input_is_refused_with_a_fix() -> None:
    net = create_model(classes=CLASSES, encoder="tu-mobilenetv3_small_100")
    with pytest.raises(ValueError, match="grayscale"):
        net(torch.zeros(1, 3, 64, 64))


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"valid smp encoders: .*resnet18"):
        create_model(classes=CLASSES, encoder="resnet19")
    with pytest.raises(ValueError, match="valid decoders: deeplabv3plus, fpn"):
        create_model(classes=CLASSES, decoder="segformerx")
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model(classes=CLASSES, encoder="tu-not_a_model")
    assert "resnet50" in list_encoders() and "unetplusplus" in list_decoders()


def test_pretrained_offline_failure_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch as smp

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(smp, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"internet.*model\.pretrained=false"):
        CXRNet(CLASSES, encoder="resnet18", pretrained=True)


def test_config_rebuilds_the_same_architecture() -> None:
    net = create_model(
        classes=CLASSES,
        encoder="tu-mobilenetv3_small_100",
        decoder="fpn",
        severity_targets=["brixia", "geographic_extent"],
    )
    clone = create_model(**net.config)
    clone.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 64, 64)
    a, b = net.eval()(x), clone.eval()(x)
    for left, right in zip(a, b):
        torch.testing.assert_close(left, right)


def test_blur_fill_builds_and_keeps_gated_regions() -> None:
    net = create_model(classes=CLASSES, encoder="tu-mobilenetv3_small_100", gate_fill="blur")
    x = torch.randn(1, 1, 64, 64)
    gate = torch.zeros_like(x)
    gate[..., :32, :] = 1
    gated = net.gate(x, torch.zeros_like(x), gate)
    torch.testing.assert_close(gated[..., :32, :], x[..., :32, :])
    assert float(gated[..., 32:, :].std()) < float(
        x[..., 32:, :].std()
    )  # the removed half is blurred, not kept


def test_one_gate_serves_forward_explainers_and_the_deletion_term() -> None:
    """``maps``/``gated_input``/``deletion_logits`` are the forward pass's own gate, not copies of it."""
    torch.manual_seed(0)
    net = create_model(
        classes=["a", "b", "c"],
        encoder="tu-mobilenetv3_small_100",
        decoder_channels=[32, 24, 16, 16, 8],
        gate_with_lungs=True,
        severity_targets=["brixia"],
    ).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = net(x)
        lung, infection, explanation = net.maps(x)
        torch.testing.assert_close(explanation, out.explanation)
        torch.testing.assert_close(lung, out.lung_logits)
        torch.testing.assert_close(infection, out.infection_logits)
        heads = net.forward_heads(net.forward_features(net.gated_input(x)))
        torch.testing.assert_close(heads.class_logits, out.class_logits)
        torch.testing.assert_close(heads.severity, out.severity)
        removed = net.forward_heads(net.forward_features(x * (1 - explanation))).class_logits
        torch.testing.assert_close(net.deletion_logits(x, explanation), removed)
        assert not torch.allclose(net.deletion_logits(x, explanation), out.class_logits)
