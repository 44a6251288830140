"""Training steps to time: the real module through a Lightning ``Trainer``, and bare PyTorch loops.

Everything is built the way ``python -m cxrnet.train`` builds it: ``train.yaml`` composed with Hydra (plus
an experiment), the network from ``cfg.model``, the module from :func:`cxrnet.train.build_module`, the
trainer, logger and callbacks from their config groups. Batches come from the config's data module and are
preloaded, so that a loop over them times the model and the framework, not the data.

A bare loop does what Lightning's automatic optimisation does per batch: forward and loss under the
precision's autocast, ``zero_grad``, backward, gradient clipping at ``trainer.gradient_clip_val``, the
optimiser step and the per-batch scheduler step; the network and images in channels-last memory format
when the config says so (``channels_last``, as :class:`cxrnet.module.CXRNetModule` does).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from cxrnet.devices import autocast_dtype
from cxrnet.losses import MultiTaskLoss, classification_loss, dice_bce_loss
from cxrnet.module import CXRNetModule
from cxrnet.train import build_module, resolve_trainer_precision

Batch = dict[str, Any]
LossFn = Callable[[nn.Module, torch.Tensor, Batch], torch.Tensor]
"""``(net, image, batch) → scalar loss``: the forward pass and the loss of one batch."""


def compose_train(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """``train.yaml`` composed with ``overrides`` (e.g. ``+experiment=quickstart``), into ``output_dir``."""
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, "record_training_data=false"])
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    resolve_trainer_precision(cfg)
    return cfg


def autocast(precision: str) -> contextlib.AbstractContextManager[Any]:
    """The CPU autocast of a Lightning precision name (a no-op for ``32-true``)."""
    dtype = autocast_dtype(precision)
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


@dataclass
class TrainingSetup:
    """One training configuration, built once: the module, a pristine copy of its network, batches.

    Attributes:
        cfg: the composed training config.
        module: :class:`CXRNetModule` as ``train.build_module`` makes it (trained by the Lightning loop).
        net: a copy of ``module.net`` taken before any training (for bare loops: copy it again per use).
        batches: preloaded training batches of the config's data module (size ``data.batch_size``).
    """

    cfg: DictConfig
    module: CXRNetModule
    net: nn.Module
    batches: list[Batch]

    @property
    def batch_size(self) -> int:
        return int(self.batches[0]["image"].shape[0])

    @property
    def channels_last(self) -> bool:
        return bool(self.cfg.get("channels_last", False))

    @property
    def clip(self) -> float | None:
        value = self.cfg.trainer.get("gradient_clip_val")
        return float(value) if value else None

    def describe(self) -> dict[str, Any]:
        model = self.cfg.model
        return {
            "encoder": str(model.encoder),
            "decoder": str(model.decoder),
            "decoder_channels": list(model.decoder_channels) if model.decoder_channels else None,
            "image_size": int(self.cfg.data.image_size),
            "batch_size": self.batch_size,
            "channels_last": self.channels_last,
            "gradient_clip_val": self.clip,
            "optimizer": str(self.cfg.optimizer._target_),
            "parameters": sum(p.numel() for p in self.net.parameters()),
        }


def training_setup(overrides: Sequence[str], output_dir: Path, n_batches: int) -> TrainingSetup:
    """Compose, build the data module and the module as ``cxrnet.train`` does, and preload ``n_batches``."""
    cfg = compose_train(overrides, output_dir)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    batches: list[Batch] = []
    for batch in datamodule.train_dataloader():
        batches.append(batch)
        if len(batches) == n_batches:
            break
    if len(batches) < n_batches:
        raise ValueError(f"the train split gives {len(batches)} batches, fewer than the {n_batches} needed")
    return TrainingSetup(cfg, module, copy.deepcopy(module.net), batches)


# ----------------------------------------------------------------------------------- bare loops


def cxrnet_loss(loss: MultiTaskLoss) -> LossFn:
    """CXRNet's forward and its multitask loss, as ``CXRNetModule`` computes them in a training step."""

    def compute(net: nn.Module, image: torch.Tensor, batch: Batch) -> torch.Tensor:
        scales = net.severity_head.scales if net.severity_head is not None else None
        return loss(net(image), batch, severity_scales=scales)["total"]

    return compute


