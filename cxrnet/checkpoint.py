"""Checkpoint metadata and safe loading.

A cxrnet checkpoint is a Lightning checkpoint with one extra entry, ``checkpoint["cxrnet"]``, holding only
JSON-like values: the network's constructor arguments (class names included), the preprocessing and
provenance. Loading uses ``torch.load(weights_only=True)``: tensors and plain containers only, so a crafted
file cannot run code while it is read.

A checkpoint is a file people download, so it is untrusted input: :func:`read_checkpoint`, which every
loader goes through, scans the pickle stream before ``torch.load`` runs
(:func:`cxrnet.checkpoint_validation.check_pickle_stream`: no dictionary key that would hash forever) and
validates what it loaded with :func:`cxrnet.checkpoint_validation.validate_checkpoint` (bounded JSON-like
metadata, safe YAML, model settings, preprocessing and temperature within bounds, one source of truth for
the class names, finite weights); :func:`load_network` checks that the weights fit the network they describe
on a network built without memory (``torch.device("meta")``) before the real one is allocated. Anything else
is a :class:`CheckpointError` naming the file and the field.

Checkpoints are written atomically (:func:`atomic_write`): into a temporary file in the destination folder,
flushed to disk, then renamed over the old file, so a crash or a kill leaves the previous checkpoint or the
new one, never a truncated file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import secrets
import shutil
import socket
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cxrnet.checkpoint_streams import (
    CHECKPOINT_KEY,
    FORMAT_VERSION,
    UNTRUSTED_HINT,
    CheckpointError,
    check_pickle_stream,
    error_summary,
    parse_stored_config,
)
from cxrnet.checkpoint_validation import stored_config, validate_checkpoint
from cxrnet.data.transforms import Preprocessing
from cxrnet.models.cxrnet import CXRNet, create_model

__all__ = [
    "CHECKPOINT_KEY",
    "FORMAT_VERSION",
    "CheckpointError",
    "atomic_write",
    "build_network",
    "check_checkpoint_file",
    "check_pickle_stream",
    "checkpoint_metadata",
    "config_digest",
    "data_config_for_checkpoint",
    "load_network",
    "network_state_dict",
    "parse_stored_config",
    "partial_path",
    "pickle_stream",
    "preprocessing_of",
    "read_checkpoint",
    "save_checkpoint",
    "stored_config",
    "validate_checkpoint",
]


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
    """Delete temporary files or folders of ``path`` left by killed writers on this host (pid not running)."""
    host = socket.gethostname()
    for candidate in path.parent.glob(f"{_partial_prefix(path)}*"):
        try:
            owner, pid, _ = candidate.name[len(_partial_prefix(path)) :].rsplit("-", 2)
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if owner == host:
                with contextlib.suppress(OSError):
                    if candidate.is_dir() and not candidate.is_symlink():
                        shutil.rmtree(candidate)
                    else:
                        candidate.unlink()
        except (ValueError, PermissionError, OSError):
            continue  # not ours, another user's live process, or another host's: leave it


def partial_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` for writing it atomically (see :func:`atomic_write`).

    Hidden, and named after this host and process, so that the next writer of ``path`` on this host removes
    what a killed writer left (files and folders alike); that clean-up runs here too.
    """
    path = Path(path)
    _remove_stale_partials(path)
    return path.with_name(
        f"{_partial_prefix(path)}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    )


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
    temporary = partial_path(path)
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
    """Load a checkpoint file safely (weights only) and validate it with :func:`validate_checkpoint`.

    Raises:
        CheckpointError: missing, empty or truncated file, unreadable file, a file that would need arbitrary
            unpickling, a checkpoint without cxrnet metadata, or metadata or weights that fail validation.
    """
    path = check_checkpoint_file(path)
    check_pickle_stream(pickle_stream(path), path)  # before torch.load, which could hang on it
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it contains objects other than tensors and plain containers, which "
            f"could run code when unpickled ({error_summary(err)}). Only load checkpoints you trust."
        ) from err
    except Exception as err:
        # A damaged or foreign file makes torch.load fail in many ways (RuntimeError, EOFError, KeyError for
        # text, ValueError, TypeError from a mangled pickle, ...): callers rely on one error type.
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {error_summary(err)}): it is damaged or "
            "not a PyTorch checkpoint; use checkpoints/best.ckpt of a training run, or copy the file again"
        ) from err
    return validate_checkpoint(checkpoint, path)


MAX_PICKLE_BYTES = 256 << 20
"""Largest pickle stream (``data.pkl``: the checkpoint without its tensors' data) read; Lightning writes a few
hundred kB."""


