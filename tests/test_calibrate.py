"""``python -m cxrnet.calibrate``: a temperature fitted on val, stored in a new checkpoint, used by evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from cxrnet.calibrate import calibrate
from cxrnet.checkpoint import load_network, read_checkpoint, save_checkpoint
from cxrnet.data.transforms import Preprocessing
from cxrnet.evaluate import evaluate
from cxrnet.models import create_model

CLASSES = ["normal", "bacterial", "viral", "covid19"]
DATA = ["data=synthetic", "data.options.n_train=8", "data.options.n_val=32", "data.options.n_test=16"]
TRAINING_DATA = {
    "patient_ids": ["nobody"],
    "image_hashes": [],
    "hash": "phash-256",
    "source": [],
    "n_items": 0,
}


def overconfident_checkpoint(path: Path) -> Path:
    """A random-init tiny CXRNet whose classifier weights are scaled up: confident and mostly wrong."""
    torch.manual_seed(0)
    net = create_model(
        classes=CLASSES,
        encoder="tu-mobilenetv3_small_100",
        decoder_channels=[32, 24, 16, 16, 8],
        severity_targets=["geographic_extent", "brixia"],
        severity_scales={"geographic_extent": 8, "brixia": 18},
    )
    with torch.no_grad():
        net.classification_head.fc.weight.mul_(50.0)
        net.classification_head.fc.bias.mul_(50.0)
    extra = {"config": "data:\n  seed: 0\n", "training_data": TRAINING_DATA}
    return save_checkpoint(path, net, Preprocessing(image_size=64), extra=extra)


def compose_config(name: str, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        return compose(config_name=name, overrides=[*DATA, *overrides])


def test_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    ckpt = overconfident_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match="new file"):
        calibrate(compose_config("calibrate", f"checkpoint={ckpt}", f"output={ckpt}"))


@pytest.mark.slow
def test_temperature_lowers_val_ece_and_evaluate_applies_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(2)
    source = overconfident_checkpoint(tmp_path / "overconfident.ckpt")
    output = tmp_path / "calibrated.ckpt"
    report = calibrate(compose_config("calibrate", f"checkpoint={source}", f"output={output}"))
    assert report["ece_after"] < report["ece_before"] and report["nll_after"] < report["nll_before"]
    assert report["temperature"] > 1.0  # over-confident logits are softened
    printed = capsys.readouterr().out
    assert "ECE  before" in printed and str(output) in printed

    meta = read_checkpoint(output)["cxrnet"]
    assert meta["temperature"] == pytest.approx(report["temperature"])
    assert meta["calibrated_on"]["split"] == "val" and meta["calibrated_on"]["n_items"] == 32
    assert meta["training_data"] == TRAINING_DATA and meta["config"] == "data:\n  seed: 0\n"
    (net_a, _), (net_b, _) = load_network(source), load_network(output)
    for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values()):
        assert torch.equal(a, b)  # same weights; only the metadata changed

    out = tmp_path / "eval"
    metrics = evaluate(
        compose_config("evaluate", f"checkpoint={output}", f"output_dir={out}", "bootstrap.n_resamples=20")
    )
    assert metrics["cls/temperature"] == pytest.approx(report["temperature"])
    assert metrics["cls/ece"] < metrics["cls/ece_uncalibrated"]
    assert (out / "plots" / "reliability_uncalibrated.png").is_file()
    assert json.loads((out / "metrics.json").read_text())["cls/ece_uncalibrated"] is not None
