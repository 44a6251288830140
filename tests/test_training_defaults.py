"""Training defaults for real, imbalanced, small collections: selection, balancing, schedule, precision, transfer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrnet import devices
from cxrnet.checkpoint import CheckpointError, save_checkpoint
from cxrnet.data.build import build_splits, source_specs
from cxrnet.data.transforms import Preprocessing
from cxrnet.datamodule import IMBALANCE_RATIO, decide_balanced_sampling
from cxrnet.models import create_model
from cxrnet.module import selection_score
from cxrnet.schedules import BudgetedOneCycle
from cxrnet.transfer import init_from_checkpoint


def make_patients(root: Path, patients: int = 12) -> Path:
    """A manifest of ``patients`` patients with one or two images each, alternating two classes."""
    rows = ["path,label,patient_id"]
    root.mkdir(parents=True)
    for p in range(patients):
        for k in range(1 + p % 2):
            pixels = np.random.default_rng(10 * p + k).integers(0, 255, (20, 24), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"p{p}_{k}.png")
            rows.append(f"p{p}_{k}.png,{('normal', 'covid')[p % 2]},P{p}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_selection_score_averages_macro_f1_and_the_dice_of_each_task_present() -> None:
    both = {
        "val/cls/macro_f1": 0.5,
        "val/lung/dice_pooled": 0.8,
        "val/infection/dice_pooled": 0.2,
        "val/loss": 9.0,
    }
    assert selection_score(both, "val") == pytest.approx(0.5)
    # a majority-class classifier with a better segmenter does not beat a classifier that separates classes
    majority = {"val/cls/macro_f1": 0.23, "val/lung/dice_pooled": 0.95}
    separating = {"val/cls/macro_f1": 0.6, "val/lung/dice_pooled": 0.7}
    assert selection_score(separating, "val") > selection_score(majority, "val")
    # a half-trained network with a lucky macro-F1 on a tiny split does not beat a trained one
    early = {"val/cls/macro_f1": 0.275, "val/lung/dice_pooled": 0.466}
    trained = {"val/cls/macro_f1": 0.125, "val/lung/dice_pooled": 0.841}
    assert selection_score(trained, "val") > selection_score(early, "val")
    assert selection_score({"val/lung/dice_pooled": 0.7}, "val") == pytest.approx(0.7)  # masks only
    assert selection_score({"val/loss": 1.0}, "val") is None


def test_balanced_sampling_auto_follows_the_documented_ratio() -> None:
    classes = ["normal", "bacterial", "viral", "covid19"]
    labels = [3] * 48 + [0] * 3 + [1] * 10 + [2] * 6
    on, why = decide_balanced_sampling("auto", labels, classes)
    assert on and "covid19 48 / normal 3 = 16.0x" in why and "auto" in why
    even = [3] * 30 + [0] * 10 + [1] * 10 + [2] * 10 + [-1] * 50  # exactly 3x: off
    assert IMBALANCE_RATIO == 3.0 and decide_balanced_sampling("auto", even, classes)[0] is False
    off, why = decide_balanced_sampling(False, labels, classes)
    assert not off and "set by data.balanced_sampling" in why
    _, why = decide_balanced_sampling("auto", [3] * 5 + [0] * 5, classes)
    assert "no training images of bacterial, viral" in why


def test_cross_validation_folds_test_every_patient_exactly_once(tmp_path: Path) -> None:
    root = make_patients(tmp_path / "data")
    specs = source_specs("folder", str(root), {"manifest": "manifest.csv"})
    tested: Counter[str] = Counter()
    for fold in range(3):
        build = build_splits(specs, ["normal", "covid19"], folds=3, fold=fold, duplicate_max_distance=None)
        patients = {name: {r.patient_id for r in members} for name, members in build.splits.items()}
        assert not (patients["train"] | patients["val"]) & patients["test"]
        assert patients["train"] and patients["test"]
        tested.update(patients["test"])
        assert any("cross-validation fold" in note for note in build.report.notes)
    assert set(tested.values()) == {1}
    everyone = build_splits(specs, ["normal", "covid19"], duplicate_max_distance=None).splits
    assert set(tested) == {r.patient_id for members in everyone.values() for r in members}


def _lrs(scheduler: BudgetedOneCycle, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_budgeted_one_cycle_finishes_within_steps_or_within_time(monkeypatch: pytest.MonkeyPatch) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    lrs = _lrs(BudgetedOneCycle(optimizer, total_steps=100, pct_start=0.2), optimizer, 100)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 19
    assert lrs[-1] == pytest.approx(1e-6)

    # a time budget that runs out after 10 of 1000 planned steps: the schedule is annealed, not warming up
    clock = iter(range(0, 10_000, 6))  # each step takes 6 "seconds"; budget 60 s
    monkeypatch.setattr("cxrnet.schedules.time.monotonic", lambda: float(next(clock)))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = BudgetedOneCycle(optimizer, total_steps=1000, max_seconds=60.0, pct_start=0.2)
    lrs = _lrs(scheduler, optimizer, 11)  # the clock reads 6, 12, ... at the steps: 12 s = 20 % of 60 s
    assert lrs[1] == pytest.approx(1e-3)  # the peak at 20 % of the time budget, not of the steps
    assert scheduler.progress() == 1.0 and lrs[-1] == pytest.approx(1e-6)
    state = scheduler.state_dict()
    assert state["elapsed"] == pytest.approx(66.0) and "_clock" not in state


def test_precision_auto_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert devices.resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    assert devices.resolve_precision("auto", "cpu") == "32-true"
    assert devices.resolve_precision("auto", "mps") == "32-true"
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.resolve_precision("auto", "gpu") == "16-mixed"
    monkeypatch.setattr(devices.torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.resolve_precision("auto", "auto") == "bf16-mixed"
    assert devices.resolve_precision(32) == "32-true" and devices.resolve_precision("bf16") == "bf16-mixed"
    with pytest.raises(ValueError, match="precision 'half' is not valid"):
        devices.resolve_precision("half")


def _tiny(classes: list[str], encoder: str = "resnet18", targets: tuple[str, ...] = ()) -> torch.nn.Module:
    return create_model(
        classes=classes,
        encoder=encoder,
        decoder="unet",
        decoder_channels=[16, 8, 8, 8, 8],
        severity_targets=targets,
    )


def test_init_from_a_pretrained_checkpoint_keeps_all_but_the_class_specific_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _tiny(["normal", "bacterial", "viral", "covid19"], targets=("geographic_extent", "brixia"))
    extra = {"training_data": {"source": ["synthetic"]}}
    path = save_checkpoint(tmp_path / "phantoms.ckpt", source, Preprocessing(image_size=64), extra)
    target = _tiny(["normal", "covid19"], targets=("geographic_extent", "opacity"))
    fresh_fc = target.classification_head.fc.weight.clone()
    report = init_from_checkpoint(target, path)
    for name, tensor in target.state_dict().items():
        if name.startswith(("classification_head.fc", "severity_head")):
            continue
        torch.testing.assert_close(tensor, source.state_dict()[name], msg=name)
    torch.testing.assert_close(target.classification_head.fc.weight, fresh_fc)  # 2 classes: kept fresh
    assert report.to_dict()["fresh"] == ["classification_head", "severity_head"]
    assert report.source_training == ["synthetic"] and "4 classes" not in report.summary()
    other = _tiny(["normal", "covid19"], encoder="tu-mobilenetv3_small_100")
    with pytest.raises(
        CheckpointError,
        match=r"another architecture \(encoder 'resnet18', this network 'tu-mobilenetv3_small_100'\)",
    ):
        init_from_checkpoint(other, path)
