"""Encoder weights from a state-dict file: torchxrayvision's DenseNet-121, or a plain smp encoder's.

``model.encoder_weights=<file>`` (:func:`cxrnet.models.create_model`) loads a file written with
``torch.save(model.state_dict(), path)`` into the network's encoders, read with ``torch.load(weights_only=True)``
(tensors only: nothing in the file can run). Two kinds of file:

* **DenseNet-121**, named as torchvision and torchxrayvision name it (``features.conv0.weight``,
  ``features.denseblock1.denselayer1.norm1.weight``, ..., ``features.norm5.*``), which is also how smp's
  ``densenet121`` encoder names its tensors: copied into every ``densenet121`` encoder of the network (encoder
  1 and encoder 2, whichever are). The classifier of the source model (``classifier.*``: xrv's 18
  pathologies, ImageNet's 1000 classes) is not part of an encoder and is reported as unused. A three-channel
  first convolution (torchvision's ImageNet model) is summed over its channels, as smp does for grayscale.
  ``torch.save(xrv.models.DenseNet(weights="densenet121-res224-all").state_dict(), "xrv-densenet121.pt")``
  writes such a file from xrv's downloaded weights (xrv stores whole pickled models, which a safe load
  refuses; its state dict is what this reads).
* **An smp encoder's own state dict** (``torch.save(net.encoder.state_dict(), path)``), for any encoder name:
  copied into the encoders whose tensors it matches by name and shape.

Keys prefixed ``module.`` (DataParallel) or ``model.`` are unwrapped where that makes them fit, and
torchvision's early DenseNet names (``denselayer1.norm.1.weight``) read as today's (``denselayer1.norm1.weight``).
An encoder is only loaded from a file that supplies at least half of its tensors; the rest stay at their
initialisation and are reported as missing.

Pixel convention (``convention``): torchxrayvision trained its models on images in [-1024, 1024]
(``(2x - 1) * 1024`` of the [0, 1] image ``x``); cxrnet feeds ``(x - mean) / std``. With ``convention="xrv"``
(the default) the first convolution is multiplied by ``2048 * std`` so that the encoder computes on cxrnet's
input exactly what it computed on xrv's (``data.mean`` must be 0.5, xrv's mid-grey; the zero padding then
means mid-grey in both). With the defaults (std 0.25) the factor is 512, a power of two, so the scaled weights
are exact. ``convention="cxrnet"`` copies every tensor unchanged (weights trained by cxrnet, torchvision's
ImageNet weights, or fine-tuning that lets the first batch-norm layer adapt).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["CONVENTIONS", "XRV_SPAN", "EncoderWeights", "load_encoder_weights"]

log = logging.getLogger(__name__)

CONVENTIONS = ("xrv", "cxrnet")
"""Pixel conventions the weights may have been trained with (see the module docstring)."""

XRV_SPAN = 2048.0
"""Width of torchxrayvision's pixel range [-1024, 1024]: an xrv input is ``XRV_SPAN * (x - 0.5)``."""

DENSENET121_BLOCKS = (6, 12, 24, 16)
"""Dense layers per block of a DenseNet-121."""

_PREFIXES = ("module.", "model.")
_MIN_SHARE = 0.5
_DENSE_LAYER = re.compile(r"features\.denseblock(\d)\.denselayer(\d+)\.")
_OLD_DENSE_NAME = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