def pickle_stream(path: Path) -> bytes:
    """The ``data.pkl`` entry of a torch zip archive, read within :data:`MAX_PICKLE_BYTES`."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
            if not names:
                return b""  # not a torch archive: torch.load says so
            if names[0].file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(
                    f"refusing checkpoint {path}: its pickle stream is {names[0].file_size} bytes, over "
                    f"{MAX_PICKLE_BYTES}; {UNTRUSTED_HINT}"
                )
            with archive.open(names[0]) as stream:
                return stream.read(MAX_PICKLE_BYTES + 1)
    except CheckpointError:
        raise
    except Exception as err:  # a damaged archive (bad offsets, CRC, compression)
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {error_summary(err)}): it is damaged or "
            "not a PyTorch checkpoint; use checkpoints/best.ckpt of a training run, or copy the file again"
        ) from err


def network_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights out of a LightningModule state dict (keys ``net.*``)."""
    prefix = "net."
    return {
        key[len(prefix) :]: value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)
    }


def load_network(path: str | Path) -> tuple[CXRNet, dict[str, Any]]:
    """Rebuild the network of a checkpoint, in eval mode on the CPU, with its metadata.

    The network is first built on the ``meta`` device (no memory) and the stored weights are checked to fit
    it, name by name and shape by shape; only then is it allocated, so a file describing a network of many GB
    is refused instead of exhausting memory (encoders that cannot be built on the meta device are built for
    real first, within the bounds validation sets).

    Returns:
        (network, metadata) where metadata is ``checkpoint["cxrnet"]``, validated.

    Raises:
        CheckpointError: the file cannot be read, fails validation, or its weights do not fit its network.
    """
    checkpoint = read_checkpoint(path)
    meta = checkpoint[CHECKPOINT_KEY]
    return build_network(meta, network_state_dict(checkpoint), path), meta


def build_network(meta: dict[str, Any], weights: dict[str, torch.Tensor], path: str | Path) -> CXRNet:
    """The network validated metadata describes, filled with ``weights``, in eval mode on the CPU.

    The checks of :func:`load_network` (weights fit a network built on the ``meta`` device before the real
    one is allocated), for any source of validated metadata and weights (a checkpoint, or a
    :mod:`cxrnet.pretrained` folder).

    Args:
        meta: validated metadata (:func:`validate_checkpoint`); its ``model`` is the constructor config.
        weights: the network's state dict (keys without the ``net.`` prefix).
        path: the file the weights come from, for messages.

    Raises:
        CheckpointError: the network cannot be built, or the weights do not fit it.
    """
    path = Path(path)
    config = dict(meta["model"], pretrained=False)  # the weights come from the file, never a download
    try:
        with torch.device("meta"):
            skeleton = create_model(**config)
    except Exception:
        # A few encoders (smp's mit_b*) read numbers out of tensors while being built, which the meta device
        # cannot do: they are built for real and checked after, their sizes still within validated bounds.
        skeleton = None
    if skeleton is not None:
        _check_weights_fit(path, skeleton.state_dict(), weights)
        del skeleton
    net = _build_network(path, config)
    _check_weights_fit(path, net.state_dict(), weights)  # cheap; and the only check after a fallback
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"weights in {path} do not fit the network they describe ({error_summary(err)}); {UNTRUSTED_HINT}"
        ) from err
    return net.eval()


def _build_network(path: Path, config: dict[str, Any]) -> CXRNet:
    try:
        return create_model(**config)
    except Exception as err:  # smp and timm fail on odd settings with many exception types
        raise CheckpointError(
            f"cannot build the network {path} describes in 'model' ({type(err).__name__}: "
            f"{error_summary(err)}); {UNTRUSTED_HINT}"
        ) from err


def _check_weights_fit(
    path: Path, expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]
) -> None:
    """Refuse weights that miss, add or reshape a tensor of the network, or repeat their stored values."""
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    reshaped = [
        f"{key} {tuple(weights[key].shape)} (network {tuple(value.shape)})"
        for key, value in expected.items()
        if key in weights and weights[key].shape != value.shape
    ]
    if missing or unexpected or reshaped:
        raise CheckpointError(
            f"weights in {path} do not fit the network its 'model' describes: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, other shapes {reshaped[:5]}; {UNTRUSTED_HINT}"
        )
    # A tensor can claim any shape over a tiny storage (stride 0); the network it fills is allocated in full.
    stored = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in weights.values()}
    needed = sum(t.numel() * t.element_size() for t in weights.values())
    if needed > sum(stored.values()):
        raise CheckpointError(
            f"weights in {path} describe {needed} bytes of tensors but store {sum(stored.values())}: tensors "
            f"repeat their values (a crafted file that would allocate far more memory than it holds); "
            f"{UNTRUSTED_HINT}"
        )


def config_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the training config stored in the checkpoint (``""`` when there is none)."""
    config = meta.get("config")
    if not config:
        return ""
    text = config if isinstance(config, str) else json.dumps(config, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
