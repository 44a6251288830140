"""Train CXRNet: ``python -m cxrnet.train +experiment=quickstart`` (Hydra overrides on the command line).

``train(cfg)`` does the work and can be called from Python with a composed config; ``main`` is the thin
Hydra wrapper.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from cxrnet.checkpoint import check_checkpoint_file
from cxrnet.command import CONFIG_PATH
from cxrnet.datamodule import one_class_warning
from cxrnet.devices import resolve_precision
from cxrnet.module import CXRNetModule
from cxrnet.progress import progress_bar
from cxrnet.provenance import inherit_heads, training_heads
from cxrnet.transfer import init_from_checkpoint

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


def resolve_trainer_precision(cfg: DictConfig) -> str:
    """Replace ``trainer.precision=auto`` by the precision :func:`cxrnet.devices.resolve_precision` picks.

    The resolved name is what the checkpoint's config and ``metrics.json`` record.
    """
    requested = str(cfg.trainer.get("precision", "32-true"))
    net = None
    if requested == "auto":  # the rule looks at the network's layers: build it without memory
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        model_cfg.pop("compile", None)
        try:
            with torch.device("meta"):
                net = instantiate(dict(model_cfg, pretrained=False), _convert_="all")
        except Exception:  # a few encoders cannot be built on the meta device: decide without the network
            net = None
    chosen = resolve_precision(requested, str(cfg.trainer.get("accelerator", "auto")), net=net)
    with open_dict(cfg):
        cfg.trainer.precision = chosen
    log.info("precision: %s", chosen)
    return chosen


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


# The package each optional logger needs, by the last part of its _target_.
_LOGGER_PACKAGES = {"TensorBoardLogger": "tensorboard", "MLFlowLogger": "mlflow", "WandbLogger": "wandb"}


def check_logger_config(group: DictConfig | None) -> None:
    """Fail before any data is read when a chosen logger's package is not installed, saying how to add it."""
    for name, node in (group or {}).items():
        if node is None or "_target_" not in node:
            continue
        package = _LOGGER_PACKAGES.get(str(node._target_).rsplit(".", 1)[-1])
        if package is not None and importlib.util.find_spec(package) is None:
            raise RuntimeError(
                f"logger {name!r} ({node._target_}) needs the optional package {package!r}: "
                'pip install "cxrnet[loggers]", or choose logger=csv'
            )


def log_hyperparameters(loggers: list[Any], cfg: DictConfig, module: CXRNetModule) -> None:
    """Give every logger the resolved config and the network's parameter counts (as lightning-hydra-template
    does): TensorBoard's HPARAMS tab, MLflow's parameters, the W&B run config, the CSV logger's hparams.yaml."""
    if not loggers:
        return
    params = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(params, dict)
    params["model/params/total"] = sum(p.numel() for p in module.net.parameters())
    params["model/params/trainable"] = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    for logger in loggers:
        logger.log_hyperparams(params)
        if isinstance(logger, pl.loggers.TensorBoardLogger):
            _tensorboard_hparams(logger, params, str(cfg.get("optimized_metric") or "val/score"))


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def _tensorboard_hparams(logger: Any, params: dict[str, Any], metric: str) -> None:
    """Fill TensorBoard's HPARAMS tab. Lightning writes it only with a metric value, and a placeholder value
    (its ``hp_metric``) would read as a result; the tab needs only the metric's *name*, whose values it then
    takes from the run's own scalars."""
    from torch.utils.tensorboard.summary import hparams

    names = dict.fromkeys([metric, "val/score", "val/cls/macro_f1"])
    writer = logger.experiment._get_file_writer()
    for summary in hparams(_flat(params), dict.fromkeys(names, 0.0)):
        writer.add_summary(summary)


def optimized_value(cfg: DictConfig, trainer: pl.Trainer, metrics: dict[str, Any]) -> float | None:
    """The value of ``cfg.optimized_metric`` for a hyperparameter search, ``None`` when it is not set.

    The score the best checkpoint was selected on (e.g. the best ``val/score`` of the run) when the metric
    is what that checkpoint monitors; otherwise the final value of the metric (the test metrics first).

    Raises:
        ValueError: the run never logged the metric (the error lists what it did log).
    """
    name = cfg.get("optimized_metric")
    if not name:
        return None
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) == name and callback.best_model_score is not None:
            return float(callback.best_model_score)
    logged = {**{k: v for k, v in trainer.callback_metrics.items()}, **metrics}
    if name not in logged:
        known = ", ".join(sorted(k for k in logged if "/" in k))
        raise ValueError(f"optimized_metric={name!r} was never logged; the run logged: {known}")
    return float(logged[name])


