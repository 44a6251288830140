"""What the command-line entry points share; no command imports another (``train``, ``predict``, ``evaluate``,
``calibrate``, ``export``, ``explain.evaluate``, ``data.check``).

- :data:`CONFIG_PATH`: where every ``hydra.main`` finds its config.
- :func:`register_resolvers`: the ``${cxrnet_...:}`` resolvers the configs use, registered before Hydra composes.
- :func:`open_split`: the checkpoint's network and one split of the data prepared for it (evaluate,
  calibrate, explain.evaluate), as a :class:`CheckpointSplit`.
- :func:`data_config`: the data config a checkpoint is scored on; :func:`config_digest`: SHA-256 of the
  training config a checkpoint stores, which every output of these commands records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from cxrnet.checkpoint import config_digest, data_config_for_checkpoint, load_network, stored_config
from cxrnet.conf import CONFIG_PATH
from cxrnet.devices import inference_precision, resolve_device
from cxrnet.evaluation.results import MAP_ESTIMATES

if TYPE_CHECKING:
    import torch

    from cxrnet.data.dataset import CXRDataset
    from cxrnet.datamodule import CXRDataModule
    from cxrnet.models.cxrnet import CXRNet

__all__ = [
    "CONFIG_PATH",
    "CheckpointSplit",
    "config_digest",
    "data_config",
    "open_split",
    "register_resolvers",
]


def register_resolvers() -> None:
    """Register the resolvers of cxrnet's configs (again is a no-op); call it before ``hydra.main`` composes.

    - ``${cxrnet_dirname:<file>}``: the folder of a file (``.`` for a bare name or none), the run directory of
      a command whose ``output=`` is one file (export).
    - ``${cxrnet_folder:<folder>}``: the folder itself, ``.`` when none is given, the run directory of a
      command whose ``output_dir=`` is optional (explain.evaluate).
    """
    if not OmegaConf.has_resolver("cxrnet_dirname"):
        OmegaConf.register_new_resolver(
            "cxrnet_dirname", lambda path: os.path.dirname(str(path or "")) or "."
        )
    if not OmegaConf.has_resolver("cxrnet_folder"):
        OmegaConf.register_new_resolver("cxrnet_folder", lambda path: str(path or "") or ".")


def _stored_data_seed(meta: dict[str, Any], checkpoint: str | Path = "checkpoint") -> int | None:
    """``data.seed`` of the training config stored in the checkpoint, if it records a whole number there.

    The config is parsed by the checkpoint's safe, bounded YAML reader and read as plain data: nothing in it
    is resolved or instantiated.
    """
    data = stored_config(meta, checkpoint).get("data")
    seed = data.get("seed") if isinstance(data, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def data_config(cfg: DictConfig, meta: dict[str, Any]) -> DictConfig:
    """``cfg.data`` with the checkpoint's image size, normalisation, classes and a fixed split seed.

    The seed is ``cfg.seed``, or when that is null the ``data.seed`` of the training config the checkpoint
    stores, so that a split made by cxrnet is the one the model was held out from. Severity targets become
    the data's own, plus those the model regresses, plus the references the map-derived scores are compared
    with (:data:`cxrnet.evaluation.results.MAP_ESTIMATES`).

    Raises:
        ValueError: a mandatory data key (e.g. ``data.root``) is not set; the message says how to set it.
    """
    missing = [f"data.{key}" for key in cfg.data if OmegaConf.is_missing(cfg.data, key) and key != "classes"]
    if missing:
        raise ValueError(
            f"data={cfg.data.get('name')} needs {', '.join(f'{k}=...' for k in missing)} on the command line"
        )
    seed = cfg.get("seed")
    if seed is None:
        seed = _stored_data_seed(meta, cfg.get("checkpoint") or "checkpoint")
    data = data_config_for_checkpoint(cfg.data, meta, seed)
    references = [*data.get("severity_targets", []), *meta.get("severity_targets", []), *MAP_ESTIMATES]
    with open_dict(data):
        data.severity_targets = list(dict.fromkeys(references))
    return data


@dataclass
class CheckpointSplit:
    """A checkpoint's network on its device, and one split of the data prepared as the network was trained.

    Attributes:
        net: the network, in eval mode, on ``device``.
        meta: the checkpoint's metadata (``classes``, ``preprocessing``, ``heads``, ``training_data``, ...).
        device: where the network runs.
        precision: the resolved inference precision (e.g. ``"32-true"``, ``"bf16-mixed"``).
        data: the data config actually used (see :func:`data_config`).
        datamodule: the instantiated, set-up datamodule of ``data``.
        split: the split's name (``train``, ``val`` or ``test``).
        dataset: that split, unaugmented, never empty.
    """

    net: CXRNet
    meta: dict[str, Any]
    device: torch.device
    precision: str
    data: DictConfig
    datamodule: CXRDataModule
    split: str
    dataset: CXRDataset

    @property
    def name(self) -> str:
        """``"the test split of data=qata"``, for messages."""
        return f"the {self.split} split of data={self.data.name}"

    @property
    def batch_size(self) -> int:
        """Items per forward pass: the data config's ``batch_size``."""
        return int(self.data.batch_size)

    @property
    def num_workers(self) -> int:
        """Data-loading processes: the data config's ``num_workers`` (0 when it has none)."""
        return int(self.data.get("num_workers", 0))


def open_split(cfg: DictConfig) -> CheckpointSplit:
    """Load ``cfg.checkpoint`` and open the split ``cfg.split`` of ``cfg.data`` for its network.

    Device (``cfg.device``) and precision (``cfg.precision``) are resolved first, so that a bad name fails
    before any file is read; the data then takes its input size, normalisation and classes from the checkpoint
    (:func:`data_config`), so that only the dataset has to be named.

    Args:
        cfg: a composed config with ``checkpoint``, ``data``, ``split``, ``seed`` and optionally ``device``
            (default ``cpu``) and ``precision`` (default ``auto``).

    Raises:
        ValueError: no checkpoint, a mandatory data key not set, an unknown or an empty split.
        RuntimeError: the device is not available.
        cxrnet.checkpoint.CheckpointError: the checkpoint cannot be read or fails validation.
    """
    checkpoint = cfg.get("checkpoint")
    if not checkpoint:
        raise ValueError("no checkpoint: add checkpoint=<file.ckpt> (e.g. <run>/checkpoints/best.ckpt)")
    device = resolve_device(str(cfg.get("device", "cpu")))
    precision = inference_precision(str(cfg.get("precision") or "auto"), device)
    net, meta = load_network(checkpoint)
    net = net.to(device)
    data = data_config(cfg, meta)
    datamodule = instantiate(data, _convert_="all")
    datamodule.setup()
    split = str(cfg.split)
    if split not in datamodule.datasets:
        raise ValueError(f"split={split!r} is not one of {sorted(datamodule.datasets)}")
    opened = CheckpointSplit(
        net, meta, device, precision, data, datamodule, split, datamodule.datasets[split]
    )
    if len(opened.dataset) == 0:
        raise ValueError(f"{opened.name} is empty; choose another split= or data=")
    return opened
