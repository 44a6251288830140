"""Run tooling in the style of lightning-hydra-template: logger groups read back, hyperparameters logged,
``optimized_metric`` for sweeps (an Optuna study of two tiny trials), the ``debug`` group, and progress
lines that a log file can hold."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig
from pytorch_lightning.callbacks import RichProgressBar

from cxrnet.progress import PlainProgress, clock, progress_bar
from cxrnet.train import main, train

from conftest import TINY_MODEL

TINY_CLI = [
    "data.image_size=64",
    "data.batch_size=8",
    "data.options.n_train=16",
    "data.options.n_val=8",
    "data.options.n_test=8",
    "trainer.max_epochs=2",
    *TINY_MODEL,
]


def _run_train(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_WAIT_POLICY": "PASSIVE", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "cxrnet.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tensorboard(folder: Path) -> tuple[set[str], set[str]]:
    """Scalar tags and hparams-plugin tags of every event file under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: set[str] = set()
    tensors: set[str] = set()
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    for path in files:
        events = EventAccumulator(str(path))
        events.Reload()
        scalars |= set(events.Tags()["scalars"])
        with contextlib.suppress(KeyError):  # KeyError: no hparams summary in this file
            tensors |= set(events.PluginTagToContent("hparams"))
    return scalars, tensors