def build_module(cfg: DictConfig, datamodule: Any) -> CXRNetModule:
    """The LightningModule of a training config (network, loss, optimiser, scheduler).

    Checkpoints store the resolved config and, with ``record_training_data``, the training split's patient
    ids and image hashes, which ``cxrnet.evaluate`` uses to refuse a test set that leaks from training, and
    always what each head was trained on (:func:`cxrnet.provenance.training_heads`). The stored config gives
    the loss weights the loss uses (``null`` in ``train.yaml`` means the default of ``cxrnet.losses``).
    """
    net = instantiate(cfg.model, _convert_="all")
    loss = instantiate(cfg.loss, _convert_="all")
    config = OmegaConf.to_container(cfg, resolve=True)
    config["loss"]["weights"] = dict(loss.weights)
    metadata: dict[str, Any] = {"config": OmegaConf.to_yaml(config)}
    initialised = init_from_checkpoint(net, str(cfg.init_from)) if cfg.get("init_from") else None
    if initialised is not None:
        metadata["init_from"] = initialised.to_dict()
    metadata["precision"] = str(cfg.trainer.get("precision", "32-true"))
    if cfg.get("record_training_data", True):
        metadata["training_data"] = datamodule.training_fingerprint()
    if not datamodule.datasets:
        datamodule.setup("fit")
    # Which heads saw targets, and from which sources: consumers withhold what a head never learned.
    metadata["heads"] = training_heads(
        datamodule.datasets["train"].items, net.classes, net.severity_targets, loss.weights
    )
    if initialised is not None:  # weights learned before (e.g. phantom pretraining) were trained too
        source = initialised.source_meta
        metadata["heads"] = inherit_heads(
            metadata["heads"],
            source.get("heads"),
            metadata["init_from"]["fresh"],
            str(cfg.init_from),
            source.get("training_data"),
        )
    return CXRNetModule(
        net,
        loss=loss,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        preprocessing=datamodule.preprocessing,
        extra_metadata=metadata,
        channels_last=bool(cfg.get("channels_last", False)),
    )


def best_checkpoint(trainer: pl.Trainer) -> str:
    """Path of the run's best checkpoint: the one kept by the first checkpoint callback that monitors a score.

    The default callbacks keep ``best.ckpt`` (monitoring ``val/score``) and ``last.ckpt`` (no monitor); without
    a monitoring callback this is the first callback's file. Empty when none was written.
    """
    callbacks = trainer.checkpoint_callbacks
    chosen = next((c for c in callbacks if getattr(c, "monitor", None)), callbacks[0] if callbacks else None)
    return str(getattr(chosen, "best_model_path", "") or "")


ALLOW_UNTRAINED = "allow_untrained=true"
ALLOW_ONE_CLASS = "allow_one_class=true"


def check_training_budget(cfg: DictConfig) -> None:
    """Refuse, before any data is read, a run that would take no training step and still report metrics.

    Resuming (``ckpt_path``) is exempt: the resumed model was trained. ``allow_untrained=true`` lets an
    untrained baseline through on purpose (its ``metrics.json`` says ``run/train_steps: 0``).
    """
    if cfg.get("allow_untrained", False) or cfg.get("ckpt_path"):
        return
    for key in ("max_epochs", "max_steps"):
        if cfg.trainer.get(key) == 0:
            raise ValueError(
                f"trainer.{key}=0: no training step would run, and metrics.json would report the untrained "
                "(randomly initialised) model as if it were a result. Set it to at least 1; to measure an "
                "existing checkpoint use python -m cxrnet.evaluate checkpoint=<ckpt> ...; to record an "
                f"untrained baseline on purpose, add {ALLOW_UNTRAINED}"
            )


