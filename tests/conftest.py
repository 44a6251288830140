"""Shared fixtures: the real training config, composed once through Hydra and shrunk for tests."""

from __future__ import annotations

import os

# Idle OpenMP threads spin by default; on a 2-core machine shared with subprocesses (DDP ranks, CLI runs)
# that spinning slows compute 10-100x. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict

# Small and fast at 64 px on a 2-core CPU; still a real two-encoder CXRNet.
TINY_MODEL = [
    "model.encoder=tu-mobilenetv3_small_100",
    "model.decoder_channels=[32,24,16,16,8]",
]


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """``train.yaml`` composed with ``overrides``, writing into ``output_dir``."""
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def tiny_train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Factory of a tiny training config: 64 px phantoms, small encoders, one epoch, no logger."""

    def make(*overrides: str, n_train: int = 32, epochs: int = 1) -> DictConfig:
        base = [
            "data.image_size=64",
            "data.batch_size=8",
            f"data.options.n_train={n_train}",
            "data.options.n_val=8",
            "data.options.n_test=8",
            f"trainer.max_epochs={epochs}",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "logger=none",
            *TINY_MODEL,
        ]
        return compose_train([*base, *overrides], tmp_path / "run")

    return make