@pytest.mark.slow
def test_tensorboard_run_logs_scalars_and_hyperparameters_and_prints_plain_progress(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    result = _run_train(
        [*TINY_CLI, "logger=tensorboard", "progress.every_n_steps=1", f"hydra.run.dir={out}"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scalars, tensors = _tensorboard(out / "tensorboard")
    assert {"val/score", "val/cls/macro_f1", "train/loss_epoch", "test/score"} <= scalars
    assert "_hparams_/experiment" in tensors  # TensorBoard's HPARAMS tab is filled
    hparams = yaml.safe_load((out / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["optimizer"]["lr"] == pytest.approx(1e-3) and hparams["data"]["image_size"] == 64
    assert hparams["model/params/total"] > 0
    # stdout is a pipe here, not a terminal: one plain line per step (every_n_steps=1) and per epoch.
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert lines, result.stdout[-2000:]
    assert any(line.startswith("epoch 2/2  step 4/4") and "val/score" in line for line in lines)
    assert all(" eta " in line and " elapsed " in line for line in lines)
    # No progress bar redrawn into the log (a rich bar writes "Epoch 0/1 ━━━ ... it/s").
    assert "it/s" not in result.stdout and not any(line.startswith("Epoch ") for line in result.stdout.splitlines())


@pytest.mark.slow
def test_mlflow_store_reads_back_params_and_the_test_metrics(
    tiny_train_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    mlflow = pytest.importorskip("mlflow")
    cfg = tiny_train_cfg("logger=mlflow", n_train=16)
    metrics = train(cfg)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{cfg.output_dir}/mlflow.db")
    experiment = client.get_experiment_by_name(cfg.task_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert float(run.data.params["optimizer/lr"]) == pytest.approx(1e-3)
    assert run.data.params["model/encoder"] == "tu-mobilenetv3_small_100"
    assert run.data.metrics["test/score"] == pytest.approx(metrics["test/score"], rel=1e-6)
    assert "val/score" in run.data.metrics


@pytest.mark.slow
def test_wandb_offline_and_many_loggers_write_every_store_without_network(
    tiny_train_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    for package in ("wandb", "mlflow", "tensorboard"):
        pytest.importorskip(package)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_train_cfg("logger=many", n_train=16)
    assert set(cfg.logger) == {"csv", "tensorboard", "mlflow", "wandb"}
    assert cfg.logger.wandb.offline is True
    train(cfg)
    out = Path(cfg.output_dir)
    (run,) = (out / "wandb").glob("offline-run-*")
    (record,) = run.glob("run-*.wandb")
    data = record.read_bytes()
    assert b"val/score" in data and b"optimizer" in data  # metrics and the config, kept for `wandb sync`
    assert (out / "logs" / "metrics.csv").is_file() and (out / "mlflow.db").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_a_missing_logger_package_fails_before_training_naming_the_extra(
    tiny_train_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    cfg = tiny_train_cfg("logger=mlflow")
    with pytest.raises(RuntimeError, match=r"cxrnet\[loggers\]"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()  # nothing was started


@pytest.mark.slow
def test_train_returns_the_best_validation_score_as_the_optimized_metric(
    tiny_train_cfg: Callable[..., DictConfig],
) -> None:
    cfg = tiny_train_cfg("optimized_metric=val/score", "logger=csv", n_train=16, epochs=2)
    metrics = train(cfg)
    rows = (Path(cfg.output_dir) / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("val/score")
    scores = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert len(scores) == 2
    assert metrics["optimized_metric"] == pytest.approx(max(scores), rel=1e-6)
    # An unknown metric is an error that lists what was logged, not a silent None for the sweeper.
    bad = tiny_train_cfg("optimized_metric=val/nope", "test=false", n_train=16)
    with pytest.raises(ValueError, match=r"val/nope.*val/score"):
        train(bad)


def test_main_returns_the_value_to_hydra(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    import cxrnet.train as module

    monkeypatch.setattr(module, "train", lambda cfg: {"optimized_metric": 0.25, "test/score": 0.5})
    task = main.__wrapped__  # what a Hydra sweeper calls for each trial, and whose return value it reads
    assert task(OmegaConf.create({"optimized_metric": "val/score"})) == 0.25
    monkeypatch.setattr(module, "train", lambda cfg: {"test/score": 0.5})
    assert task(OmegaConf.create({"optimized_metric": None})) is None


@pytest.mark.slow
def test_optuna_sweep_runs_two_tiny_trials_and_reports_the_best(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    result = _run_train(
        [
            *TINY_CLI,
            "trainer.max_epochs=1",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert summary["name"] == "optuna"
    assert 0.0 <= summary["best_value"] <= 1.0
    # (data.batch_size is fixed by the command line here, so the study does not vary it)
    assert set(summary["best_params"]) >= {"optimizer.lr", "optimizer.weight_decay"}
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    lrs = {yaml.safe_load((t / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] for t in trials}
    assert len(lrs) == 2 and all(3e-4 <= lr <= 1e-2 for lr in lrs)  # the sampler chose them in range
    assert not any((t / "metrics.json").exists() for t in trials)  # chosen on val; test=false


@pytest.mark.slow
@pytest.mark.parametrize("debug", ["fdr", "overfit", "profiler"])
def test_debug_configs_run(debug: str, tiny_train_cfg: Callable[..., DictConfig]) -> None:
    extra = ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1"] if debug == "overfit" else []
    cfg = tiny_train_cfg(f"debug={debug}", *extra, n_train=16)
    assert cfg.task_name == "debug" and cfg.trainer.detect_anomaly is True and cfg.data.num_workers == 0
    metrics = train(cfg)
    out = Path(cfg.output_dir)
    if debug == "fdr":
        assert cfg.trainer.fast_dev_run is True
        assert metrics["run/train_steps"] == 1  # one batch through every stage
        assert not (out / "checkpoints").exists()
    elif debug == "overfit":
        assert cfg.trainer.overfit_batches == 1
        assert metrics["run/train_steps"] == 2  # one batch per epoch
    else:
        profile = out / "fit-profile.txt"
        assert "run_training_epoch" in profile.read_text()


def test_progress_choice_follows_the_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_bar("auto", stream=Terminal()), RichProgressBar)
    assert isinstance(progress_bar("auto", stream=io.StringIO()), PlainProgress)
    assert isinstance(progress_bar("plain", stream=Terminal()), PlainProgress)
    assert isinstance(progress_bar("rich", stream=io.StringIO()), RichProgressBar)
    with pytest.raises(ValueError, match=r"progress\.style"):
        progress_bar("fancy")
    assert [clock(5), clock(65), clock(3725), clock(float("nan"))] == ["0:05", "1:05", "1:02:05", "?"]


def test_plain_progress_line_carries_headline_metrics_and_an_eta() -> None:
    import time

    import torch

    class Trainer:  # what PlainProgress reads from a Trainer
        global_step = 50
        estimated_stepping_batches = 200
        max_epochs = 4
        current_epoch = 0
        is_global_zero = True
        callback_metrics = {"train/loss_epoch": torch.tensor(0.8125), "val/score": torch.tensor(0.5)}

    bar = PlainProgress(stream=io.StringIO())
    bar._started = time.monotonic() - 100  # 50 steps in 100 s: 150 left take 300 s
    line = bar.line(Trainer())  # type: ignore[arg-type]
    assert line.startswith("epoch 1/4  step 50/200  train/loss 0.812  val/score 0.500  elapsed 1:40")
    assert line.endswith("eta 5:00")
    json.dumps(line)  # one plain line, nothing a log file cannot hold
    assert "\n" not in line and "\r" not in line