@dataclass
class EncoderWeights:
    """What :func:`load_encoder_weights` did.

    Attributes:
        path: the file.
        kind: ``"densenet121"`` or ``"encoder"`` (a plain smp encoder state dict).
        loaded: network part (``"encoder"``, ``"classifier_encoder"``) → names of the tensors copied.
        missing: network part → names of its tensors the file does not hold (left at their initialisation).
        unused: names of the file's tensors that no encoder took (e.g. ``classifier.weight``).
        adapted: notes on tensors changed on the way (first convolution rescaled or summed to one channel).
    """

    path: str
    kind: str
    loaded: dict[str, list[str]] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the log: what was loaded where, what is missing, unused or adapted."""
        parts = ", ".join(f"{part} ({len(names)} tensors)" for part, names in self.loaded.items())
        lines = [f"encoder weights {self.path} ({self.kind}) loaded into {parts}"]
        for part, names in self.missing.items():
            if names:
                lines.append(f"  {part}: {len(names)} tensors not in the file, left at init: {_few(names)}")
        if self.unused:
            lines.append(f"  unused tensors of the file ({len(self.unused)}): {_few(self.unused)}")
        lines += [f"  {note}" for note in self.adapted]
        return "\n".join(lines)


def load_encoder_weights(
    net: nn.Module,
    path: str | os.PathLike[str],
    *,
    convention: str = "xrv",
    mean: float = 0.5,
    std: float = 0.25,
    parts: Sequence[str] = ("encoder", "classifier_encoder"),
) -> EncoderWeights:
    """Copy a state-dict file into the encoders of ``net`` (see the module docstring).

    Args:
        net: a :class:`~cxrnet.models.CXRNet` (any module with the named ``parts``), changed in place.
        path: the file, written with ``torch.save(state_dict, path)``.
        convention: ``"xrv"`` (the weights expect xrv's [-1024, 1024] input: the first convolution is
            rescaled for cxrnet's) or ``"cxrnet"`` (copied unchanged).
        mean, std: the normalisation cxrnet applies to the [0, 1] image (``data.mean``, ``data.std``).
        parts: the network's encoders to consider.

    Returns:
        :class:`EncoderWeights`, also logged.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a tensor state dict, is neither a DenseNet-121 nor a state dict of one of
            the network's encoders, fits none of them, or ``convention="xrv"`` with ``mean`` other than 0.5;
            each message names the file and says what to do.
    """
    if convention not in CONVENTIONS:
        raise ValueError(
            f"model.encoder_weights_input={convention!r} is not valid; choose one of: {', '.join(CONVENTIONS)}"
        )
    path = Path(path).expanduser()
    state = _read_state_dict(path)
    encoders = {name: getattr(net, name) for name in parts if isinstance(getattr(net, name, None), nn.Module)}
    spellings = _spellings(state)
    problems = [densenet121_problem(spelt) for _, spelt in spellings]
    kind = "densenet121" if None in problems else "encoder"
    chosen: dict[str, tuple[dict[str, torch.Tensor], str, dict[str, torch.Tensor]]] = {}
    for name, encoder in encoders.items():
        own = encoder.state_dict()
        if kind == "densenet121" and densenet121_problem(own, channels=False) is not None:
            continue
        # the spelling (prefix unwrapped or not) under which most of the file fits this encoder
        prefix, spelt = max(
            spellings, key=lambda s: sum(k in own and _fits(t, own[k]) for k, t in s[1].items())
        )
        matched = sum(k in own and _fits(t, own[k]) for k, t in spelt.items())
        if matched >= _MIN_SHARE * len(own):
            chosen[name] = (own, prefix, spelt)
    if not chosen:
        raise ValueError(_refusal(path, state, kind, problems[-1], encoders, net))
    first_conv = {name: _first_conv(encoders[name]) for name in chosen}
    if convention == "xrv" and mean != 0.5:
        raise ValueError(
            f"model.encoder_weights={path}: weights trained on torchxrayvision's input expect mid-grey at 0, "
            f"which cxrnet's normalisation gives only with data.mean=0.5 (it is {mean}); set data.mean=0.5, "
            "or model.encoder_weights_input=cxrnet to copy the weights unchanged"
        )
    report = EncoderWeights(str(path), kind)
    used: set[str] = set()
    for name, (own, prefix, spelt) in chosen.items():
        update: dict[str, torch.Tensor] = {}
        for key, target in own.items():
            if key not in spelt or not _fits(spelt[key], target):
                continue
            tensor = spelt[key].to(target.dtype)
            if tensor.shape != target.shape:  # a 3-channel first convolution, for a 1-channel encoder
                tensor = tensor.sum(dim=1, keepdim=True)
                report.adapted.append(f"{name}.{key}: summed over its {spelt[key].shape[1]} input channels")
            if key == first_conv[name] and convention == "xrv":
                tensor = tensor * (XRV_SPAN * std)
                report.adapted.append(
                    f"{name}.{key}: x {XRV_SPAN * std:g} = 2048 x data.std, for xrv's [-1024, 1024] input"
                )
            update[key] = tensor
        # nn.Module's own: smp's encoders override load_state_dict for their ImageNet files
        nn.Module.load_state_dict(encoders[name], {**own, **update}, strict=True)
        used |= {prefix + key for key in update}
        report.loaded[name] = sorted(update)
        report.missing[name] = sorted(set(own) - set(update))
    report.unused = sorted(set(state) - used)
    log.info("%s", report.summary())
    if any(report.missing.values()):
        log.warning("model.encoder_weights: some encoder tensors were not in %s:\n%s", path, report.summary())
    return report


def densenet121_problem(state: Mapping[str, torch.Tensor], channels: bool = True) -> str | None:
    """Why ``state`` is not a DenseNet-121 state dict (torchvision / xrv / smp naming), or ``None`` if it is.

    Args:
        state: tensor name → tensor.
        channels: also require the first convolution to take 1 or 3 channels.
    """
    conv0, norm5 = state.get("features.conv0.weight"), state.get("features.norm5.weight")
    if conv0 is None or norm5 is None:
        return "no features.conv0.weight or features.norm5.weight"
    if conv0.ndim != 4 or conv0.shape[0] != 64 or (channels and conv0.shape[1] not in (1, 3)):
        return f"features.conv0.weight is {tuple(conv0.shape)}, not (64, 1 or 3, 7, 7)"
    if tuple(norm5.shape) != (1024,):
        return f"features.norm5.weight is {tuple(norm5.shape)}, not (1024,)"
    layers: dict[int, set[int]] = {}
    for key in state:
        match = _DENSE_LAYER.match(key)
        if match:
            layers.setdefault(int(match[1]), set()).add(int(match[2]))
    blocks = tuple(len(layers.get(b, ())) for b in range(1, 5))
    if blocks != DENSENET121_BLOCKS:
        return f"dense blocks of {blocks} layers, not DenseNet-121's {DENSENET121_BLOCKS}"
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"model.encoder_weights: {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        raise ValueError(
            f"model.encoder_weights: cannot read {path} as a state dict with torch.load(weights_only=True) "
            f"({str(err).splitlines()[0][:200]}). Save the weights alone: torch.save(model.state_dict(), path); "
            "a torchxrayvision model file is a whole pickled model, converted with "
            "torch.save(xrv.models.DenseNet(weights=<name>).state_dict(), path)"
        ) from err
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        raise ValueError(
            f"model.encoder_weights: {path} is a training checkpoint, not a state dict; start a network from a "
            "cxrnet checkpoint with init_from=<file>, or save the encoder alone: "
            "torch.save(net.encoder.state_dict(), path)"
        )
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(
            f"model.encoder_weights: {path} holds a {type(loaded).__name__}, not a state dict (a mapping of "
            "tensor names to tensors, torch.save(model.state_dict(), path))"
        )
    odd = next(
        (k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None
    )
    if odd is not None:
        raise ValueError(
            f"model.encoder_weights: {path} is not a state dict: its entry {odd!r} holds a "
            f"{type(loaded[odd]).__name__}, not a tensor"
        )
    # torchvision's early DenseNet files name "denselayer1.norm.1.weight" what is now "denselayer1.norm1.weight"
    return {_OLD_DENSE_NAME.sub(r"\1\2", key): value for key, value in loaded.items()}


def _spellings(state: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The file's names as written, and with each wrapper prefix that all of them share removed in turn
    (``module.model.x`` also as ``model.x`` and ``x``); each with the prefix removed."""
    found = [("", state)]
    prefix, current = "", state
    while True:
        shared = next((p for p in _PREFIXES if all(key.startswith(p) for key in current)), None)
        if shared is None:
            return found
        prefix, current = prefix + shared, {key[len(shared) :]: value for key, value in current.items()}
        found.append((prefix, current))


def _fits(source: torch.Tensor, target: torch.Tensor) -> bool:
    """Same shape, or a 3-channel first convolution for a 1-channel one (summed on loading)."""
    if source.shape == target.shape:
        return True
    return (
        source.ndim == 4
        and target.ndim == 4
        and target.shape[1] == 1
        and source.shape[1] == 3
        and (source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:])
    )


def _first_conv(encoder: nn.Module) -> str | None:
    """State-dict name of the weight of the encoder's first convolution (the one that sees the pixels)."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None


def _refusal(
    path: Path,
    state: Mapping[str, torch.Tensor],
    kind: str,
    problem: str | None,
    encoders: Mapping[str, nn.Module],
    net: nn.Module,
) -> str:
    config = getattr(net, "config", {})
    names = {
        "encoder": config.get("encoder", "?"),
        "classifier_encoder": config.get("classifier_encoder") or config.get("encoder", "?"),
    }
    ours = ", ".join(f"model.{part}={names.get(part, '?')}" for part in encoders)
    if kind == "densenet121":
        return (
            f"model.encoder_weights: {path} holds DenseNet-121 weights, but no encoder of this network is a "
            f"densenet121 ({ours}); set model.encoder=densenet121 and/or model.classifier_encoder=densenet121"
        )
    return (
        f"model.encoder_weights: {path} is not a DenseNet-121 state dict ({problem}) and holds too few of the "
        f"tensors of this network's encoders ({ours}) to be one of theirs (at least half must match by name "
        f"and shape); it has {len(state)} tensors such as {_few(sorted(state), 3)}"
    )


def _few(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")
