"""``CXRNetModule``: the thin LightningModule around :class:`~cxrnet.models.CXRNet`.

It holds the loss, the metrics and the optimisation plumbing; the network is built elsewhere and handed in.
Checkpoints carry everything needed to rebuild the network without the original config files (see
:mod:`cxrnet.checkpoint`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer

from cxrnet.checkpoint import CHECKPOINT_KEY, checkpoint_metadata
from cxrnet.data.transforms import Preprocessing
from cxrnet.losses import MultiTaskLoss
from cxrnet.metrics import TaskMetrics
from cxrnet.models.cxrnet import CXRNet, CXRNetOutput

STAGES = ("train", "val", "test")


SELECTION_TASKS = {"cls": "macro_f1", "lung": "dice_pooled", "infection": "dice_pooled"}
"""Task → the metric of it that :func:`selection_score` averages."""


def selection_score(values: Mapping[str, float], stage: str) -> float | None:
    """The model-selection score ``<stage>/score`` that the default checkpoint callback maximises.

    The mean, over the tasks the split has targets for, of each task's headline metric: macro-F1 of the
    classes (the metric that does not reward a majority-class classifier on imbalanced collections), pooled
    Dice of the lung masks, pooled Dice of the infection masks. On small, imbalanced validation splits
    macro-F1 alone jumps between epochs (14 validation films of Cohen et al. give values from 0 to 0.3 with
    no trend) and picks an early, half-trained network; averaging in the segmentation tasks selects the
    network that does everything it was trained for.

    Returns:
        The score, or ``None`` when the split has neither labels nor masks.
    """
    scores = [
        values[f"{stage}/{task}/{name}"]
        for task, name in SELECTION_TASKS.items()
        if f"{stage}/{task}/{name}" in values
    ]
    return sum(scores) / len(scores) if scores else None


class CXRNetModule(pl.LightningModule):
    """Trains a :class:`CXRNet` on batches of the ``Sample`` contract.

    Args:
        net: the network.
        loss: the multitask loss (default weights when ``None``).
        optimizer: partial taking ``params`` (e.g. ``functools.partial(torch.optim.AdamW, lr=1e-3)``).
        scheduler: partial taking ``optimizer`` (and ``total_steps`` when its signature has it, stepped per
            batch then; otherwise stepped per epoch), or ``None``.
        preprocessing: the input size and normalisation, stored in checkpoints.
        extra_metadata: JSON-ready facts to store in checkpoints (resolved config, training data summary).
        channels_last: keep the network and the image batches in channels-last memory format (faster
            convolutions with oneDNN on CPUs and with tensor cores on GPUs; the numbers are the same).
    """

    def __init__(
        self,
        net: CXRNet,
        loss: MultiTaskLoss | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        preprocessing: Preprocessing | None = None,
        extra_metadata: Mapping[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = bool(channels_last)
        self.net = net
        self.loss = loss or MultiTaskLoss()
        self.loss.bind_classes(net.classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.preprocessing = preprocessing or Preprocessing()
        self.extra_metadata = dict(extra_metadata or {})
        # One metric set per stage (attributes, not a ModuleDict: "train" would shadow nn.Module.train).
        for stage in STAGES:
            setattr(self, f"{stage}_metrics", TaskMetrics(net.classes, net.severity_targets))

    def stage_metrics(self, stage: str) -> TaskMetrics:
        return getattr(self, f"{stage}_metrics")

    def forward(self, x: torch.Tensor) -> CXRNetOutput:
        return self.net(x)

    def _shared_step(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        raw = None
        if self.loss.weights["explanation_guidance"] > 0 and self.loss.guide_raw_map:
            out, raw = self.net.forward_with_raw_map(batch["image"])
        else:
            out = self.net(batch["image"])
        deletion_logits = ungated_logits = None
        if self.loss.weights["deletion"] > 0:
            deletion_logits = self.net.deletion_logits(batch["image"], out.explanation, out.lung_logits)
        if self.loss.weights["cls_ungated"] > 0:
            ungated_logits = self.net.ungated_logits(batch["image"], out.lung_logits)
        scales = self.net.severity_head.scales if self.net.severity_head is not None else None
        terms = self.loss(
            out,
            batch,
            severity_scales=scales,
            deletion_logits=deletion_logits,
            ungated_logits=ungated_logits,
            raw_explanation=raw,
        )
        batch_size = batch["image"].shape[0]
        self.log_dict(
            {
                f"{stage}/loss/{name}" if name != "total" else f"{stage}/loss": value.detach()
                for name, value in terms.items()
            },
            on_step=stage == "train",
            on_epoch=True,
            # A float, so that Lightning accumulates the item count as a float: its sync_dist mean divides
            # the summed count by the world size in place, which truncates an integer count when the ranks
            # hold unequal shares (9 test items on 2 ranks were averaged over 8).
            batch_size=float(batch_size),
            sync_dist=stage != "train",
            prog_bar=False,
        )
        self.stage_metrics(stage).update(out, batch)
        return terms["total"]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else None
        if total and math.isfinite(total):
            self.loss.progress = min(1.0, self.global_step / total)
        try:
            return self._shared_step(batch, "train")
        finally:
            self.loss.progress = 1.0  # validation and test weigh the terms fully

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> CXRNetOutput:
        return self.net(batch["image"])

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self.stage_metrics(stage).compute(stage)
        self.stage_metrics(stage).reset()
        score = selection_score(values, stage)
        if score is not None:
            values[f"{stage}/score"] = score
        # torchmetrics has already synchronised the states across ranks.
        headline = {
            f"{stage}/cls/macro_f1",
            f"{stage}/lung/dice_pooled",
            f"{stage}/infection/dice_pooled",
            f"{stage}/score",
        }
        for key, value in values.items():
            self.log(key, value, sync_dist=False, prog_bar=key in headline)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (
            lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
        )
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        func = getattr(self.scheduler_factory, "func", self.scheduler_factory)
        parameters = inspect.signature(func).parameters
        if "total_steps" in parameters:
            kwargs: dict[str, Any] = {"total_steps": int(self.trainer.estimated_stepping_batches)}
            if "max_seconds" in parameters:
                kwargs["max_seconds"] = self._time_budget()
            scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)},
        }

    def _time_budget(self) -> float | None:
        """Seconds left of ``trainer.max_time`` for the training loop, or ``None`` without a time limit."""
        for callback in self.trainer.callbacks:
            if isinstance(callback, Timer):
                remaining = callback.time_remaining("train")
                return None if remaining is None else max(1.0, float(remaining))
        return None

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last and isinstance(batch, dict) and torch.is_tensor(batch.get("image")):
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_metadata(self.net, self.preprocessing, self.extra_metadata)
