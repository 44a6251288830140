"""Train CXRNet: ``python -m cxrnet.train +experiment=quickstart`` (Hydra overrides on the command line).

``train(cfg)`` does the work and can be called from Python with a composed config; ``main`` is the thin
Hydra wrapper.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cxrnet.module import CXRNetModule

log = logging.getLogger(__name__)


def check_trainer_config(trainer_cfg: DictConfig) -> None:
    """Fail early, with a way out, when the chosen trainer cannot run on this machine."""
    strategy = str(trainer_cfg.get("strategy", ""))
    if "deepspeed" in strategy and importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError(
            "trainer=deepspeed needs the optional 'deepspeed' package (and CUDA GPUs): "
            "pip install 'cxrnet[deepspeed]', or choose trainer=ddp / trainer=fsdp"
        )
    if str(trainer_cfg.get("accelerator", "")) in {"gpu", "cuda"} and not torch.cuda.is_available():
        raise RuntimeError(
            "the chosen trainer needs a CUDA GPU but none is visible (torch.cuda.is_available() is False); "
            "use trainer=cpu, or trainer=ddp_cpu for several processes on the CPU"
        )


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def build_module(cfg: DictConfig, datamodule: Any) -> CXRNetModule:
    """The LightningModule of a training config (network, loss, optimiser, scheduler).

    Checkpoints store the resolved config and, with ``record_training_data``, the training split's patient
    ids and image hashes, which ``cxrnet.evaluate`` uses to refuse a test set that leaks from training.
    """
    net = instantiate(cfg.model, _convert_="all")
    metadata: dict[str, Any] = {"config": OmegaConf.to_yaml(cfg, resolve=True)}
    if cfg.get("record_training_data", True):
        metadata["training_data"] = datamodule.training_fingerprint()
    return CXRNetModule(
        net,
        loss=instantiate(cfg.loss, _convert_="all"),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        preprocessing=datamodule.preprocessing,
        extra_metadata=metadata,
    )


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit on the train split, select on val, test the best checkpoint, write ``metrics.json``.

    Args:
        cfg: a composed ``train.yaml`` config.

    Returns:
        The final test metrics (flat keys such as ``test/lung/dice``); empty when ``cfg.test`` is false.
    """
    check_trainer_config(cfg.trainer)
    output_dir = Path(cfg.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    if not loggers:  # learning-rate monitoring has nowhere to write without a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if not cfg.get("test", True):
        return {}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
    metrics = {
        key: float(value)
        for key, value in sorted(trainer.callback_metrics.items())
        if key.startswith("test/")
    }
    # Every rank reports; under DDP the values must agree (torchmetrics synchronises the states).
    log.info(
        "rank %d of %d finished; test metrics: %s",
        trainer.global_rank,
        trainer.world_size,
        json.dumps(metrics),
    )
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("test metrics written to %s", output_dir / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