def plain_unet(setup: TrainingSetup) -> nn.Module:
    """A plain smp U-Net with an aux classification head: CXRNet's encoder, decoder widths and classes.

    Two output maps (lung, infection) and class logits from the encoder's deepest features; one encoder
    where CXRNet has two, and no gate, explanation or severity head.
    """
    model = setup.cfg.model
    if str(model.decoder) != "unet":
        raise ValueError(f"the plain baseline is a U-Net; the config's decoder is {model.decoder!r}")
    torch.manual_seed(int(setup.cfg.seed))
    kwargs = {"decoder_channels": tuple(model.decoder_channels)} if model.decoder_channels else {}
    return smp.Unet(
        encoder_name=str(model.encoder),
        encoder_weights=None,
        in_channels=1,
        classes=2,
        aux_params={"classes": len(setup.net.classes), "dropout": float(model.dropout)},
        **kwargs,
    )


def unet_loss(net: nn.Module, image: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Dice + BCE on the lung and infection maps and cross-entropy on the classes (CXRNet's loss terms)."""
    maps, class_logits = net(image)
    return (
        dice_bce_loss(maps[:, 0:1], batch["lung_mask"], batch["has_lung_mask"])
        + dice_bce_loss(maps[:, 1:2], batch["infection_mask"], batch["has_infection_mask"])
        + classification_loss(class_logits, batch["label"])
    )


def conv_backward_flops(
    grad_out_shape: Sequence[int],
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of a convolution's backward pass: the forward's count for each gradient computed.

    The input gradient is a (transposed) convolution of the output gradient with the weights, and the
    weight gradient one of the input with the output gradient: each takes as many multiply-adds as the
    forward pass. torch's own formula leaves ``groups`` out of the weight gradient (in torch 2.14 still;
    pytorch/pytorch#183405), counting a depthwise convolution's weight gradient once per channel, which
    makes a MobileNet's backward pass look 10x costlier than its forward pass.
    """
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


class BareLoop:
    """A bare PyTorch training loop over preloaded batches; :meth:`seconds_per_step` times it.

    Args:
        net: trained in place (pass a copy).
        loss_fn: forward + loss of one batch.
        setup: gives the optimiser and scheduler configs, clipping and the memory format.
        precision: Lightning precision name (``32-true``, ``bf16-mixed``).
        channels_last: network and images in channels-last format; ``None``: as the config says.
    """

    def __init__(
        self,
        net: nn.Module,
        loss_fn: LossFn,
        setup: TrainingSetup,
        precision: str,
        channels_last: bool | None = None,
    ) -> None:
        self.channels_last = setup.channels_last if channels_last is None else channels_last
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        self.net.train()
        self.loss_fn = loss_fn
        self.setup = setup
        self.precision = precision
        self._optimizer_factory = instantiate(setup.cfg.optimizer)
        self._scheduler_factory = instantiate(setup.cfg.scheduler) if setup.cfg.get("scheduler") else None

    def _image(self, batch: Batch) -> torch.Tensor:
        image = batch["image"]
        return image.contiguous(memory_format=torch.channels_last) if self.channels_last else image

    def seconds_per_step(self, warmup: int, steps: int) -> float:
        """Seconds per training step over ``steps`` steps, after ``warmup`` untimed ones.

        A fresh optimiser and scheduler each call, sized for ``warmup + steps``, as each Lightning fit
        configures them anew.
        """
        optimizer = self._optimizer_factory(params=self.net.parameters())
        scheduler = None
        if self._scheduler_factory is not None:
            scheduler = self._scheduler_factory(optimizer=optimizer, total_steps=warmup + steps)
        batches = self.setup.batches
        clip = self.setup.clip

        def step(batch: Batch) -> None:
            with autocast(self.precision):
                loss = self.loss_fn(self.net, self._image(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()

        for index in range(warmup):
            step(batches[index % len(batches)])
        start = time.perf_counter()
        for index in range(warmup, warmup + steps):
            step(batches[index % len(batches)])
        return (time.perf_counter() - start) / steps

    def flops(self, corrected: bool = True) -> int:
        """FLOPs of one forward + backward pass (matmuls and convolutions, counted by torch), on a copy.

        Args:
            corrected: count convolution backward passes with :func:`conv_backward_flops` instead of
                torch's formula, which overcounts grouped and depthwise convolutions.
        """
        net = copy.deepcopy(self.net)
        batch = self.setup.batches[0]
        mapping = {torch.ops.aten.convolution_backward: conv_backward_flops} if corrected else None
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            with autocast(self.precision):
                loss = self.loss_fn(net, self._image(batch), batch)
            loss.backward()
        return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------- Lightning


class _Batches(Dataset):
    """The preloaded batches, cycled to ``length`` (a shallow copy each: the module edits ``image``)."""

    def __init__(self, batches: Sequence[Batch], length: int) -> None:
        self.batches = batches
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Batch:
        return dict(self.batches[index % len(self.batches)])


class _StepClock(pl.Callback):
    """Clock reading at the end of every training batch."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


class LightningLoop:
    """The module trained by a ``pytorch_lightning.Trainer`` from the config, one fit per measurement.

    As in a real run: the trainer config (``log_every_n_steps``, gradient clipping, plugins, precision), the
    config's loggers (``logger/csv.yaml``: the CSV logger) writing into a fresh folder, the callbacks of
    ``callbacks/default.yaml`` that act during training (learning-rate monitor, training random state),
    metrics updated every step. Left out, because they act at epoch ends and not per step: validation,
    checkpointing; and the progress bar and model summary (terminal output).

    Args:
        setup: the module and batches.
        precision: Lightning precision name.
        root: folder for the fits' logs.
    """

    def __init__(self, setup: TrainingSetup, precision: str, root: Path) -> None:
        self.setup = setup
        self.precision = precision
        self.root = root
        self.fits = 0

    def callbacks(self) -> list[pl.Callback]:
        """The config's callbacks that act during training (the checkpoint callbacks left out)."""
        group: Mapping[str, Any] = self.setup.cfg.get("callbacks") or {}
        return [
            instantiate(node)
            for node in group.values()
            if node is not None and "_target_" in node and not str(node._target_).endswith("ModelCheckpoint")
        ]

    def seconds_per_step(self, warmup: int, steps: int) -> float:
        """Seconds per step (batch end to batch end: fetch, hooks, step, logging) after ``warmup`` steps."""
        if warmup < 1:
            raise ValueError(
                "the Lightning loop needs at least one warm-up step (the clock starts at its end)"
            )
        self.fits += 1
        folder = self.root / f"fit{self.fits:03d}"
        clock = _StepClock()
        group: Mapping[str, Any] = self.setup.cfg.get("logger") or {}
        loggers = [
            instantiate(node, save_dir=str(folder))
            for node in group.values()
            if node is not None and "_target_" in node
        ]
        trainer: pl.Trainer = instantiate(
            self.setup.cfg.trainer,
            default_root_dir=str(folder),
            precision=self.precision,
            max_epochs=1,
            max_steps=-1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[*self.callbacks(), clock],
            logger=loggers or False,
        )
        loader = DataLoader(_Batches(self.setup.batches, warmup + steps), batch_size=None)
        trainer.fit(self.setup.module, train_dataloaders=loader)
        if len(clock.ends) != warmup + steps:
            raise RuntimeError(f"the fit ran {len(clock.ends)} steps, expected {warmup + steps}")
        return (clock.ends[-1] - clock.ends[warmup - 1]) / steps


# ----------------------------------------------------------------------------------- peak rate


class Matmul:
    """Dense ``n×n @ n×n`` matrix products in one dtype: the machine's attainable FLOP/s for it."""

    def __init__(self, dtype: torch.dtype, n: int = 2048, repeats: int = 4) -> None:
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=generator).to(dtype)
        self.b = torch.randn(n, n, generator=generator).to(dtype)
        self.n = n
        self.repeats = repeats

    def flops_per_second(self) -> float:
        start = time.perf_counter()
        for _ in range(self.repeats):
            torch.mm(self.a, self.b)
        return 2 * self.n**3 * self.repeats / (time.perf_counter() - start)
