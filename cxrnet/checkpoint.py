"""Checkpoint metadata and safe loading.

A cxrnet checkpoint is a Lightning checkpoint with one extra entry, ``checkpoint["cxrnet"]``, holding only
JSON-like values: the network's constructor arguments (class names included), the preprocessing and
provenance. Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only, so a crafted
file cannot run code while it is read.

Checkpoints are written atomically (:func:`atomic_write`): into a temporary file in the destination folder,
flushed to disk, then renamed over the old file, so a crash or a kill leaves the previous checkpoint or the
new one, never a truncated file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import socket
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

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


_PARTIAL = ".partial-"


def _partial_prefix(path: Path) -> str:
    return f".{path.name}{_PARTIAL}"


def _remove_stale_partials(path: Path) -> None:
    """Delete temporary files of ``path`` left by killed writers on this host (their pid no longer runs)."""
    host = socket.gethostname()
    for candidate in path.parent.glob(f"{_partial_prefix(path)}*"):
        try:
            owner, pid, _ = candidate.name[len(_partial_prefix(path)) :].rsplit("-", 2)
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if owner == host:
                with contextlib.suppress(OSError):
                    candidate.unlink()
        except (ValueError, PermissionError, OSError):
            continue  # not ours, another user's live process, or another host's: leave it


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that readers, and a crash at any moment, see the old content or the new, never a part.

    ``write`` fills a temporary file *in the destination folder* (a rename is only atomic within one file
    system: a temporary file under ``$TMPDIR`` would be copied, and a kill mid-copy leaves a truncated file),
    which is flushed and fsynced, then renamed over ``path`` with :func:`os.replace`; the folder is fsynced so
    the rename survives a power cut. On failure the temporary file is removed; one left by a killed process is
    removed by the next write of the same file on this host.

    Args:
        path: destination file; its folder is created.
        write: called with the open temporary file (binary, write mode).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    temporary = path.with_name(
        f"{_partial_prefix(path)}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    )
    try:
        with open(temporary, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    with contextlib.suppress(OSError):  # not every platform can open a folder (Windows cannot)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path


def check_checkpoint_file(path: str | Path) -> Path:
    """Fail fast, naming the file, when ``path`` cannot be a complete checkpoint (missing, empty, truncated).

    Checks only the file's frame (torch checkpoints are zip archives whose directory sits at the end, so a
    truncated file has none); reading the content is :func:`read_checkpoint`'s job.

    Raises:
        CheckpointError: the file is missing, not a file, empty, or not a complete zip archive.
    """
    path = Path(path)
    hint = (
        "resume from another checkpoint (checkpoints/best.ckpt, or last.ckpt of another run) or start afresh"
    )
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): it was being written when the process was killed or the "
            f"disk filled up; {hint}"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint ({size} bytes, no zip directory at "
            f"its end): it was probably cut short by a crash or an interrupted copy; {hint}"
        )
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely (weights only) and check that it is a cxrnet checkpoint.

    Raises:
        CheckpointError: missing, empty or truncated file, unreadable file, a file that would need arbitrary
            unpickling, or a checkpoint without cxrnet metadata.
    """
    path = check_checkpoint_file(path)
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
    state = {f"net.{key}": value for key, value in net.state_dict().items()}
    checkpoint = {"state_dict": state, CHECKPOINT_KEY: checkpoint_metadata(net, preprocessing, extra)}
    return atomic_write(path, lambda handle: torch.save(checkpoint, handle))
