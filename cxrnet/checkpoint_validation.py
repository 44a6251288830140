"""Validation of checkpoint content: a checkpoint is a file people download, so it is untrusted input.

:func:`validate_checkpoint` is the one gate every cxrnet loader goes through
(:func:`cxrnet.checkpoint.read_checkpoint` calls it, after :func:`check_pickle_stream`): whatever a loader
later uses is checked here, once, before a network is built or a number is computed from it, and anything
out of bounds is a :class:`CheckpointError` naming the file, the field and how to get a usable file:

- before ``torch.load`` runs, its pickle stream is read without building anything
  (:func:`check_pickle_stream`): a dictionary key made of tuples that share themselves would make unpickling
  hash forever (a 1 kB file); ``weights_only`` stops code from running, not this;
- the metadata (``checkpoint["cxrnet"]``) holds JSON-like values only, without cycles, at most
  :data:`MAX_METADATA_DEPTH` deep and :data:`MAX_METADATA_VALUES` values expanded (pickle can share one list
  many times: a few hundred bytes can hold a "billion laughs");
- the stored training config is YAML of at most :data:`MAX_CONFIG_BYTES`, without anchors or aliases, read by
  a safe loader (:func:`parse_stored_config`);
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
import pickletools
from pathlib import Path
from typing import Any

import torch
import yaml

from cxrnet.data.transforms import Preprocessing
from cxrnet.models.cxrnet import CXRNet
from cxrnet.models.encoders import check_decoder_name, check_encoder_name

CHECKPOINT_KEY = "cxrnet"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable cxrnet checkpoint; the message names the file and the reason."""


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

MAX_CONFIG_BYTES = 1 << 20
"""Largest stored training config (YAML text); cxrnet writes a few kB."""

MAX_METADATA_VALUES = 5_000_000
"""Most values the metadata may hold, counting a shared part each time it is reached (as a reader walking it,
or writing it as JSON, would); a training fingerprint of 100,000 items holds about 200,000."""

MAX_METADATA_DEPTH = 32
"""Deepest nesting of containers in the metadata (and in the stored YAML config); cxrnet writes 5."""

#: How to get a usable file, appended to every refusal of a checkpoint's content.
UNTRUSTED_HINT = (
    "the file was not written by cxrnet or was altered since: use a checkpoint written by python -m "
    "cxrnet.train or python -m cxrnet.calibrate, from a source you trust"
)
_MODEL_KEYS = frozenset(inspect.signature(CXRNet.__init__).parameters) - {"self"}
_PREPROCESSING_KEYS = frozenset(field.name for field in dataclasses.fields(Preprocessing))
_GATE_FILLS = ("zero", "blur")
_CLASSIFIER = ("net.classification_head.fc.weight", "net.classification_head.fc.bias")
_SEVERITY_SCALES = "net.severity_head.scales"
_HEX_DIGITS = frozenset("0123456789abcdef")


