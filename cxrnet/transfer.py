"""Start a network from another checkpoint's weights: phantom pretraining, then fine-tuning on real films.

Phantoms carry exact lung and infection masks, so a network pretrained on them (``+experiment=phantom_pretrain``)
has a decoder that already outlines lungs and lesions. :func:`init_from_checkpoint` copies every weight whose
name and shape match into a new network, except the heads whose outputs mean something else: the classifier
when the class list differs (even only in order) and the severity head when the targets differ keep their
fresh initialisation. Unlike ``ckpt_path`` (resume), nothing
of the earlier optimiser, schedule or epoch count is carried over.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from cxrnet.checkpoint import CHECKPOINT_KEY, CheckpointError, network_state_dict, read_checkpoint
from cxrnet.models.cxrnet import CXRNet

__all__ = ["InitReport", "init_from_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` copied.

    Attributes:
        path: the source checkpoint.
        loaded: parameter and buffer names copied.
        reshaped: names present in both whose shapes differ (left at their initialisation).
        missing: names of the network absent from the checkpoint, or of a head whose outputs mean something
            else there (other classes or severity targets): left at their initialisation.
        source_classes: the source network's classes.
        source_training: the source's training-data sources (e.g. ``["synthetic"]``), when recorded.
        source_meta: the source checkpoint's ``checkpoint["cxrnet"]`` metadata (its ``heads`` and
            ``training_data`` say what the copied weights learned from; :func:`cxrnet.provenance.inherit_heads`).
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    source_classes: list[str] = field(default_factory=list)
    source_training: list[str] = field(default_factory=list)
    source_meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        """One line for the log."""
        total = len(self.loaded) + len(self.reshaped) + len(self.missing)
        kept = sorted({name.split(".")[0] for name in self.reshaped + self.missing})
        return (
            f"initialised from {self.path} (trained on {', '.join(self.source_training) or 'unknown data'}, "
            f"classes {self.source_classes}): {len(self.loaded)} of {total} tensors copied"
            + (f"; fresh: {', '.join(kept)}" if kept else "")
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for checkpoint metadata."""
        return {
            "path": self.path,
            "n_loaded": len(self.loaded),
            "fresh": sorted({name.split(".")[0] for name in self.reshaped + self.missing}),
            "source_classes": self.source_classes,
            "source_training": self.source_training,
        }


def init_from_checkpoint(net: CXRNet, path: str | os.PathLike[str]) -> InitReport:
    """Copy the weights of a cxrnet checkpoint into ``net`` wherever name and shape match.

    Args:
        net: the network to initialise (changed in place).
        path: a cxrnet checkpoint (``best.ckpt``/``last.ckpt`` of a training run, or a saved checkpoint); read
            safely (weights only).

    Returns:
        :class:`InitReport` of what was copied and what kept its fresh initialisation.

    Raises:
        CheckpointError: the file is not a readable cxrnet checkpoint, or it holds another architecture
            (encoders or decoder differ; the message names both), or no tensor fits.
    """
    checkpoint = read_checkpoint(path)
    meta = checkpoint[CHECKPOINT_KEY]
    theirs, ours = meta.get("model", {}), net.config
    for key in ("encoder", "classifier_encoder", "decoder"):
        if theirs.get(key) != ours.get(key):
            raise CheckpointError(
                f"{path} holds another architecture ({key} {theirs.get(key)!r}, this network {ours.get(key)!r}); "
                f"initialise from a checkpoint with model.{key}={ours.get(key)}, or set model.{key}="
                f"{theirs.get(key)} to match it"
            )
    source = network_state_dict(checkpoint)
    target = net.state_dict()
    report = InitReport(
        str(path),
        source_classes=list(meta.get("classes", [])),
        source_training=list((meta.get("training_data") or {}).get("source", [])),
        source_meta=dict(meta),
    )
    # Heads whose outputs mean something else (other classes, other order, other severity targets) start
    # fresh even when their shapes happen to match: a logit must never change its meaning silently.
    relabelled = []
    if list(meta.get("classes", [])) != list(net.classes):
        relabelled.append("classification_head.")
    if list(meta.get("severity_targets", [])) != list(net.severity_targets):
        relabelled.append("severity_head.")
    update: dict[str, torch.Tensor] = {}
    for name, tensor in target.items():
        if name not in source or name.startswith(tuple(relabelled)):
            report.missing.append(name)
        elif source[name].shape != tensor.shape:
            report.reshaped.append(name)
        else:
            update[name] = source[name]
            report.loaded.append(name)
    if not report.loaded:
        raise CheckpointError(f"no weight of {path} fits this network; check model.decoder_channels")
    net.load_state_dict(update, strict=False)
    log.info(report.summary())
    return report
