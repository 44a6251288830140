"""The training entry point: real configs, tiny data, every head learning; partial labels; DDP on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from cxrnet.checkpoint import load_network
from cxrnet.train import train

from conftest import TINY_MODEL

CLASSES = 4


def _assert_run_files(out: Path) -> dict[str, float]:
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "test/lung/dice_pooled",
        "test/infection/dice_pooled",
        "test/cls/macro_f1",
        "test/cls/accuracy",
        "test/cls/sensitivity/covid19",
        "test/cls/specificity/normal",
        "test/cls/auroc/viral",
    ):
        assert key in metrics, f"{key} missing from metrics.json"
    return metrics


# Big enough for every head to learn on a 2-core CPU: 96 px phantoms at low difficulty, 8 epochs of the tiny
# two-encoder network. With full labels 256 training items suffice (75 s on an AMD EPYC; there it reached lung
# Dice 0.97, infection Dice 0.76, macro-F1 0.85, AUROC 0.98, Brixia MAE 1.40). With partial labels, 384 items,
# so that 256 of them carry masks: with 256 items (about 170 with masks) the infection head had not started
# learning after 8 epochs (Dice 0.04).
LEARNING_RUN = [
    "data.image_size=96",
    "data.options.n_val=32",
    "data.options.n_test=48",
    "data.options.difficulty=0.0",
    "optimizer.lr=3e-3",
]


@pytest.mark.slow
def test_every_head_learns_far_beyond_chance(tiny_train_cfg: Callable[..., DictConfig]) -> None:
    cfg = tiny_train_cfg(*LEARNING_RUN, n_train=256, epochs=8)
    metrics = train(cfg)
    out = Path(cfg.output_dir)
    assert metrics == json.loads((out / "metrics.json").read_text())
    _assert_run_files(out)
    # Chance: macro-F1 ≈ 0.25 and AUROC 0.5 for 4 balanced classes; a random infection map scores a Dice
    # below 0.1, and even calling every lung pixel infected stays under 0.45 on these phantoms.
    assert metrics["test/lung/dice_pooled"] > 0.9
    assert metrics["test/infection/dice_pooled"] > 0.55
    assert metrics["test/cls/macro_f1"] > 0.65
    assert metrics["test/cls/auroc"] > 0.85
    # The best constant guess (the median, 5) has a Brixia MAE of 3.0 on these phantoms.
    assert metrics["test/severity/mae/brixia"] < 2.5


@pytest.mark.slow
def test_partial_labels_every_head_learns(tiny_train_cfg: Callable[..., DictConfig]) -> None:
    """A third of the training items have only a class label, a third only masks, a third everything."""
    cfg = tiny_train_cfg(
        *LEARNING_RUN,
        "data.options.label_only_fraction=0.34",
        "data.options.mask_only_fraction=0.33",
        n_train=384,
        epochs=8,
    )
    metrics = train(cfg)
    assert metrics["test/lung/dice_pooled"] > 0.85
    assert metrics["test/infection/dice_pooled"] > 0.5
    assert metrics["test/cls/macro_f1"] > 0.6
    assert metrics["test/cls/auroc"] > 0.85
    assert all(math.isfinite(value) for key, value in metrics.items() if not key.startswith("run/precision"))


def test_checkpoint_alone_rebuilds_identical_outputs(tiny_train_cfg: Callable[..., DictConfig]) -> None:
    cfg = tiny_train_cfg("test=false", n_train=16)
    train(cfg)
    ckpt = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    net, meta = load_network(ckpt)
    assert meta["classes"] == ["normal", "bacterial", "viral", "covid19"]
    assert meta["preprocessing"]["image_size"] == 64
    # What the model was trained on, for the leakage guard: 16 phantoms, one patient each.
    assert meta["training_data"]["n_items"] == 16 and len(meta["training_data"]["patient_ids"]) == 16
    assert len(meta["training_data"]["image_hashes"]) == 16
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    from cxrnet.models import create_model

    reference = create_model(**meta["model"]).eval()
    reference.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(net(x), reference(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _run_module(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "cxrnet.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TINY_CLI = [
    "data.image_size=64",
    "data.batch_size=8",
    "data.options.n_train=32",
    "data.options.n_val=16",
    "data.options.n_test=16",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    *TINY_MODEL,
]


@pytest.mark.slow
@pytest.mark.multidevice
def test_ddp_two_processes_on_cpu_through_the_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    result = _run_module(["trainer=ddp_cpu", *TINY_CLI, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = _assert_run_files(out)
    # Each rank logs its test metrics into its own Hydra job log (rank 1 as train_ddp_process_1.log).
    reports = {}
    for log_file in out.glob("*.log"):
        for line in log_file.read_text().splitlines():
            if "finished; test metrics:" in line:
                rank = int(line.split("rank ")[1].split(" of ")[0])
                assert " of 2 finished" in line
                reports[rank] = json.loads(line.split("test metrics: ", 1)[1])
    assert sorted(reports) == [0, 1], f"not both ranks finished: {sorted(reports)}"

    # Synchronised: both ranks hold identical values, computed over the whole test split (16 items,
    # not the 8 each rank saw).
    def results(values: dict) -> dict:  # run/* keys describe each process (its own wall time), not results
        return {k: v for k, v in values.items() if not k.startswith("run/")}

    assert results(reports[0]) == results(reports[1]) == results(metrics)
    assert metrics["test/cls/n"] == 16 and metrics["test/lung/n"] == 16
    assert metrics["run/precision"] in ("bf16-mixed", "32-true") and metrics["run/train_seconds"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment",
    sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")),
)
def test_every_experiment_config_composes_and_quickstart_runs(experiment: str, tmp_path: Path) -> None:
    from conftest import compose_train

    cfg = compose_train([f"+experiment={experiment}"], tmp_path)
    assert cfg.model.encoder and cfg.data.name
    if experiment == "quickstart":
        result = _run_module(
            [f"+experiment={experiment}", *TINY_CLI, f"hydra.run.dir={tmp_path / 'qs'}"], cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        _assert_run_files(tmp_path / "qs")
        assert (tmp_path / "qs" / ".hydra" / "config.yaml").is_file()
        assert not (tmp_path / "outputs").exists()
