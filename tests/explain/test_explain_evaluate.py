"""``cxrnet.explain.evaluate`` scores every method on a tiny phantom split, with data settings from the checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from rich.console import Console

from cxrnet.checkpoint import save_checkpoint
from cxrnet.data.transforms import Preprocessing
from cxrnet.explain.evaluate import evaluate_explanations, results_table
from cxrnet.models import create_model

CLASSES = ["normal", "bacterial", "viral", "covid19"]
METHODS = ["native", "gradcam", "gradcam++", "layercam", "eigencam"]
TINY_SPLIT = ["data.options.n_test=8", "data.options.n_train=8", "data.options.n_val=8"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = create_model(
        classes=CLASSES, encoder="tu-mobilenetv3_small_100", decoder_channels=[32, 24, 16, 16, 8]
    )
    path = tmp_path_factory.mktemp("ckpt") / "net.ckpt"
    return save_checkpoint(path, net.eval(), Preprocessing(image_size=64, mean=0.5, std=0.25))


def compose_explain(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        return compose(config_name="explain_evaluate", overrides=list(overrides))


def test_every_method_gets_finite_scores(checkpoint: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "scores"
    # data.image_size=128 on purpose: the checkpoint's 64 px must win.
    cfg = compose_explain(
        f"checkpoint={checkpoint}", f"output_dir={output_dir}", "data.image_size=128", *TINY_SPLIT
    )
    results = evaluate_explanations(cfg)
    assert cfg.data.image_size == 64 and list(cfg.data.classes) == CLASSES

    counts = results["counts"]
    assert counts["items"] == counts["with_infection_mask"] == 8
    assert 0 < counts["empty_infection_mask"] < 8  # normal phantoms have no infection
    scored = counts["with_infection_mask"] - counts["empty_infection_mask"]
    assert list(results["methods"]) == METHODS
    for scores in results["methods"].values():
        for key in ("pointing_game", "average_precision", "top10_iou", "top10_f1", "infection_share"):
            assert scores[key]["n"] == scored
            assert math.isfinite(scores[key]["mean"]) and 0 <= scores[key]["mean"] <= 1
        assert scores["lung_share"]["n"] == counts["with_lung_mask"] == 8
        assert 0 <= scores["lung_share"]["mean"] <= 1
        # faithfulness on every evaluated image, lesion or not: one AUC each, in [0, 1]
        for kind in ("deletion", "insertion"):
            assert scores[f"{kind}_auc"]["n"] == 8 and 0 <= scores[f"{kind}_auc"]["mean"] <= 1
            curve = scores[f"{kind}_curve"]
            assert len(curve) == len(results["fractions"]) == 21
        # the same clean-image probability ends insertion and starts deletion
        assert scores["deletion_curve"][0] == pytest.approx(scores["insertion_curve"][-1], abs=1e-3)
        assert scores["images_per_second"] > 0
        # the sanity check: a map of the model with random weights, compared rank by rank
        rho = scores["randomised_rank_correlation"]
        assert rho["n"] >= 1 and -1 <= rho["mean"] <= 1
    assert results["fractions"][0] == 0 and results["fractions"][-1] == 1
    assert json.loads((output_dir / "explanations.json").read_text()) == results
    assert sorted(p.name for p in output_dir.iterdir()) == [
        "explanations.json",
        "explanations.png",
        "faithfulness.png",
    ]

    console = Console(record=True, width=160)
    console.print(results_table(results))
    text = console.export_text()
    assert all(name in text for name in METHODS) and "AP" in text and "in lungs" in text
    assert "del. AUC" in text and "ins. AUC" in text and "images/s" in text


def test_curves_and_sanity_can_be_skipped(checkpoint: Path) -> None:
    cfg = compose_explain(
        f"checkpoint={checkpoint}", "methods=[native]", "curves=false", "sanity=false", *TINY_SPLIT
    )
    scores = evaluate_explanations(cfg)["methods"]["native"]
    assert "deletion_auc" not in scores and "insertion_curve" not in scores
    assert "randomised_rank_correlation" not in scores


def test_unknown_method_lists_the_valid_ones(checkpoint: Path) -> None:
    cfg = compose_explain(f"checkpoint={checkpoint}", "methods=[native,lime]", *TINY_SPLIT)
    with pytest.raises(ValueError, match=r"\['lime'\]; valid: native, gradcam, gradcam\+\+"):
        evaluate_explanations(cfg)


def test_missing_checkpoint_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match=r"checkpoint=<file\.ckpt>"):
        evaluate_explanations(compose_explain(*TINY_SPLIT))


@pytest.mark.slow
def test_cli_prints_the_table_and_writes_only_its_files(checkpoint: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "cxrnet.explain.evaluate",
        f"checkpoint={checkpoint}",
        "data=synthetic",
        "methods=[native,gradcam]",
        f"output_dir={output_dir}",
        *TINY_SPLIT,
    ]
    done = subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True)
    assert "gradcam" in done.stdout and "pointing" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no outputs/ in the working directory
    assert sorted(p.name for p in output_dir.iterdir()) == [
        "explanations.json",
        "explanations.png",
        "faithfulness.png",
    ]
    assert list(json.loads((output_dir / "explanations.json").read_text())["methods"]) == [
        "native",
        "gradcam",
    ]


def test_rank_agreement_scores_flat_maps_like_the_sanity_checks() -> None:
    from cxrnet.explain.sanity import rank_agreement

    ramp = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)
    flat = np.zeros((1, 4, 4), dtype=np.float32)
    assert float(rank_agreement(ramp, ramp)[0]) == pytest.approx(1.0)
    assert float(rank_agreement(ramp, 1 - ramp)[0]) == pytest.approx(-1.0)
    assert float(rank_agreement(ramp, flat)[0]) == 0.0 and float(rank_agreement(flat, flat)[0]) == 1.0


def test_a_split_with_only_lung_masks_scores_the_lung_share_curves_and_sanity(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Like cohen's hand-drawn lungs: no infection reference, but the in-lung share still means something.
    import dataclasses

    import cxrnet.explain.evaluate as module

    real_open = module.open_split

    def lungs_only(cfg: DictConfig):  # type: ignore[no-untyped-def]
        opened = real_open(cfg)
        items = opened.dataset.items
        items[:] = [dataclasses.replace(item, infection_mask=None) for item in items]
        return opened

    monkeypatch.setattr(module, "open_split", lungs_only)
    output_dir = tmp_path / "lungs"
    results = evaluate_explanations(
        compose_explain(f"checkpoint={checkpoint}", f"output_dir={output_dir}", "curve_steps=4", *TINY_SPLIT)
    )
    counts = results["counts"]
    assert counts["scored"] == counts["with_lung_mask"] == 8
    assert counts["with_infection_mask"] == counts["empty_infection_mask"] == 0
    for scores in results["methods"].values():
        assert scores["lung_share"]["n"] == 8 and 0 <= scores["lung_share"]["mean"] <= 1
        assert scores["average_precision"]["n"] == 0 and scores["average_precision"]["mean"] is None
        assert scores["deletion_auc"]["n"] == 8 and scores["randomised_rank_correlation"]["n"] >= 1
    assert (output_dir / "explanations.png").is_file()  # drawn with the lung masks as the reference
