"""Checkpoint metadata and safe loading.

A cxrnet checkpoint is a Lightning checkpoint with one extra entry, ``checkpoint["cxrnet"]``, holding only
JSON-like values: the network's constructor arguments (class names included), the preprocessing and
provenance. Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only, so a crafted
file cannot run code while it is read.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cxrnet.data.transforms import Preprocessing
from cxrnet.models.cxrnet import CXRNet, create_model

CHECKPOINT_KEY = "cxrnet"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable cxrnet checkpoint; the message names the file and the reason."""


def checkpoint_metadata(
    net: CXRNet, preprocessing: Preprocessing, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``checkpoint["cxrnet"]`` entry for ``net``."""
    from cxrnet import __version__

    return {
        "format_version": FORMAT_VERSION,
        "cxrnet_version": __version__,
        "model": dict(net.config),
        "classes": list(net.classes),
        "severity_targets": list(net.severity_targets),
        "preprocessing": preprocessing.to_dict(),
        **(extra or {}),
    }


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely (weights only) and check that it is a cxrnet checkpoint.

    Raises:
        CheckpointError: missing file, unreadable file, a file that would need arbitrary unpickling, or a
            checkpoint without cxrnet metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it contains objects other than tensors and plain containers, which "
            f"could run code when unpickled ({str(err).splitlines()[0]}). Only load checkpoints you trust."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError) as err:
        # torch.load reports a file that is not a checkpoint at all in several ways (KeyError for text).
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a cxrnet checkpoint (no '{CHECKPOINT_KEY}' metadata); train one with "
            "python -m cxrnet.train, or use checkpoints/best.ckpt from a training run"
        )
    version = checkpoint[CHECKPOINT_KEY].get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}; this cxrnet reads format {FORMAT_VERSION}"
        )
    return checkpoint


def network_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights out of a LightningModule state dict (keys ``net.*``)."""
    prefix = "net."
    return {
        key[len(prefix) :]: value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)
    }


def load_network(path: str | Path) -> tuple[CXRNet, dict[str, Any]]:
    """Rebuild the network of a checkpoint, in eval mode on the CPU, with its metadata.

    Returns:
        (network, metadata) where metadata is ``checkpoint["cxrnet"]``.
    """
    checkpoint = read_checkpoint(path)
    meta = checkpoint[CHECKPOINT_KEY]
    config = dict(meta["model"], pretrained=False)  # the weights come from the checkpoint, never a download
    net = create_model(**config)
    missing, unexpected = net.load_state_dict(network_state_dict(checkpoint), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path} do not fit the network they describe: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval(), meta


def preprocessing_of(meta: dict[str, Any]) -> Preprocessing:
    """The :class:`Preprocessing` stored in checkpoint metadata."""
    return Preprocessing(**meta["preprocessing"])


def data_config_for_checkpoint(data: DictConfig, meta: dict[str, Any], seed: int | None) -> DictConfig:
    """A resolved copy of a data config made to feed the checkpoint's network.

    The input size, normalisation and classes come from the checkpoint (the user only names the data), training
    augmentation is off, and ``seed`` fixes the split (0 when ``None``).
    """
    config = OmegaConf.create(OmegaConf.to_container(data, resolve=True))
    preprocessing = preprocessing_of(meta)
    with open_dict(config):
        config.image_size = preprocessing.image_size
        config.mean, config.std = preprocessing.mean, preprocessing.std
        config.classes = list(meta["classes"])
        config.augment = "none"
        config.seed = 0 if seed is None else seed
    return config


def save_checkpoint(
    path: str | Path, net: CXRNet, preprocessing: Preprocessing, extra: dict[str, Any] | None = None
) -> Path:
    """Write a minimal cxrnet checkpoint (weights + metadata) without Lightning.

    ``load_network`` and ``cxrnet.load_model`` read it like a training checkpoint; it cannot resume
    training (no optimiser state). Used to store a calibrated or otherwise modified network.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"net.{key}": value for key, value in net.state_dict().items()}
    torch.save({"state_dict": state, CHECKPOINT_KEY: checkpoint_metadata(net, preprocessing, extra)}, path)
    return path
