"""Missing targets are masked, never faked; a task with no targets contributes an exact, finite zero."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cxrnet.losses import DEFAULT_WEIGHTS, MultiTaskLoss, classification_loss, dice_bce_loss, severity_loss
from cxrnet.models import CXRNetOutput
from cxrnet.train import build_module

from conftest import compose_train


def _batch(b: int = 4, size: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "lung_mask": (torch.rand(b, 1, size, size, generator=g) > 0.5).float(),
        "infection_mask": (torch.rand(b, 1, size, size, generator=g) > 0.8).float(),
        "label": torch.tensor([0, 1, -1, 3][:b]),
        "severity": torch.tensor([[1.0, 2.0], [float("nan"), 4.0], [float("nan")] * 2, [0.0, 0.0]][:b]),
        "has_lung_mask": torch.tensor([True, False, True, False][:b]),
        "has_infection_mask": torch.tensor([False, False, False, False][:b]),
    }


def _output(b: int = 4, size: int = 16, requires_grad: bool = True) -> CXRNetOutput:
    g = torch.Generator().manual_seed(1)
    t = lambda *shape: torch.randn(*shape, generator=g).requires_grad_(requires_grad)  # noqa: E731
    return CXRNetOutput(
        t(b, 1, size, size), t(b, 1, size, size), torch.sigmoid(t(b, 1, size, size)), t(b, 4), t(b, 2)
    )


def test_absent_task_is_zero_and_still_connected() -> None:
    out, batch = _output(), _batch()
    terms = MultiTaskLoss()(out, batch)
    assert float(terms["infection"].detach()) == 0.0
    assert all(math.isfinite(float(v)) for v in terms.values())
    terms["total"].backward()
    assert out.infection_logits.grad is not None  # graph-connected: DDP sees the parameters used
    assert float(out.infection_logits.grad.abs().sum()) == 0.0


def test_masked_terms_equal_the_loss_on_the_present_items_only() -> None:
    out, batch = _output(requires_grad=False), _batch()
    present = batch["has_lung_mask"]
    expected = dice_bce_loss(
        out.lung_logits[present], batch["lung_mask"][present], torch.ones(2, dtype=torch.bool)
    )
    torch.testing.assert_close(dice_bce_loss(out.lung_logits, batch["lung_mask"], present), expected)
    labelled = batch["label"] >= 0
    torch.testing.assert_close(
        classification_loss(out.class_logits, batch["label"]),
        torch.nn.functional.cross_entropy(out.class_logits[labelled], batch["label"][labelled]),
    )
    # Changing an absent item's target changes nothing.
    batch2 = dict(batch, lung_mask=batch["lung_mask"].clone(), label=batch["label"].clone())
    batch2["lung_mask"][1] = 1 - batch2["lung_mask"][1]
    assert float(MultiTaskLoss()(out, batch2)["lung"]) == float(MultiTaskLoss()(out, batch)["lung"])


def test_severity_skips_nan_and_no_labels_gives_zero() -> None:
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")]])
    assert float(severity_loss(pred, target, torch.ones(2))) == 0.0
    assert float(severity_loss(pred, torch.full_like(pred, float("nan")), torch.ones(2))) == 0.0
    assert float(classification_loss(torch.randn(3, 4), torch.full((3,), -1))) == 0.0


def test_weights_are_config_and_unknown_names_fail() -> None:
    out, batch = _output(requires_grad=False), _batch()
    only_cls = MultiTaskLoss(
        {
            name: 0.0
            for name in ("lung", "infection", "severity", "explanation_area", "explanation_smoothness")
        }
    )(out, batch)
    torch.testing.assert_close(only_cls["total"], only_cls["cls"])
    try:
        MultiTaskLoss({"lungs": 1.0})
    except ValueError as err:
        assert "lungs" in str(err) and "infection" in str(err)
    else:
        raise AssertionError("unknown weight name accepted")


def test_deletion_term_rewards_removing_the_evidence() -> None:
    out, batch = _output(requires_grad=False), _batch()
    confident = torch.zeros(4, 4)
    confident[torch.arange(4), batch["label"].clamp(min=0)] = 10.0
    uncertain = torch.zeros(4, 4)
    loss = MultiTaskLoss({"deletion": 1.0})
    assert float(loss(out, batch, deletion_logits=confident)["deletion"]) > 0.99
    assert abs(float(loss(out, batch, deletion_logits=uncertain)["deletion"]) - 0.25) < 1e-6


def test_deletion_term_skips_the_exempt_classes() -> None:
    out, batch = _output(requires_grad=False), _batch()  # labels 0, 1, -1, 3
    logits = torch.zeros(4, 4)
    logits[0, 0] = logits[1, 1] = logits[3, 3] = 10.0  # confident on every labelled item
    logits[3] = 0.0  # uncertain on the item of class 3
    loss = MultiTaskLoss({"deletion": 1.0}, deletion_exempt=["normal"])
    loss.bind_classes(["normal", "b", "c", "d"])  # class 0, the first item's, is exempt
    expected = (torch.softmax(logits[1], 0)[1] + 0.25) / 2
    torch.testing.assert_close(loss(out, batch, deletion_logits=logits)["deletion"], expected)
    loss.bind_classes(["a", "b", "c", "d"])  # no class called normal: nothing exempt
    assert float(loss(out, batch, deletion_logits=logits)["deletion"]) > float(expected)


def test_explanation_terms_ramp_in_over_the_warmup() -> None:
    out, batch = _output(requires_grad=False), _batch()
    logits = torch.zeros(4, 4)
    loss = MultiTaskLoss({"deletion": 1.0, "explanation_area": 2.0}, explanation_warmup=0.5)
    full = MultiTaskLoss({"deletion": 1.0, "explanation_area": 2.0})(out, batch, deletion_logits=logits)
    shaping = 2.0 * full["explanation_area"] + full["deletion"]
    for progress, share in ((0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (0.9, 1.0)):
        loss.progress = progress
        terms = loss(out, batch, deletion_logits=logits)
        torch.testing.assert_close(terms["total"], full["total"] - (1 - share) * shaping)
    try:
        MultiTaskLoss(explanation_warmup=1.5)
    except ValueError as err:
        assert "explanation_warmup" in str(err)
    else:
        raise AssertionError("a warm-up longer than training accepted")


def test_guidance_asks_the_map_to_match_the_infection_mask_where_there_is_one() -> None:
    batch = {**_batch(), "has_infection_mask": torch.tensor([True, True, False, False])}
    out = _output(requires_grad=False)
    target = batch["infection_mask"]
    matching = out._replace(explanation=target.clone())
    loss = MultiTaskLoss({"explanation_guidance": 1.0})
    assert "explanation_guidance" not in MultiTaskLoss()(out, batch)  # off by default
    assert float(loss(matching, batch)["explanation_guidance"]) < 0.01
    assert float(loss(out._replace(explanation=1 - target), batch)["explanation_guidance"]) > 5
    # items without a mask never count: changing their map changes nothing
    other = matching.explanation.clone()
    other[2:] = 1 - other[2:]
    torch.testing.assert_close(
        loss(out._replace(explanation=other), batch)["explanation_guidance"],
        loss(matching, batch)["explanation_guidance"],
    )


def test_guidance_holds_the_map_before_the_lung_gate_down_outside_the_lungs_too() -> None:
    # The gated map can match the mask while the map behind the gate is high outside the lungs; guided on the
    # raw map, that costs (it left a bright rim along the lung borders of the gated map).
    batch = {**_batch(), "has_infection_mask": torch.tensor([True, True, True, True])}
    target = batch["infection_mask"]
    out = _output(requires_grad=False)._replace(explanation=target.clone())
    loss = MultiTaskLoss({"explanation_guidance": 1.0})
    outside = target.clone()
    outside[..., :, :3] = 1.0  # high where the lung gate hides it
    gated_only = float(loss(out, batch)["explanation_guidance"])
    assert float(loss(out, batch, raw_explanation=target.clone())["explanation_guidance"]) == pytest.approx(
        gated_only, abs=1e-6
    )
    assert float(loss(out, batch, raw_explanation=outside)["explanation_guidance"]) > gated_only + 0.5


def test_the_module_guides_the_raw_map_in_one_forward_pass() -> None:
    from cxrnet.models import create_model
    from cxrnet.module import CXRNetModule

    torch.manual_seed(0)
    net = create_model(
        classes=["normal", "covid19"],
        encoder="tu-mobilenetv3_small_100",
        decoder_channels=[32, 24, 16, 16, 8],
        gate_with_lungs=True,
    ).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out, raw = net.forward_with_raw_map(x)
        for a, b in zip(out, net(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(out.explanation, raw * net.lung_gate(out.lung_logits, raw))
    seen: dict[str, torch.Tensor | None] = {}
    loss = MultiTaskLoss({"explanation_guidance": 1.0}, guide_raw_map=True)
    real = loss.forward

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen["raw"] = kwargs.get("raw_explanation")
        return real(*args, **kwargs)

    loss.forward = spy  # type: ignore[method-assign]
    module = CXRNetModule(net, loss=loss)
    module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    batch = {**_batch(b=2, size=64), "image": x}
    module._shared_step(batch, "train")
    assert seen["raw"] is not None and seen["raw"].shape == (2, 1, 64, 64)
    loss.guide_raw_map = False  # the default: guidance on the gated map, no raw map passed
    module._shared_step(batch, "train")
    assert seen["raw"] is None


def test_ungated_term_is_the_classification_loss_of_the_ungated_view() -> None:
    out, batch = _output(requires_grad=False), _batch()
    logits = torch.randn(4, 4)
    terms = MultiTaskLoss({"cls_ungated": 0.5})(out, batch, ungated_logits=logits)
    labelled = batch["label"] >= 0
    expected = torch.nn.functional.cross_entropy(logits[labelled], batch["label"][labelled])
    torch.testing.assert_close(terms["cls_ungated"], expected)
    without = MultiTaskLoss({"cls_ungated": 0.5})(out, batch)
    torch.testing.assert_close(terms["total"] - without["total"], 0.5 * expected)


def test_the_training_config_names_the_weights_and_the_loss_holds_their_values(tmp_path: Path) -> None:
    cfg = compose_train([], tmp_path)
    # every weight is named in train.yaml (so loss.weights.<name>=... overrides it), none given a value there
    assert OmegaConf.to_container(cfg.loss.weights) == dict.fromkeys(DEFAULT_WEIGHTS)
    assert instantiate(cfg.loss, _convert_="all").weights == DEFAULT_WEIGHTS
    cfg = compose_train(["loss.weights.cls=2"], tmp_path)
    assert instantiate(cfg.loss, _convert_="all").weights == {**DEFAULT_WEIGHTS, "cls": 2.0}
    cfg = compose_train(["+experiment=qata_infection"], tmp_path)
    changed = {"lung": 0.0, "infection": 2.0, "cls": 1.0, "severity": 0.0}
    assert instantiate(cfg.loss, _convert_="all").weights == {**DEFAULT_WEIGHTS, **changed}


def test_checkpoints_record_the_weights_the_loss_used(tiny_train_cfg: Callable[..., DictConfig]) -> None:
    cfg = tiny_train_cfg("loss.weights.severity=0.25", "record_training_data=false", n_train=8)
    module = build_module(cfg, instantiate(cfg.data, _convert_="all"))
    stored = OmegaConf.create(module.extra_metadata["config"]).loss.weights
    assert OmegaConf.to_container(stored) == module.loss.weights == {**DEFAULT_WEIGHTS, "severity": 0.25}


def test_the_module_adds_the_ungated_and_deletion_views_when_weighted() -> None:
    from cxrnet.models import create_model
    from cxrnet.module import CXRNetModule

    torch.manual_seed(0)
    net = create_model(
        classes=["a", "b", "c", "d"],
        encoder="tu-mobilenetv3_small_100",
        decoder_channels=[32, 24, 16, 16, 8],
        gate_with_lungs=True,
    )
    batch = {**_batch(size=64), "image": torch.randn(4, 1, 64, 64), "severity": torch.zeros(4, 0)}
    seen = {}
    module = CXRNetModule(net, loss=MultiTaskLoss({"cls_ungated": 0.5, "deletion": 0.5}))
    module.log_dict = lambda values, **_: seen.update(values)  # no Trainer here
    total = module.training_step(batch, 0)
    assert {"train/loss/cls_ungated", "train/loss/deletion"} <= set(seen)
    total.backward()  # every view is part of one graph
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    seen.clear()
    plain = CXRNetModule(net, loss=MultiTaskLoss())
    plain.log_dict = lambda values, **_: seen.update(values)
    plain.training_step(batch, 0)
    assert "train/loss/cls" in seen and not {"train/loss/cls_ungated", "train/loss/deletion"} & set(seen)


def test_the_module_tells_the_loss_how_far_training_is() -> None:
    from types import SimpleNamespace

    from cxrnet.models import create_model
    from cxrnet.module import CXRNetModule

    torch.manual_seed(0)
    net = create_model(
        classes=["a", "b", "c", "d"], encoder="tu-mobilenetv3_small_100", decoder_channels=[32, 24, 16, 16, 8]
    )
    module = CXRNetModule(net, loss=MultiTaskLoss(explanation_warmup=0.5))
    module.log_dict = lambda values, **_: None
    module._trainer = SimpleNamespace(estimated_stepping_batches=100, global_step=25)
    seen = []
    forward = module.loss.forward
    module.loss.forward = lambda *a, **k: (seen.append(module.loss.progress), forward(*a, **k))[1]
    batch = {**_batch(size=64), "image": torch.randn(4, 1, 64, 64), "severity": torch.zeros(4, 0)}
    module.training_step(batch, 0)
    assert seen == [0.25] and module.loss.progress == 1.0  # evaluation afterwards weighs the terms fully