def error_summary(err: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _refuse(path: Path, field: str, problem: str, fix: str = UNTRUSTED_HINT) -> CheckpointError:
    return CheckpointError(f"refusing checkpoint {path}: {field} {problem}; {fix}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(path: Path, field: str, value: Any, low: int, high: int, multiple: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high or value % multiple:
        every = f", a multiple of {multiple}," if multiple > 1 else ""
        raise _refuse(path, field, f"is {_show(value)}; expected a whole number{every} in [{low}, {high}]")
    return value


def _real(path: Path, field: str, value: Any, low: float, high: float) -> float:
    # An int is always finite, and math.isfinite cannot take one beyond float range (10**400).
    finite = _is_number(value) and (isinstance(value, int) or math.isfinite(value))
    if not finite or not low <= value <= high:
        raise _refuse(path, field, f"is {_show(value)}; expected a finite number in [{low:g}, {high:g}]")
    return float(value)


def _names(path: Path, field: str, value: Any, low: int, high: int) -> list[str]:
    """A list of ``low``..``high`` unique, non-empty, printable names of at most :data:`MAX_NAME_CHARS`."""
    if not isinstance(value, (list, tuple)):
        raise _refuse(path, field, f"is {_show(value)}; expected a list of names")
    if not low <= len(value) <= high:
        raise _refuse(path, field, f"holds {len(value)} name(s); expected {low} to {high}")
    for name in value:
        if (
            not isinstance(name, str)
            or not name.strip()
            or len(name) > MAX_NAME_CHARS
            or not name.isprintable()
        ):
            raise _refuse(
                path,
                field,
                f"holds {_show(name)}; expected non-empty printable names of at most {MAX_NAME_CHARS} "
                "characters",
            )
    if len(set(value)) != len(value):
        repeated = sorted({name for name in value if value.count(name) > 1})
        raise _refuse(path, field, f"names {repeated} more than once; each output needs its own name")
    return list(value)


def _mapping(path: Path, field: str, value: Any, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise _refuse(path, field, f"is {_show(value)}; expected a mapping")
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
            raise _refuse(path, field, "contains itself (a cyclic structure)")
        if depth > MAX_METADATA_DEPTH:
            raise _refuse(path, field, f"is nested more than {MAX_METADATA_DEPTH} levels deep")
        walking.add(key)
        total = 1
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for name, child in pairs:
            if isinstance(value, dict) and not isinstance(name, str):
                raise _refuse(path, field, f"has the key {_show(name)}; metadata keys are strings")
            if isinstance(child, (dict, list, tuple)):
                inner = f"{field}.{name}" if isinstance(value, dict) else f"{field}[{name}]"
                total += walk(child, inner, depth + 1)
            elif child is None or isinstance(child, (str, int, float)):  # bool is an int
                total += 1
            else:
                raise _refuse(
                    path,
                    f"{field}.{name}" if isinstance(value, dict) else f"{field}[{name}]",
                    f"is a {type(child).__name__}; checkpoint metadata holds only JSON-like values",
                )
            if total > MAX_METADATA_VALUES:
                raise _refuse(
                    path,
                    field,
                    f"expands to more than {MAX_METADATA_VALUES} values (shared parts counted each time they "
                    "are reached): a 'billion laughs' structure, or far more than cxrnet writes",
                )
        walking.discard(key)
        sizes[key] = total
        return total

    walk(meta, CHECKPOINT_KEY, 0)


MAX_KEY_VALUES = 10_000
"""Most values a dictionary key in the checkpoint's pickle may hold (cxrnet and Lightning write string and
integer keys: 1 value each)."""

_PUSH_ONE = frozenset(
    [
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "FLOAT",
        "BINFLOAT",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "BYTEARRAY8",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
        "EMPTY_LIST",
        "EMPTY_DICT",
        "EMPTY_SET",
        "GLOBAL",
        "PERSID",
        "EXT1",
        "EXT2",
        "EXT4",
        "NEXT_BUFFER",
    ]
)
_REPLACE = {"STACK_GLOBAL": 2, "BINPERSID": 1, "REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3, "READONLY_BUFFER": 1}
_POP = {"APPEND": 1, "BUILD": 1, "POP": 1}


def check_pickle_stream(data: bytes, path: str | Path = "checkpoint") -> None:
    """Refuse a pickle whose dictionary keys are tuples that share themselves into an exponential hash.

    Unpickling hashes every dictionary key, and hashing a tuple hashes all it contains, again for each
    reference: 60 tuples of two references to the previous one make a 1 kB file whose loading, inside
    ``torch.load``, never ends (``weights_only`` allows tuples). The opcodes are read without building
    anything, each stack entry weighed by the values a hash of it visits; a key heavier than
    :data:`MAX_KEY_VALUES` is refused. A stream this reading cannot follow is left to ``torch.load``.

    Args:
        data: the pickle stream (``data.pkl`` of a torch zip archive).
        path: the checkpoint, for messages.

    Raises:
        CheckpointError: a dictionary key (or frozenset element) would visit more than
            :data:`MAX_KEY_VALUES` values when hashed.
    """
    stack: list[int] = []
    marks: list[int] = []  # stack heights at each open MARK, as the unpickler keeps them
    memo: dict[int, int] = {}

    def to_mark() -> list[int]:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    def check_keys(keys: list[int]) -> None:
        heaviest = max(keys, default=0)
        if heaviest > MAX_KEY_VALUES:
            raise _refuse(
                Path(path),
                "the pickle stream",
                f"has a dictionary key of over {MAX_KEY_VALUES} values ({heaviest}, shared tuples that a "
                "hash visits again for every reference): loading it would never end",
            )

    try:
        for opcode, argument, _ in pickletools.genops(data):
            name = opcode.name
            if name in _PUSH_ONE:
                stack.append(1)
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "EMPTY_TUPLE":
                stack.append(1)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                size = int(name[-1])
                items = stack[-size:]
                del stack[-size:]
                stack.append(min(1 + sum(items), 2**62))
            elif name == "TUPLE":
                stack.append(min(1 + sum(to_mark()), 2**62))
            elif name in ("LIST", "DICT", "OBJ", "INST"):
                items = to_mark()
                if name == "DICT":
                    check_keys(items[0::2])
                stack.append(1)
            elif name in ("APPENDS", "POP_MARK", "ADDITEMS"):
                items = to_mark()
                if name == "ADDITEMS":
                    check_keys(items)
            elif name == "SETITEM":
                check_keys([stack[-2]])
                del stack[-2:]
            elif name == "SETITEMS":
                check_keys(to_mark()[0::2])
            elif name == "FROZENSET":
                check_keys(to_mark())
                stack.append(1)
            elif name in _REPLACE:
                del stack[-_REPLACE[name] :]
                stack.append(1)
            elif name in _POP:
                del stack[-_POP[name] :]
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(argument)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[int(argument)])
            elif name == "STOP":
                return
            elif name not in ("PROTO", "FRAME"):
                return  # an opcode not followed here: torch.load decides
    except CheckpointError:
        raise
    except Exception:  # a malformed stream (underflow, unknown memo, bad opcode): torch.load refuses it
        return


def parse_stored_config(text: str, path: str | Path = "checkpoint") -> dict[str, Any]:
    """Parse the training config a checkpoint stores as YAML text, safely and with bounds.

    cxrnet writes it with ``OmegaConf.to_yaml``: plain YAML of a few kB, without anchors or aliases. A YAML
    alias repeats a node without copying it, so a 560-byte text can expand to billions of nodes once
    converted (a "billion laughs"); aliases, anchors, tags beyond YAML's safe ones, nesting deeper than
    :data:`MAX_METADATA_DEPTH` and texts above :data:`MAX_CONFIG_BYTES` are refused before anything is built.
    Interpolations (``${...}``) are kept as text, never resolved.

    Args:
        text: the stored YAML.
        path: the checkpoint, for messages.

    Returns:
        The config as plain dicts and lists (``{}`` for an empty text).

    Raises:
        CheckpointError: the text is too large, not valid YAML, uses aliases or anchors, is nested too deeply,
            or is not a mapping.
    """
    path, field = Path(path), f"{CHECKPOINT_KEY}.config"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise _refuse(path, field, f"is {size} bytes of YAML; at most {MAX_CONFIG_BYTES} are read")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    try:
        # Events are checked before any node is composed: an alias is refused before it can expand.
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise _refuse(
                    path,
                    field,
                    "uses YAML anchors or aliases (&name / *name), which cxrnet never writes and which can "
                    "expand a few hundred bytes into billions of nodes ('billion laughs')",
                )
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_METADATA_DEPTH:
                    raise _refuse(path, field, f"is nested more than {MAX_METADATA_DEPTH} levels deep")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        config = yaml.load(text, Loader=loader)
    except CheckpointError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as err:  # ValueError: a 5000-digit integer
        raise _refuse(path, field, f"is not valid YAML ({error_summary(err)})") from err
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _refuse(path, field, f"is YAML of a {type(config).__name__}; expected a mapping of options")
    return config


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
        raise _refuse(path, field, f"has unknown settings {unknown}; valid: {sorted(_MODEL_KEYS)}")
    _names(path, f"{field}.classes", model.get("classes"), *CLASS_COUNT_RANGE)
    for key in ("encoder", "classifier_encoder", "decoder"):
        name = model.get(key, "resnet18" if key == "encoder" else "unet" if key == "decoder" else None)
        if name is None and key == "classifier_encoder":
            continue
        if not isinstance(name, str):
            raise _refuse(path, f"{field}.{key}", f"is {_show(name)}; expected a name")
        try:
            (check_decoder_name if key == "decoder" else check_encoder_name)(name)
        except ValueError as err:
            raise _refuse(path, f"{field}.{key}", f"is unknown ({error_summary(err)})") from err
    channels = model.get("decoder_channels")
    if channels is not None:
        if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= MAX_DECODER_BLOCKS:
            raise _refuse(
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
        raise _refuse(
            path, f"{field}.severity_scales", f"names {len(scales)} scales; at most {MAX_SEVERITY_TARGETS}"
        )
    for name, scale in scales.items():
        _real(path, f"{field}.severity_scales.{name}", scale, 1e-6, 1e6)
    for key in ("pretrained", "gate_with_lungs"):
        if not isinstance(model.get(key, False), bool):
            raise _refuse(path, f"{field}.{key}", f"is {_show(model[key])}; expected true or false")
    if model.get("gate_fill", "zero") not in _GATE_FILLS:
        raise _refuse(
            path, f"{field}.gate_fill", f"is {_show(model['gate_fill'])}; expected one of {_GATE_FILLS}"
        )
    _real(path, f"{field}.lung_dilation", model.get("lung_dilation", 0.0), 0.0, 1.0)
    _real(path, f"{field}.dropout", model.get("dropout", 0.0), 0.0, 1.0)
    return {"classes": list(model["classes"]), "severity_targets": targets, "severity_scales": scales}


def _check_preprocessing(path: Path, value: Any) -> None:
    field = f"{CHECKPOINT_KEY}.preprocessing"
    preprocessing = _mapping(path, field, value, optional=False)
    if set(preprocessing) != _PREPROCESSING_KEYS:
        raise _refuse(
            path, field, f"has the keys {sorted(preprocessing)}; expected {sorted(_PREPROCESSING_KEYS)}"
        )
    _whole(path, f"{field}.image_size", preprocessing["image_size"], *IMAGE_SIZE_RANGE, IMAGE_SIZE_MULTIPLE)
    _real(path, f"{field}.mean", preprocessing["mean"], *MEAN_RANGE)
    _real(path, f"{field}.std", preprocessing["std"], *STD_RANGE)


def _check_count(path: Path, field: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise _refuse(path, field, f"is {_show(value)}; expected a count (a whole number >= 0)")


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
        raise _refuse(path, f"{field}.hash", f"is {_show(data['hash'])}; expected the hash kind's name")
    for key in ("patient_ids", "source", "image_hashes"):
        values = data.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _refuse(path, f"{field}.{key}", "is not a list of strings")
    if not all(len(h) == 64 and set(h) <= _HEX_DIGITS for h in data.get("image_hashes", [])):
        raise _refuse(path, f"{field}.image_hashes", "holds a value that is not 64 lower-case hex digits")


def _check_weights(path: Path, state: Any, names: dict[str, Any]) -> None:
    """The weights: finite real tensors, a classifier with one output per class, severity scales as stated."""
    if not isinstance(state, dict):
        raise _refuse(path, "state_dict", f"is {_show(state)}; expected the network's weights by name")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise _refuse(
                path, f"state_dict[{_show(key)}]", f"is a {type(value).__name__}; expected a tensor"
            )
        if value.layout != torch.strided or value.is_complex() or value.is_quantized:
            raise _refuse(
                path,
                f"state_dict[{key!r}]",
                f"is a {value.layout} {value.dtype} tensor; expected real dense weights",
            )
        if key.startswith("net.") and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise _refuse(
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
            raise _refuse(
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
            raise _refuse(
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
            raise _refuse(
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
        raise _refuse(path, f"{CHECKPOINT_KEY}.config", f"is {_show(config)}; expected YAML text")
    _check_records(path, meta)
    _check_weights(path, checkpoint["state_dict"], names)
    return checkpoint
