"""One shared suite over encoders × decoders, plus the input checks users meet first."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from cxrnet.models import CXRNet, CXRNetOutput, create_model, list_decoders, list_encoders, pad_to_multiple
from cxrnet.models.encoders import DILATED_DECODERS, min_input_size
from cxrnet.models.heads import dilate_mask

README = Path(__file__).resolve().parents[2] / "README.md"
CLASSES = ["normal", "bacterial", "viral", "covid19"]
# Every encoder family README.md advertises (name prefix → its smallest member, built with random weights).
ENCODER_FAMILIES = {
    "resnet": "resnet18",
    "densenet": "densenet121",
    "efficientnet-": "efficientnet-b0",
    "tu-convnext_": "tu-convnext_atto",
    "tu-mobilenetv3_": "tu-mobilenetv3_small_050",
}
ENCODERS = list(ENCODER_FAMILIES.values())
NO_DILATED_MODE = {"densenet121"}  # smp's densenets cannot run dilated (output stride 16)


def _readme_row(what: str) -> str:
    rows = [
        line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith(f"| {what} |")
    ]
    assert len(rows) == 1, f"README.md should have one recipe row for {what!r}"
    return rows[0].split("|")[3]


def test_readme_advertises_exactly_the_registered_decoders() -> None:
    listed = _readme_row("decoder").split(";")[0]  # the list; notes on some decoders follow a ";"
    assert sorted(re.findall(r"`([a-z0-9]+)`", listed)) == list_decoders()


def test_every_advertised_encoder_family_is_tested() -> None:
    advertised = re.findall(r"`([a-z0-9_.-]+)`", _readme_row("encoder"))  # `tu-<name>` is not a name
    assert advertised, "no encoder names found in the README's encoder row"
    for name in advertised:
        family = [prefix for prefix in ENCODER_FAMILIES if name.startswith(prefix)]
        assert family, f"README.md advertises encoder {name!r} of a family ENCODER_FAMILIES does not test"
        assert name in list_encoders() or timm.is_model(name.removeprefix("tu-")), name
    for name in ENCODERS:
        assert name in list_encoders() or timm.is_model(name.removeprefix("tu-")), name


def _gradient_reaches(part: nn.Module) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in part.parameters())


@pytest.mark.parametrize("decoder", list_decoders())
@pytest.mark.parametrize("encoder", ENCODERS)
def test_forward_backward_every_head(encoder: str, decoder: str) -> None:
    torch.manual_seed(0)
    config = dict(
        classes=CLASSES,
        encoder=encoder,
        decoder=decoder,
        severity_targets=["brixia"],
        severity_scales={"brixia": 18},
    )
    if encoder in NO_DILATED_MODE and decoder in DILATED_DECODERS:
        with pytest.raises(
            ValueError, match=rf"{decoder}.*dilated.*choose a decoder that does not dilate \(fpn"
        ):
            create_model(**config)
        return
    net = create_model(**config)
    size = max(64, min_input_size(decoder))  # 64 px, or the decoder's documented minimum (pan: 128)
    out = net(torch.randn(2, 1, size, size))
    assert isinstance(out, CXRNetOutput) and out._fields == (
        "lung_logits",
        "infection_logits",
        "explanation",
        "class_logits",
        "severity",
    )
    expl, severity = out.explanation.detach(), out.severity.detach()
    assert out.lung_logits.shape == out.infection_logits.shape == out.explanation.shape == (2, 1, size, size)
    assert out.class_logits.shape == (2, 4)
    assert out.severity.shape == (2, 1)
    assert float(expl.min()) >= 0 and float(expl.max()) <= 1
    assert float(severity.min()) >= 0 and float(severity.max()) <= 18
    loss = (
        out.lung_logits.mean() + out.infection_logits.mean() + out.class_logits.mean() + out.severity.mean()
    )
    loss.backward()
    for name in (
        "encoder",
        "decoder",
        "segmentation_head",
        "classifier_encoder",
        "classification_head",
        "severity_head",
    ):
        assert _gradient_reaches(getattr(net, name)), f"no gradient reaches {name}"
    # each map of the segmentation head (lung, infection, explanation through the gate) learns
    conv = next(m for m in net.segmentation_head.modules() if isinstance(m, nn.Conv2d))
    assert bool((conv.weight.grad.abs().sum(dim=(1, 2, 3)) > 0).all())


def test_pan_below_its_minimum_size_says_what_size_works() -> None:
    net = create_model(classes=CLASSES, encoder="tu-mobilenetv3_small_050", decoder="pan")
    with pytest.raises(ValueError, match=r"64×64 is smaller than 128×128.*'pan'.*data.image_size=128"):
        net(torch.zeros(2, 1, 64, 64))


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
    assert outside.any() and float(out.explanation.detach()[outside].abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pixels", [0, 1, 3, 8])
def test_lung_dilation_is_a_square_max_filter(dtype: torch.dtype, pixels: int) -> None:
    torch.manual_seed(pixels)
    mask = (torch.rand(2, 1, 96, 80) > 0.97).to(dtype)
    mask[0, 0, 0, 0] = mask[1, 0, -1, -1] = 1  # corners: the square is cut at the border
    expected = F.max_pool2d(mask.float(), 2 * pixels + 1, stride=1, padding=pixels) if pixels else mask
    got = dilate_mask(mask, pixels)
    assert got.dtype == dtype
    assert torch.equal(got.float(), expected.float())


def test_explanation_smoothing_flattens_a_rim_at_the_lung_border_and_keeps_the_gate() -> None:
    net = create_model(
        classes=CLASSES,
        encoder="tu-mobilenetv3_small_100",
        gate_with_lungs=True,
        lung_dilation=0,
        explanation_smoothing=2 / 64,  # σ = 2 px
    )
    lung_logits = torch.full((1, 1, 64, 64), -20.0)
    lung_logits[..., 10:54, 10:54] = 20.0
    raw = torch.zeros(1, 1, 64, 64)
    raw[..., 10:54, 10] = 1.0  # a one-pixel rim along the lung border
    raw[..., 28:38, 28:38] = 1.0  # a 10×10 lesion inside
    gate = net.gate_map(lung_logits, raw)
    assert float(gate[..., :10, :].max()) == 0.0 and float(gate[..., 54:, :].max()) == 0.0  # gated again
    assert float(gate.min()) >= 0.0 and float(gate.max()) <= 1.0
    # The rim fades; the lesion stays.
    assert float(gate[..., 30, 10]) < 0.2 and float(gate[..., 33, 33]) > 0.9
    peak = divmod(int(gate.argmax()), 64)
    assert 28 <= peak[0] < 38 and 28 <= peak[1] < 38
    # Off (the default), the same map peaks on the rim as much as on the lesion.
    plain = create_model(
        classes=CLASSES, encoder="tu-mobilenetv3_small_100", gate_with_lungs=True, lung_dilation=0
    )
    assert float(plain.gate_map(lung_logits, raw)[..., 30, 10]) == 1.0
    with pytest.raises(ValueError, match=r"explanation_smoothing is 0\.7"):
        create_model(classes=CLASSES, encoder="tu-mobilenetv3_small_100", explanation_smoothing=0.7)


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


def test_deletion_view_trains_only_the_map_and_keeps_the_lung_fields() -> None:
    torch.manual_seed(0)
    net = create_model(
        classes=["a", "b"],
        encoder="tu-mobilenetv3_small_100",
        decoder_channels=[32, 24, 16, 16, 8],
        gate_with_lungs=True,
    ).train()
    x = torch.randn(2, 1, 64, 64)
    out = net(x)
    lungs = net.lung_gate(out.lung_logits, x)
    with torch.no_grad():  # the view is the lung fields minus the map, seen by encoder 2 in eval mode
        net.classifier_encoder.eval()
        net.classification_head.eval()
        keep = (lungs - out.explanation).clamp(0, 1)
        expected = net.forward_heads(net.forward_features(x * keep)).class_logits
        net.train()
    logits = net.deletion_logits(x, out.explanation, out.lung_logits)
    torch.testing.assert_close(logits, expected)
    assert net.classifier_encoder.training and net.classification_head.training  # modes restored
    assert all(p.requires_grad for p in net.parameters())
    logits[:, 0].sum().backward()
    assert all(p.grad is None for p in net.classifier_encoder.parameters())
    assert all(p.grad is None for p in net.classification_head.parameters())
    head = next(net.segmentation_head.parameters())  # the map's gradient reaches the decoder's head
    assert head.grad is not None and float(head.grad.abs().sum()) > 0


def test_ungated_view_sees_the_lung_fields_without_the_map() -> None:
    torch.manual_seed(0)
    net = create_model(
        classes=["a", "b"], encoder="tu-mobilenetv3_small_100", decoder_channels=[32, 24, 16, 16, 8]
    ).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = net(x)
        ungated = net.ungated_logits(x, out.lung_logits)
        torch.testing.assert_close(ungated, net.forward_heads(net.forward_features(x)).class_logits)
        assert not torch.allclose(ungated, out.class_logits)  # the gated view differs
    net.gate_with_lungs = True
    with torch.no_grad():
        lungs = net.lung_gate(out.lung_logits, x)
        torch.testing.assert_close(
            net.ungated_logits(x, out.lung_logits),
            net.forward_heads(net.forward_features(x * lungs)).class_logits,
        )


def test_ungated_view_trains_weights_but_keeps_the_gated_normalisation_statistics() -> None:
    # Encoder 2's batch-norm statistics must describe the gated images it sees at inference; an ungated view
    # (mostly full lung fields) mixed into them made a small-gated model call nearly everything normal.
    torch.manual_seed(0)
    net = create_model(
        classes=["a", "b"], encoder="tu-mobilenetv3_small_100", decoder_channels=[32, 24, 16, 16, 8]
    ).train()
    norms = [m for m in net.classifier_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    x = torch.randn(2, 1, 64, 64)
    out = net(x)
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in norms]
    momenta = [m.momentum for m in norms]
    logits = net.ungated_logits(x * 3 + 1, out.lung_logits.detach())
    for m, (mean, var, count) in zip(norms, before):
        torch.testing.assert_close(m.running_mean, mean, rtol=0, atol=0)
        torch.testing.assert_close(m.running_var, var, rtol=0, atol=0)
        assert int(m.num_batches_tracked) == count
    assert [m.momentum for m in norms] == momenta  # restored
    logits.sum().backward()  # the weights still learn from the view
    assert any(
        p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.classifier_encoder.parameters()
    )
    net(x * 3 + 1)  # while the main forward still updates them
    assert any(not torch.equal(m.running_mean, mean) for m, (mean, _, _) in zip(norms, before))
