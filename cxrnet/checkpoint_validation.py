"""Validation of checkpoint content: a checkpoint is a file people download, so it is untrusted input.

:func:`validate_checkpoint` is the one gate every cxrnet loader goes through
(:func:`cxrnet.checkpoint.read_checkpoint` calls it, after :func:`check_pickle_stream`): whatever a loader
later uses is checked here, once, before a network is built or a number is computed from it, and anything
out of bounds is a :class:`CheckpointError` naming the file, the field and how to get a usable file:

- before ``torch.load`` runs, its pickle stream is read without building anything
  (:func:`cxrnet.checkpoint_streams.check_pickle_stream`);
- the metadata (``checkpoint["cxrnet"]``) holds JSON-like values only, without cycles, at most
  :data:`MAX_METADATA_DEPTH` deep and :data:`MAX_METADATA_VALUES` values expanded (pickle can share one list
  many times: a few hundred bytes can hold a "billion laughs");
- the stored training config is bounded YAML (:func:`cxrnet.checkpoint_streams.parse_stored_config`);
- ``model``: known settings, known encoder and decoder names, decoder widths in
  :data:`DECODER_CHANNELS_RANGE`, 2 to 1000 unique class names, finite positive severity scales;
- one source of truth for names: top-level ``classes`` and ``severity_targets`` equal the model's, and the
  classifier's weights have one output per class;
- ``preprocessing.image_size`` a multiple of 32 in :data:`IMAGE_SIZE_RANGE`, finite ``mean`` and ``std``;
  ``temperature`` finite in :data:`TEMPERATURE_RANGE`;
- the training records (``heads``, ``training_data``) hold counts, names and hashes of the expected types;
- the weights are finite real tensors.

Whether the weights fit the network they describe (names, shapes, no tensor repeating a tiny storage) needs
the network: :func:`cxrnet.checkpoint.load_network` checks it on a network built on the ``meta`` device.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

import torch

from cxrnet.checkpoint_streams import (
    CHECKPOINT_KEY,
    FORMAT_VERSION,
    MAX_METADATA_DEPTH,
    CheckpointError,
    error_summary,
    parse_stored_config,
    refusal,
)
from cxrnet.data.transforms import Preprocessing
from cxrnet.models.cxrnet import CXRNet
from cxrnet.models.encoders import check_decoder_name, check_encoder_name

IMAGE_SIZE_RANGE = (32, 4096)
"""Smallest and largest ``preprocessing.image_size`` (pixels, a multiple of :data:`IMAGE_SIZE_MULTIPLE`)."""

IMAGE_SIZE_MULTIPLE = 32
"""The encoders' output stride: the input side must divide by it."""

DECODER_CHANNELS_RANGE = (1, 4096)
"""Smallest and largest width of one decoder block (``model.decoder_channels``)."""

MAX_DECODER_BLOCKS = 8
"""Most entries ``model.decoder_channels`` may have (smp's U-Nets use one per encoder stage, 5)."""

CLASS_COUNT_RANGE = (2, 1000)
"""Fewest and most class names."""

MAX_SEVERITY_TARGETS = 100
"""Most severity targets (and severity scales) a model may name."""

MAX_NAME_CHARS = 256
"""Longest class or severity-target name (they become CSV columns and file names)."""

TEMPERATURE_RANGE = (1e-3, 1e3)
"""Allowed softmax temperature; ``python -m cxrnet.calibrate`` fits one in [0.01, 100]."""

MEAN_RANGE = (-1e3, 1e3)
"""Allowed ``preprocessing.mean`` (subtracted from the [0, 1] image)."""

STD_RANGE = (1e-3, 1e3)
"""Allowed ``preprocessing.std``; a tinier one turns every input into infinities."""

MAX_METADATA_VALUES = 5_000_000
"""Most values the metadata may hold, counting a shared part each time it is reached (as a reader walking it,
or writing it as JSON, would); a training fingerprint of 100,000 items holds about 200,000."""