def check_training_data(cfg: DictConfig, datamodule: Any) -> None:
    """Refuse splits that would make the run report nothing, or a number that measures nothing.

    An empty val split leaves nothing to select ``best.ckpt`` on; an empty test split with ``test=true`` would
    write an empty ``metrics.json`` (``test=false`` trains without a final test, and writes none); a train
    split whose labelled images are all of one class gives a classifier that always says that class
    (``allow_one_class=true`` accepts it, e.g. to train the segmentation heads; the data summary warns).
    """
    datasets = datamodule.datasets
    sizes = {split: len(datasets[split]) for split in ("train", "val", "test")}
    shown = ", ".join(f"{split} {n}" for split, n in sizes.items())
    synthetic = datamodule.name == "synthetic" and not datamodule.specs
    for split, consequence in (
        ("train", "there is nothing to train on"),
        (
            "val",
            "best.ckpt (selected on val/score) would never be written and nothing would choose the model",
        ),
        ("test", "test=true has nothing to measure and metrics.json would be empty"),
    ):
        if sizes[split] or (split == "test" and not cfg.get("test", True)):
            continue
        if synthetic:
            how = f"set data.options.n_{split} (e.g. data.options.n_{split}=32)"
        else:
            fractions = ",".join(f"{k}:{v:g}" for k, v in datamodule.split_fractions.items())
            how = (
                f"give it a share with data.split_fractions (now {{{fractions}}}, e.g. "
                "data.split_fractions='{train:0.7,val:0.15,test:0.15}'), or add images"
            )
        if split == "test":
            how += ", or pass test=false to train without a final test (no metrics.json is written then)"
        raise ValueError(f"the {split} split is empty ({shown} images): {consequence}. To fix it, {how}")
    warning = one_class_warning("train", datasets["train"].labels, datamodule.classes)
    if warning is not None and not cfg.get("allow_one_class", False):
        raise ValueError(
            f"{warning}. Add images of the other classes (data.classes={list(datamodule.classes)}), or, to train "
            f"on this data anyway (e.g. for the segmentation heads), add {ALLOW_ONE_CLASS}"
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on the train split, select on val, test the best checkpoint, write ``metrics.json``.

    Refuses (``ValueError``, naming the option to change) to report what was not computed: a run with no
    training step (``trainer.max_epochs=0``, unless ``allow_untrained=true``), an empty val split, an empty
    test split with ``test=true`` (pass ``test=false`` to train without a final test), a train split of one
    class (unless ``allow_one_class=true``). See :func:`check_training_budget`, :func:`check_training_data`.

    Args:
        cfg: a composed ``train.yaml`` config.

    Returns:
        The final test metrics (flat keys such as ``test/lung/dice_pooled``), plus ``run/precision``,
        ``run/train_seconds`` (wall time of the fit loop) and ``run/train_steps`` (optimiser steps the
        model has taken, resumed ones included); empty when ``cfg.test`` is false. With
        ``cfg.optimized_metric`` set, also ``optimized_metric`` (see :func:`optimized_value`).

    Raises:
        ValueError: one of the refusals above.
        RuntimeError: training took no step (e.g. ``trainer.limit_train_batches=0``), or testing produced no
            metric.
    """
    check_trainer_config(cfg.trainer)
    check_logger_config(cfg.get("logger"))
    check_training_budget(cfg)
    if cfg.get("ckpt_path") and str(cfg.ckpt_path) not in ("last", "best", "hpc", "registry"):
        check_checkpoint_file(cfg.ckpt_path)  # an empty or truncated checkpoint fails now, naming the file
    resolve_trainer_precision(cfg)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")  # the splits are checked before the model is built and images are hashed
    check_training_data(cfg, datamodule)
    module = build_module(cfg, datamodule)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    if not loggers:  # learning-rate monitoring has nowhere to write without a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar", True) and not cfg.trainer.get("fast_dev_run", False):
        progress = cfg.get("progress") or {}
        callbacks.append(
            progress_bar(str(progress.get("style", "auto")), int(progress.get("every_n_steps", 0)))
        )
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_hyperparameters(loggers, cfg, module)

    try:
        return _fit_and_test(cfg, trainer, module, datamodule)
    finally:
        close_loggers(loggers)


def close_loggers(loggers: list[Any]) -> None:
    """Finish the runs that outlive ``trainer.fit``: a W&B run stays open until the process exits, so in a
    sweep (many trainings in one process) the next trial would log into it."""
    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def _fit_and_test(
    cfg: DictConfig, trainer: pl.Trainer, module: CXRNetModule, datamodule: Any
) -> dict[str, Any]:
    output_dir = Path(cfg.output_dir)
    started = time.monotonic()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.monotonic() - started
    steps = int(trainer.global_step)
    if steps == 0:
        if not cfg.get("allow_untrained", False):
            raise RuntimeError(
                "training took no optimiser step (trainer.global_step is 0: trainer.limit_train_batches=0, a "
                "trainer.max_time too short for one batch, ...), so the model is untrained; refusing to test "
                f"it and write metrics.json. Give training at least one batch, or add {ALLOW_UNTRAINED} to "
                "record an untrained baseline on purpose"
            )
        log.warning(
            "allow_untrained: the model took no training step; metrics.json records run/train_steps=0"
        )
    if not cfg.get("test", True):
        value = optimized_value(cfg, trainer, {})
        return {} if value is None else {"optimized_metric": value}
    best = best_checkpoint(trainer)
    if not best and any(getattr(c, "monitor", None) for c in trainer.checkpoint_callbacks):
        log.warning(
            "no best checkpoint was written (the monitored score was never logged: does the val split have "
            "class labels or masks?); testing the final weights instead"
        )
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
    metrics: dict[str, Any] = {
        key: float(value)
        for key, value in sorted(trainer.callback_metrics.items())
        if key.startswith("test/")
    }
    if not metrics:
        raise RuntimeError(
            "testing logged no metric (the test split has neither class labels nor masks?); metrics.json not "
            "written"
        )
    metrics["run/precision"] = str(cfg.trainer.precision)
    metrics["run/train_seconds"] = round(fit_seconds, 1)
    metrics["run/train_steps"] = steps
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
    value = optimized_value(cfg, trainer, metrics)
    if value is not None:
        metrics["optimized_metric"] = value
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; return ``optimized_metric``'s value (``None`` when unset) for Hydra sweepers such as Optuna."""
    value = train(cfg).get("optimized_metric")
    if value is not None:
        log.info("optimized_metric %s = %.6g", cfg.optimized_metric, value)
    return value


if __name__ == "__main__":
    main()
