"""One precision rule for training and inference, recorded where results are written; torch.compile as an option."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig

import cxrnet.devices
import cxrnet.models.cxrnet
from cxrnet import load_model
from cxrnet.collect import collect_logits
from cxrnet.devices import autocast, has_depthwise_convolutions, inference_precision, resolve_precision
from cxrnet.models import create_model
from cxrnet.predict import predict
from cxrnet.train import build_module

from inference_helpers import radiograph, tiny_checkpoint, tiny_net, write_png

__all__ = ["tiny_checkpoint"]  # a fixture, used by name


def test_auto_follows_the_documented_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cxrnet.devices, "cpu_has_bf16", lambda: True)
    assert inference_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(cxrnet.devices, "cpu_has_bf16", lambda: False)
    assert inference_precision("auto", "cpu") == "32-true"
    assert inference_precision("bf16", "cpu") == "bf16-mixed" and inference_precision(32, "cpu") == "32-true"
    with pytest.raises(ValueError, match="choose one of: auto, 32-true"):
        inference_precision("fp8", "cpu")


def test_autocast_runs_matmuls_low_and_float32_stays_float32() -> None:
    a = torch.randn(4, 4)
    with autocast("bf16-mixed", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("32-true", "cpu"):
        assert (a @ a).dtype == torch.float32


def test_an_unknown_precision_fails_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision 'half' is not valid"):
        load_model(tmp_path / "missing.ckpt", precision="half")


def test_bf16_predictions_agree_with_float32_and_come_back_in_float32(tiny_checkpoint: Path) -> None:
    image = radiograph(96, 80, seed=3)
    full = load_model(tiny_checkpoint, precision="32-true").predict(image)
    low = load_model(tiny_checkpoint, precision="bf16-mixed").predict(image)
    assert full.meta["precision"] == "32-true" and low.meta["precision"] == "bf16-mixed"
    assert low.infection_map.dtype == np.float32 and low.lung_mask.dtype == bool
    p_full, p_low = np.array(list(full.probabilities.values())), np.array(list(low.probabilities.values()))
    assert abs(p_low.sum() - 1) < 1e-5
    assert np.abs(p_full - p_low).max() < 0.03
    assert np.abs(full.infection_map - low.infection_map).max() < 0.05
    assert np.abs(full.explanation - low.explanation).max() < 0.05


def test_channels_last_changes_nothing_but_the_memory_format(tiny_checkpoint: Path) -> None:
    image = radiograph(64, 64, seed=1)
    dense = load_model(tiny_checkpoint, precision="32-true")
    dense.__init__(dense.net, dense.preprocessing, precision="32-true", channels_last=False)
    last = load_model(tiny_checkpoint, precision="32-true")
    assert last.channels_last and not dense.channels_last
    a, b = dense.predict(image), last.predict(image)
    assert np.abs(a.infection_map - b.infection_map).max() < 1e-4
    assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)


def test_predict_records_its_precision(tiny_checkpoint: Path, tmp_path: Path) -> None:
    write_png(tmp_path / "in" / "a.png", radiograph(64, 64))
    with initialize_config_module("cxrnet.conf", version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[
                f"checkpoint={tiny_checkpoint}",
                f"input={tmp_path / 'in'}",
                f"output_dir={tmp_path / 'out'}",
                "overlays=false",
                "progress=false",
                "precision=32-true",
            ],
        )
    summary = predict(cfg)
    assert summary["precision"] == "32-true"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["precision"] == "32-true"
    record = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert record["meta"]["precision"] == "32-true"


def test_collect_logits_at_bf16_is_close_to_float32(tiny_train_cfg: Callable[..., DictConfig]) -> None:
    cfg = tiny_train_cfg(n_train=8)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("test")
    net = tiny_net()
    _, full, _ = collect_logits(net, datamodule.datasets["test"], batch_size=4, precision="32-true")
    _, low, _ = collect_logits(net, datamodule.datasets["test"], batch_size=4, precision="bf16-mixed")
    assert full.dtype == low.dtype == np.float64 and full.shape == low.shape
    assert np.abs(full - low).max() < 0.1 * max(1.0, np.abs(full).max())
    assert not np.array_equal(full, low)  # bf16 really ran


# ------------------------------------------------------------------------------------------- compile


def test_model_compile_builds_a_compiled_network_that_checkpoints_like_an_eager_one(
    monkeypatch: pytest.MonkeyPatch, tiny_train_cfg: Callable[..., DictConfig]
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cxrnet.models.cxrnet, "compile_unavailable", lambda device: None)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    cfg = tiny_train_cfg("model.compile=true", "record_training_data=false", n_train=8)
    module = build_module(cfg, instantiate(cfg.data, _convert_="all"))
    assert calls == ["CXRNet"] and module.net.compiled
    assert "compile" not in module.net.config  # checkpoints rebuild the network without it
    eager = build_module(
        tiny_train_cfg("record_training_data=false", n_train=8), instantiate(cfg.data, _convert_="all")
    )
    assert set(module.state_dict()) == set(eager.state_dict()) and not eager.net.compiled


def test_compile_that_cannot_run_warns_and_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cxrnet.models.cxrnet, "compile_unavailable", lambda device: "no C++ compiler (test)")
    with pytest.warns(UserWarning, match=r"model.compile=true skipped: no C\+\+ compiler \(test\)"):
        net = create_model(classes=["a", "b"], encoder="tu-mobilenetv3_small_100", compile=True)
    assert not net.compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not create_model(classes=["a", "b"], encoder="tu-mobilenetv3_small_100").compiled


@pytest.mark.slow
def test_compiled_network_gives_the_eager_outputs_on_cpu() -> None:
    reason = cxrnet.devices.compile_unavailable("cpu")
    if reason is not None:
        pytest.skip(reason)
    eager_net = tiny_net()
    compiled_net = tiny_net()
    compiled_net.compile()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        eager = eager_net(x).class_logits
        compiled = compiled_net(x).class_logits
    assert torch.allclose(eager, compiled, atol=1e-4)


def test_train_config_default_precision_is_auto() -> None:
    with initialize_config_module("cxrnet.conf", version_base="1.3"):
        for name in ("predict", "evaluate", "calibrate", "explain_evaluate"):
            assert compose(name).precision == "auto"
    assert resolve_precision("auto", "cpu") in ("bf16-mixed", "32-true")


def test_auto_trains_depthwise_networks_in_float32_on_cpus_with_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 depthwise convolutions are slower than float32 on CPUs (measured 0.80x for the quickstart)."""
    monkeypatch.setattr(cxrnet.devices, "cpu_has_bf16", lambda: True)
    depthwise = tiny_net()  # MobileNetV3 encoders
    assert has_depthwise_convolutions(depthwise)
    assert resolve_precision("auto", "cpu", net=depthwise) == "32-true"
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3, groups=2))
    assert not has_depthwise_convolutions(plain)  # grouped, not depthwise
    assert resolve_precision("auto", "cpu", net=plain) == "bf16-mixed"
    assert resolve_precision("bf16-mixed", "cpu", net=depthwise) == "bf16-mixed"  # an explicit choice stands
    # Inference has no backward pass: bf16 forwards measured faster for depthwise networks too.
    assert load_model_precision(depthwise) == "bf16-mixed"


def load_model_precision(net: torch.nn.Module) -> str:
    from cxrnet.data.transforms import Preprocessing
    from cxrnet.inference import Predictor

    return Predictor(net, Preprocessing(image_size=64)).precision


def test_training_resolves_auto_with_the_network(
    monkeypatch: pytest.MonkeyPatch, tiny_train_cfg: Callable[..., DictConfig]
) -> None:
    from cxrnet.train import resolve_trainer_precision

    monkeypatch.setattr(cxrnet.devices, "cpu_has_bf16", lambda: True)
    cfg = tiny_train_cfg("trainer.precision=auto")
    assert resolve_trainer_precision(cfg) == "32-true" and cfg.trainer.precision == "32-true"
    cfg = tiny_train_cfg(
        "trainer.precision=auto", "model.encoder=resnet18", "model.classifier_encoder=resnet18"
    )
    assert resolve_trainer_precision(cfg) == "bf16-mixed"