_MODEL_KEYS = frozenset(inspect.signature(CXRNet.__init__).parameters) - {"self"}
_PREPROCESSING_KEYS = frozenset(field.name for field in dataclasses.fields(Preprocessing))
_GATE_FILLS = ("zero", "blur")
_CLASSIFIER = ("net.classification_head.fc.weight", "net.classification_head.fc.bias")
_SEVERITY_SCALES = "net.severity_head.scales"
_HEX_DIGITS = frozenset("0123456789abcdef")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(path: Path, field: str, value: Any, low: int, high: int, multiple: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high or value % multiple:
        every = f", a multiple of {multiple}," if multiple > 1 else ""
        raise refusal(path, field, f"is {_show(value)}; expected a whole number{every} in [{low}, {high}]")
    return value


def _real(path: Path, field: str, value: Any, low: float, high: float) -> float:
    # An int is always finite, and math.isfinite cannot take one beyond float range (10**400).
    finite = _is_number(value) and (isinstance(value, int) or math.isfinite(value))
    if not finite or not low <= value <= high:
        raise refusal(path, field, f"is {_show(value)}; expected a finite number in [{low:g}, {high:g}]")
    return float(value)


def _names(path: Path, field: str, value: Any, low: int, high: int) -> list[str]:
    """A list of ``low``..``high`` unique, non-empty, printable names of at most :data:`MAX_NAME_CHARS`."""
    if not isinstance(value, (list, tuple)):
        raise refusal(path, field, f"is {_show(value)}; expected a list of names")
    if not low <= len(value) <= high:
        raise refusal(path, field, f"holds {len(value)} name(s); expected {low} to {high}")
    for name in value:
        if (
            not isinstance(name, str)
            or not name.strip()
            or len(name) > MAX_NAME_CHARS
            or not name.isprintable()
        ):
            raise refusal(
                path,
                field,
                f"holds {_show(name)}; expected non-empty printable names of at most {MAX_NAME_CHARS} "
                "characters",
            )
    if len(set(value)) != len(value):
        repeated = sorted({name for name in value if value.count(name) > 1})
        raise refusal(path, field, f"names {repeated} more than once; each output needs its own name")
    return list(value)


def _mapping(path: Path, field: str, value: Any, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise refusal(path, field, f"is {_show(value)}; expected a mapping")
    return value


def _check_structure(path: Path, meta: dict[str, Any]) -> None:
    """Refuse metadata that is not JSON-like, is cyclic, too deep, or expands to too many values.

    Pickle can share one container many times (its memo), so a few hundred bytes can hold a list that, walked
    or written out, has billions of entries. Sizes are memoised per container, so the walk itself stays
    proportional to the file, and it stops as soon as the expanded count passes the limit.
    """
    sizes: dict[int, int] = {}
    walking: set[int] = set()

    def walk(value: dict[str, Any] | list[Any] | tuple[Any, ...], field: str, depth: int) -> int:
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in walking:
            raise refusal(path, field, "contains itself (a cyclic structure)")
        if depth > MAX_METADATA_DEPTH:
            raise refusal(path, field, f"is nested more than {MAX_METADATA_DEPTH} levels deep")
        walking.add(key)
        total = 1
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for name, child in pairs:
            if isinstance(value, dict) and not isinstance(name, str):
                raise refusal(path, field, f"has the key {_show(name)}; metadata keys are strings")
            if isinstance(child, (dict, list, tuple)):
                inner = f"{field}.{name}" if isinstance(value, dict) else f"{field}[{name}]"
                total += walk(child, inner, depth + 1)
            elif child is None or isinstance(child, (str, int, float)):  # bool is an int
                total += 1
            else:
                raise refusal(
                    path,
                    f"{field}.{name}" if isinstance(value, dict) else f"{field}[{name}]",
                    f"is a {type(child).__name__}; checkpoint metadata holds only JSON-like values",
                )
            if total > MAX_METADATA_VALUES:
                raise refusal(
                    path,
                    field,
                    f"expands to more than {MAX_METADATA_VALUES} values (shared parts counted each time they "
                    "are reached): a 'billion laughs' structure, or far more than cxrnet writes",
                )
        walking.discard(key)
        sizes[key] = total
        return total

    walk(meta, CHECKPOINT_KEY, 0)


def stored_config(meta: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The training config stored in validated checkpoint metadata, parsed (``{}`` when there is none)."""
    config = meta.get("config")
    if isinstance(config, str):
        return parse_stored_config(config, path)
    return dict(config) if isinstance(config, dict) else {}


def _check_model(path: Path, model: Any) -> dict[str, Any]:
    field = f"{CHECKPOINT_KEY}.model"
    model = _mapping(path, field, model, optional=False)
    unknown = sorted(set(model) - _MODEL_KEYS)
    if unknown:
        raise refusal(path, field, f"has unknown settings {unknown}; valid: {sorted(_MODEL_KEYS)}")
    _names(path, f"{field}.classes", model.get("classes"), *CLASS_COUNT_RANGE)
    for key in ("encoder", "classifier_encoder", "decoder"):
        name = model.get(key, "resnet18" if key == "encoder" else "unet" if key == "decoder" else None)
        if name is None and key == "classifier_encoder":
            continue
        if not isinstance(name, str):
            raise refusal(path, f"{field}.{key}", f"is {_show(name)}; expected a name")
        try:
            (check_decoder_name if key == "decoder" else check_encoder_name)(name)
        except ValueError as err:
            raise refusal(path, f"{field}.{key}", f"is unknown ({error_summary(err)})") from err
    channels = model.get("decoder_channels")
    if channels is not None:
        if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= MAX_DECODER_BLOCKS:
            raise refusal(
                path,
                f"{field}.decoder_channels",
                f"is {_show(channels)}; expected a list of 1 to {MAX_DECODER_BLOCKS} widths",
            )
        for i, width in enumerate(channels):
            _whole(path, f"{field}.decoder_channels[{i}]", width, *DECODER_CHANNELS_RANGE)
    targets = _names(
        path, f"{field}.severity_targets", model.get("severity_targets", []), 0, MAX_SEVERITY_TARGETS
    )
    scales = _mapping(path, f"{field}.severity_scales", model.get("severity_scales"))
    if len(scales) > MAX_SEVERITY_TARGETS:
        raise refusal(
            path, f"{field}.severity_scales", f"names {len(scales)} scales; at most {MAX_SEVERITY_TARGETS}"
        )
    for name, scale in scales.items():
        _real(path, f"{field}.severity_scales.{name}", scale, 1e-6, 1e6)
    for key in ("pretrained", "gate_with_lungs"):
        if not isinstance(model.get(key, False), bool):
            raise refusal(path, f"{field}.{key}", f"is {_show(model[key])}; expected true or false")
    if model.get("gate_fill", "zero") not in _GATE_FILLS:
        raise refusal(
            path, f"{field}.gate_fill", f"is {_show(model['gate_fill'])}; expected one of {_GATE_FILLS}"
        )
    _real(path, f"{field}.lung_dilation", model.get("lung_dilation", 0.0), 0.0, 1.0)
    _real(path, f"{field}.explanation_smoothing", model.get("explanation_smoothing", 0.0), 0.0, 0.5)
    _real(path, f"{field}.dropout", model.get("dropout", 0.0), 0.0, 1.0)
    return {"classes": list(model["classes"]), "severity_targets": targets, "severity_scales": scales}


def _check_preprocessing(path: Path, value: Any) -> None:
    field = f"{CHECKPOINT_KEY}.preprocessing"
    preprocessing = _mapping(path, field, value, optional=False)
    if set(preprocessing) != _PREPROCESSING_KEYS:
        raise refusal(
            path, field, f"has the keys {sorted(preprocessing)}; expected {sorted(_PREPROCESSING_KEYS)}"
        )
    _whole(path, f"{field}.image_size", preprocessing["image_size"], *IMAGE_SIZE_RANGE, IMAGE_SIZE_MULTIPLE)
    _real(path, f"{field}.mean", preprocessing["mean"], *MEAN_RANGE)
    _real(path, f"{field}.std", preprocessing["std"], *STD_RANGE)


def _check_count(path: Path, field: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise refusal(path, field, f"is {_show(value)}; expected a count (a whole number >= 0)")


def _check_sources(path: Path, field: str, value: Any) -> None:
    for name, count in _mapping(path, field, value).items():
        _check_count(path, f"{field}.{name}", count)


def _check_head(path: Path, field: str, head: Any) -> None:
    head = _mapping(path, field, head)
    for key in ("n", "n_empty"):
        _check_count(path, f"{field}.{key}", head.get(key))
    if head.get("loss_weight") is not None:
        _real(path, f"{field}.loss_weight", head["loss_weight"], 0.0, 1e6)
    _check_sources(path, f"{field}.sources", head.get("sources"))
    _check_sources(path, f"{field}.classes", head.get("classes"))  # items per class, of the classifier


def _check_records(path: Path, meta: dict[str, Any]) -> None:
    """The training records loaders read: ``heads`` (:mod:`cxrnet.provenance`) and ``training_data``."""
    field = f"{CHECKPOINT_KEY}.heads"
    heads = _mapping(path, field, meta.get("heads"))
    _check_count(path, f"{field}.n_items", heads.get("n_items"))
    _check_sources(path, f"{field}.sources", heads.get("sources"))
    for name in ("lung", "infection", "cls"):
        _check_head(path, f"{field}.{name}", heads.get(name))
    for name, head in _mapping(path, f"{field}.severity", heads.get("severity")).items():
        _check_head(path, f"{field}.severity.{name}", head)
    field = f"{CHECKPOINT_KEY}.training_data"
    data = _mapping(path, field, meta.get("training_data"))
    _check_count(path, f"{field}.n_items", data.get("n_items"))
    if not isinstance(data.get("hash", ""), str):
        raise refusal(path, f"{field}.hash", f"is {_show(data['hash'])}; expected the hash kind's name")
    for key in ("patient_ids", "source", "image_hashes"):
        values = data.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise refusal(path, f"{field}.{key}", "is not a list of strings")
    if not all(len(h) == 64 and set(h) <= _HEX_DIGITS for h in data.get("image_hashes", [])):
        raise refusal(path, f"{field}.image_hashes", "holds a value that is not 64 lower-case hex digits")


def _check_weights(path: Path, state: Any, names: dict[str, Any]) -> None:
    """The weights: finite real tensors, a classifier with one output per class, severity scales as stated."""
    if not isinstance(state, dict):
        raise refusal(path, "state_dict", f"is {_show(state)}; expected the network's weights by name")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise refusal(
                path, f"state_dict[{_show(key)}]", f"is a {type(value).__name__}; expected a tensor"
            )
        if value.layout != torch.strided or value.is_complex() or value.is_quantized:
            raise refusal(
                path,
                f"state_dict[{key!r}]",
                f"is a {value.layout} {value.dtype} tensor; expected real dense weights",
            )
        if key.startswith("net.") and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise refusal(
                path,
                f"state_dict[{key!r}]",
                "holds NaN or infinite values",
                "the network's weights are broken (a training run that diverged, or a damaged file): use an "
                "earlier checkpoint of the run, or retrain with a lower learning rate",
            )
    classes = names["classes"]
    for key in _CLASSIFIER:
        weight = state.get(key)
        if weight is not None and (weight.ndim < 1 or weight.shape[0] != len(classes)):
            raise refusal(
                path,
                f"state_dict[{key!r}]",
                f"has {weight.shape[0] if weight.ndim else 0} outputs but classes names {len(classes)} "
                f"({classes}): the logits would be named wrongly",
            )
    scales = state.get(_SEVERITY_SCALES)
    if scales is not None:
        stated = [float(names["severity_scales"].get(t, 1.0)) for t in names["severity_targets"]]
        if scales.shape != (len(stated),) or not torch.allclose(
            scales.float(), torch.tensor(stated), rtol=1e-5
        ):
            raise refusal(
                path,
                f"state_dict[{_SEVERITY_SCALES!r}]",
                f"is {scales.tolist()[:MAX_SEVERITY_TARGETS]} but model.severity_scales gives {stated} for "
                f"{names['severity_targets']}: the severity scores would be scaled differently than stated",
            )


def validate_checkpoint(checkpoint: Any, path: str | Path) -> dict[str, Any]:
    """Check everything a loader uses in a loaded checkpoint; the one gate every cxrnet loader goes through.

    Checked, in order: the checkpoint has cxrnet metadata and weights; the metadata is JSON-like and bounded
    (:func:`_check_structure`); its format version; ``model`` (known settings, names and bounds);
    ``classes`` and ``severity_targets`` equal to the model's; ``preprocessing``; ``temperature``; the stored
    ``config`` (:func:`parse_stored_config`); ``heads`` and ``training_data``; and the weights (tensors,
    finite, classifier outputs matching the classes, severity scales matching the stated ones). Whether the
    weights fit the network is checked by :func:`load_network`, which builds it.

    Args:
        checkpoint: what ``torch.load`` returned.
        path: the file, for messages.

    Returns:
        ``checkpoint``, unchanged.

    Raises:
        CheckpointError: naming the file and the first field that fails, and how to get a usable file.
    """
    path = Path(path)
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a cxrnet checkpoint (no '{CHECKPOINT_KEY}' metadata); train one with "
            "python -m cxrnet.train, or use checkpoints/best.ckpt from a training run"
        )
    meta = _mapping(path, CHECKPOINT_KEY, checkpoint[CHECKPOINT_KEY], optional=False)
    _check_structure(path, meta)
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(
            f"{path} has checkpoint format {_show(version)}; this cxrnet reads format {FORMAT_VERSION}"
        )
    names = _check_model(path, meta.get("model"))
    for key in ("classes", "severity_targets"):
        stated = meta.get(key, names[key] if key == "severity_targets" else None)
        if stated != names[key]:
            raise refusal(
                path,
                f"{CHECKPOINT_KEY}.{key}",
                f"is {_show(stated)} but {CHECKPOINT_KEY}.model.{key} is {_show(names[key])}: one output "
                "would be named differently by predict and by an exported model",
            )
    _check_preprocessing(path, meta.get("preprocessing"))
    if meta.get("temperature") is not None:
        _real(path, f"{CHECKPOINT_KEY}.temperature", meta["temperature"], *TEMPERATURE_RANGE)
    config = meta.get("config")
    if isinstance(config, str):
        parse_stored_config(config, path)
    elif config is not None and not isinstance(config, dict):
        raise refusal(path, f"{CHECKPOINT_KEY}.config", f"is {_show(config)}; expected YAML text")
    _check_records(path, meta)
    _check_weights(path, checkpoint["state_dict"], names)
    return checkpoint
