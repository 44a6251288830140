"""Pretrained folders: a model as three plain files, the layout the Hugging Face Hub expects.

Written by ``python -m cxrnet.export checkpoint=<ckpt> format=hf output=<folder>`` (:func:`export_pretrained`)
and read back by ``cxrnet.load_model(<folder>)`` (:func:`load_pretrained`), with outputs identical to the
checkpoint's; :mod:`cxrnet.hub` moves such folders to and from the Hub.

``model.safetensors``
    The CXRNet weights (safetensors: raw tensors and a JSON header; nothing can run while it is read).
``config.json``
    Everything needed to rebuild and use the network, named as in checkpoint metadata
    (:mod:`cxrnet.checkpoint`): ``format`` (``"cxrnet-pretrained"``) and ``format_version``;
    ``cxrnet_version`` (that trained it) and ``exported_with``; ``model``, the constructor config
    (``create_model(**model)``, severity targets and scales included); ``classes`` and ``severity_targets``;
    ``preprocessing`` (``image_size`` in pixels, ``mean`` and ``std`` of the [0, 1] image) and ``input`` (the
    input convention in words); ``precision`` used in training; ``temperature`` (``null``: not calibrated) and
    ``calibrated_on``; ``heads`` (what each head was trained on, :mod:`cxrnet.provenance`) with
    ``trained_heads`` (the same, as true/false per head, for readers) and ``untrained_outputs``;
    ``training_data`` (:func:`fingerprint_summary` of the checkpoint's fingerprint); ``source`` (the
    checkpoint's file name and SHA-256, and the SHA-256 of its stored training config).
``README.md``
    A model card (:mod:`cxrnet.model_card`), with the run's ``metrics.json`` when it sits beside the
    checkpoint's ``checkpoints/`` folder.

A shared folder should not publish the training set: the patient ids and image hashes of the checkpoint's
fingerprint are reduced to counts and a digest, and local paths (calibration data root, checkpoints heads were
inherited from) to file names. ``config.json`` is validated on reading as a checkpoint's metadata is
(:func:`cxrnet.checkpoint_validation.validate_checkpoint`), and the weights must fit the network it describes.

The folder is written atomically: into a hidden temporary folder beside it, renamed into place when complete,
so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from cxrnet.checkpoint import (
    CHECKPOINT_KEY,
    FORMAT_VERSION,
    CheckpointError,
    build_network,
    config_digest,
    load_network,
    partial_path,
)
from cxrnet.checkpoint_streams import error_summary, reworded_refusal
from cxrnet.checkpoint_validation import validate_checkpoint
from cxrnet.model_card import model_card
from cxrnet.models.cxrnet import CXRNet
from cxrnet.provenance import HEADS, head_training, untrained_outputs

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "FILES",
    "FORMAT",
    "PRETRAINED_FORMAT_VERSION",
    "REQUIRED_KEYS",
    "WEIGHTS_FILE",
    "export_pretrained",
    "fingerprint_summary",
    "input_convention",
    "load_pretrained",
    "pretrained_config",
    "public_heads",
    "read_config",
    "run_metrics",
]

log = logging.getLogger(__name__)

FORMAT = "cxrnet-pretrained"
PRETRAINED_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
"""What :func:`export_pretrained` writes; loading needs the first two."""

REQUIRED_KEYS = ("format", "format_version", "model", "classes", "severity_targets", "preprocessing")
"""Keys ``config.json`` must have; the others (temperature, heads, ...) may be ``null`` or absent."""

MAX_CONFIG_BYTES = 16 << 20
"""Largest ``config.json`` read; cxrnet writes a few kB."""

HINT = (
    "write the folder again with python -m cxrnet.export checkpoint=<ckpt> format=hf output=<folder>, "
    "from a checkpoint you trust"
)

#: Fields of a calibration report (``meta["calibrated_on"]``) that a shared file keeps; the others are paths.
_CALIBRATION_FIELDS = (
    "temperature",
    "data",
    "split",
    "precision",
    "n_items",
    "n_patients",
    "ece_before",
    "ece_after",
    "nll_before",
    "nll_after",
    "date",
    "checkpoint_config_sha256",
)


# ----------------------------------------------------------------------------------------- what is written


def input_convention(image_size: int) -> str:
    """How an image must be prepared for the network, in words (also ONNX metadata ``input_layout``)."""
    return (
        "float32 Bx1xHxW grayscale, (pixel in [0, 1] - mean) / std; H, W multiples of 32, trained at "
        f"{image_size}x{image_size} (letterboxed)"
    )


def fingerprint_summary(fingerprint: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A training-data fingerprint (:mod:`cxrnet.leakage`) fit to publish: counts and a digest, no ids.

    Returns:
        ``{"source", "n_items", "n_patients", "hash", "sha256"}``, where ``sha256`` digests the sorted patient
        ids and the image hashes (whoever holds the checkpoint can check that the two describe the same
        data); ``None`` when the checkpoint records no fingerprint.
    """
    if not fingerprint:
        return None
    patients = sorted(str(p) for p in fingerprint.get("patient_ids", []))
    hashes = [str(h) for h in fingerprint.get("image_hashes", [])]
    text = json.dumps({"patient_ids": patients, "image_hashes": hashes}, sort_keys=True)
    return {
        "source": sorted(str(s) for s in fingerprint.get("source", [])),
        "n_items": int(fingerprint.get("n_items", len(hashes))),
        "n_patients": len(patients),
        "hash": str(fingerprint.get("hash", "")),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


def public_heads(heads: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A ``heads`` record (:mod:`cxrnet.provenance`) fit to publish: its ``inherited_from`` path as a name."""
    if heads is None:
        return None
    out = dict(heads)
    if out.get("inherited_from"):
        out["inherited_from"] = Path(str(out["inherited_from"])).name
    return out


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained_config(net: CXRNet, meta: Mapping[str, Any], checkpoint: Path) -> dict[str, Any]:
    """The ``config.json`` of ``net`` and its validated checkpoint metadata (see the module docstring)."""
    from cxrnet import __version__

    heads = public_heads(meta.get("heads"))
    targets = list(net.severity_targets)
    calibration = meta.get("calibrated_on")
    if isinstance(calibration, Mapping):
        calibration = {key: calibration[key] for key in _CALIBRATION_FIELDS if key in calibration}
    return {
        "format": FORMAT,
        "format_version": PRETRAINED_FORMAT_VERSION,
        "library_name": "cxrnet",
        "cxrnet_version": str(meta.get("cxrnet_version", __version__)),
        "exported_with": __version__,
        "model": dict(net.config, pretrained=False),
        "classes": list(net.classes),
        "severity_targets": targets,
        "preprocessing": dict(meta["preprocessing"]),
        "input": input_convention(int(meta["preprocessing"]["image_size"])),
        "precision": meta.get("precision"),
        "temperature": meta.get("temperature"),
        "calibrated_on": calibration,
        "heads": heads,
        "trained_heads": {
            name: head_training(heads, name).trained for name in (*HEADS, *(f"severity/{t}" for t in targets))
        },
        "untrained_outputs": sorted(untrained_outputs(heads, targets)),
        "training_data": fingerprint_summary(meta.get("training_data")),
        "source": {
            "checkpoint": checkpoint.name,
            "sha256": _file_sha256(checkpoint),
            "training_config_sha256": config_digest(dict(meta)),
        },
    }


def run_metrics(checkpoint: str | os.PathLike[str]) -> Path | None:
    """The ``metrics.json`` of the training run a checkpoint belongs to: ``<run>/checkpoints/x.ckpt`` →
    ``<run>/metrics.json``; ``None`` when the checkpoint is not in a run's ``checkpoints/`` folder or the
    run wrote none (it is written after the final test, of the run's best checkpoint)."""
    path = Path(checkpoint).resolve()
    if path.parent.name != "checkpoints":
        return None
    metrics = path.parent.parent / "metrics.json"
    return metrics if metrics.is_file() else None


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the metrics file {path} ({error_summary(err)})") from err
    if not isinstance(values, dict):
        raise ValueError(
            f"metrics file {path} holds a {type(values).__name__}; expected an object of metrics"
        )
    return values


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _check_output(output: Path, overwrite: bool) -> None:
    if output.is_file() or (output.exists() and not output.is_dir()):
        raise FileExistsError(
            f"output {output} is a file; a pretrained model is a folder: choose a folder name "
            "(e.g. output=model)"
        )
    if output.is_dir() and not overwrite:
        held = sorted(p.name for p in output.iterdir())
        if held:
            shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            raise FileExistsError(
                f"output folder {output} is not empty (it holds {shown}); choose a new folder, or add "
                f"overwrite=true to replace its {', '.join(FILES)} (other files are kept)"
            )


def _commit(temporary: Path, output: Path) -> None:
    """Move the finished folder into place: one rename when ``output`` is new, one per file when it exists."""
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    if not output.exists():
        os.replace(temporary, output)
        return
    for name in FILES:  # overwrite=true into a folder that may hold more (a git clone of the Hub repo)
        os.replace(temporary / name, output / name)
    temporary.rmdir()


def export_pretrained(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    overwrite: bool = False,
    metrics: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the pretrained folder of a checkpoint: ``model.safetensors``, ``config.json``, ``README.md``.

    Args:
        checkpoint: a cxrnet checkpoint (``<run>/checkpoints/best.ckpt``); read and validated safely.
        output: the folder to write; its parents are created. It must not exist or be empty unless
            ``overwrite``.
        overwrite: replace the three files of an existing folder (other files in it are kept).
        metrics: a ``metrics.json`` for the model card; default :func:`run_metrics` of the checkpoint.

    Returns:
        ``output``.

    Raises:
        FileExistsError: ``output`` is a file, or a non-empty folder without ``overwrite``.
        CheckpointError: the checkpoint cannot be read or fails validation.
        ValueError: an explicit ``metrics`` file cannot be read.
    """
    output = Path(output)
    _check_output(output, overwrite)  # before reading a large checkpoint
    net, meta = load_network(checkpoint)
    metrics_path = Path(metrics) if metrics is not None else run_metrics(checkpoint)
    values = None
    if metrics_path is not None:
        try:
            values = _read_metrics(metrics_path)
        except ValueError:
            if metrics is not None:
                raise
            log.warning("leaving the run's metrics out of the model card", exc_info=True)
    config = pretrained_config(net, meta, Path(checkpoint))
    text = model_card(config, metrics=values, metrics_source=metrics_path, name=output.resolve().name)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(output)
    try:
        temporary.mkdir()
        tensors = {key: value.detach().contiguous() for key, value in net.state_dict().items()}
        weights = save_safetensors(tensors, metadata={"format": "pt", "library": "cxrnet"})
        _write(temporary / WEIGHTS_FILE, weights)
        _write(temporary / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
        _write(temporary / CARD_FILE, text.encode("utf-8"))
        _check_output(output, overwrite)  # another process may have filled it meanwhile
        _commit(temporary, output)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(temporary)
        raise
    log.info("wrote pretrained folder %s (%s) from %s", output, ", ".join(FILES), checkpoint)
    return output


# ----------------------------------------------------------------------------------------- what is read


def _refusal(folder: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"refusing pretrained folder {folder}: {problem}; {HINT}")


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a pretrained folder, parsed, with its format and required keys checked.

    Only the frame: the values are validated by :func:`load_pretrained`. Cheap (no torch work), for callers
    that check a folder before uploading it.

    Raises:
        CheckpointError: the folder or one of its files is missing, ``config.json`` is not JSON, not an
            object, of another format, or lacks one of :data:`REQUIRED_KEYS`; the message names the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"pretrained folder {folder} does not exist or is not a folder; {HINT}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise _refusal(folder, f"it has no {' and no '.join(missing)} (a cxrnet model folder holds {FILES})")
    path = folder / CONFIG_FILE
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise _refusal(folder, f"{path} is {path.stat().st_size} bytes, over {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise _refusal(folder, f"{path} is not UTF-8 text ({error_summary(err)})") from err
    except json.JSONDecodeError as err:
        raise _refusal(
            folder, f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from err
    if not isinstance(config, dict):
        raise _refusal(folder, f"{path} holds a JSON {type(config).__name__}; expected an object")
    if config.get("format") != FORMAT:
        raise _refusal(folder, f"{path} has format {config.get('format')!r}; expected {FORMAT!r}")
    if config.get("format_version") != PRETRAINED_FORMAT_VERSION:
        raise _refusal(
            folder,
            f"{path} has format_version {config.get('format_version')!r}; this cxrnet reads "
            f"{PRETRAINED_FORMAT_VERSION}",
        )
    absent = [key for key in REQUIRED_KEYS if key not in config]
    if absent:
        raise _refusal(folder, f"{path} lacks the key(s) {absent}")
    return config


def load_pretrained(folder: str | os.PathLike[str]) -> tuple[CXRNet, dict[str, Any]]:
    """Rebuild the network of a pretrained folder, in eval mode on the CPU, with its config.

    Returns:
        (network, config) where config is the parsed ``config.json``; it carries the keys of checkpoint
        metadata a predictor uses (``preprocessing``, ``temperature``, ``heads``, ``training_data``).

    Raises:
        CheckpointError: a missing file; a ``config.json`` that is not JSON, of another format, lacks a key
            of :data:`REQUIRED_KEYS` or fails validation (the message names the file and the field); weights
            that cannot be read or do not fit the network the config describes.
    """
    folder = Path(folder)
    config = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    try:
        weights = load_safetensors(weights_path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise _refusal(folder, f"cannot read {weights_path} ({error_summary(err)})") from err
    meta = {**config, "format_version": FORMAT_VERSION}
    # One gate for every loader: the config is checkpoint metadata, and is bounded and checked as such.
    state = {f"net.{key}": value for key, value in weights.items()}
    try:
        validate_checkpoint({"state_dict": state, CHECKPOINT_KEY: meta}, folder)
        net = build_network(meta, weights, weights_path)
    except CheckpointError as err:
        raise reworded_refusal(
            err, folder, f"{folder / CONFIG_FILE}: ", HINT, weights_subject=f"{folder / WEIGHTS_FILE}: "
        ) from err
    return net, config
