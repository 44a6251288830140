"""Every config group the command line can choose composes; trainers that cannot run here say why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from cxrnet.train import check_trainer_config

from conftest import compose_train

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml") if p.stem != "default")


def test_the_documented_trainers_exist() -> None:
    assert set(TRAINERS) >= {"cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "deepspeed"}


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_configs_compose(trainer: str, tmp_path: Path) -> None:
    cfg = compose_train([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if trainer == "ddp_cpu":
        assert cfg.trainer.devices == 2 and cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "cpu"


def test_deepspeed_without_the_package_says_how_to_install(tmp_path: Path) -> None:
    cfg = compose_train(["trainer=deepspeed"], tmp_path)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"pip install 'cxrnet\[deepspeed\]'"):
            check_trainer_config(cfg.trainer)
    else:
        pytest.skip("deepspeed is installed here")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_cuda_is_explained(tmp_path: Path) -> None:
    cfg = compose_train(["trainer=gpu"], tmp_path)
    with pytest.raises(RuntimeError, match="trainer=cpu"):
        check_trainer_config(cfg.trainer)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_trainer_trains(tiny_train_cfg) -> None:  # type: ignore[no-untyped-def]
    from cxrnet.train import train

    metrics = train(tiny_train_cfg("trainer=gpu", "trainer.precision=16-mixed"))
    assert "test/lung/dice_pooled" in metrics


def test_model_and_data_configs_build(tmp_path: Path) -> None:
    cfg = compose_train(["data.image_size=64", "model.encoder=tu-mobilenetv3_small_100"], tmp_path)
    net = instantiate(cfg.model, _convert_="all")
    assert net.classes == list(cfg.data.classes)
    assert net.severity_targets == list(cfg.data.severity_targets)
    datamodule = instantiate(cfg.data, _convert_="all")
    assert datamodule.preprocessing.image_size == 64


def test_bad_choices_fail_with_the_valid_names(tmp_path: Path) -> None:
    cfg = compose_train(["model.encoder=resnet19"], tmp_path)
    with pytest.raises(Exception, match="valid smp encoders"):
        instantiate(cfg.model, _convert_="all")
    cfg = compose_train(["data.image_size=100"], tmp_path)
    with pytest.raises(Exception, match="divisible by 32"):
        instantiate(cfg.data, _convert_="all")


@pytest.mark.slow
def test_entry_point_from_a_non_editable_install_outside_the_repo(tmp_path: Path) -> None:
    """The configs ship inside the package: a plain install run from elsewhere finds them."""
    repo = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(repo)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import cxrnet; print(cxrnet.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target))
    job = subprocess.run(
        [sys.executable, "-m", "cxrnet.train", "+experiment=quickstart", "--cfg", "job"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr[-2000:]
    assert "tu-mobilenetv3_large_100" in job.stdout and "image_size: 128" in job.stdout
