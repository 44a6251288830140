"""Run an exported ONNX model on onnxruntime with the predictor's API: ``cxrnet.load_model("model.onnx")``.

:class:`OnnxPredictor` is a :class:`~cxrnet.predictor.Predictor` whose network is an onnxruntime session:
the same reading, letterboxing, batching and read-ahead over files, the same
:class:`~cxrnet.prediction.Prediction` objects (probabilities after the calibrated temperature, maps at the
input's size, untrained outputs withheld, caveats). Everything it needs travels in the file's
``metadata_props``, written by ``python -m cxrnet.export format=onnx``
(:func:`cxrnet.export.export_metadata`), and is validated as a checkpoint's metadata is
(:func:`cxrnet.checkpoint_validation.validate_checkpoint`). Files exported before the temperature and the
training records were stored load with temperature 1 and every head counted as trained.

ONNX models run in float32. ``onnx`` and ``onnxruntime`` are the optional extra ``export``
(``pip install "cxrnet[export]"``), imported only when used (:func:`import_onnx`).

Research software, not a medical device.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from scipy.special import expit, softmax

from cxrnet.checkpoint import CHECKPOINT_KEY, FORMAT_VERSION, CheckpointError, preprocessing_of
from cxrnet.checkpoint_streams import error_summary, reworded_refusal
from cxrnet.checkpoint_validation import validate_checkpoint
from cxrnet.data.transforms import normalize
from cxrnet.predictor import Predictor

__all__ = ["EXTRA_HINT", "ONNX_FORMAT", "OnnxPredictor", "import_onnx", "load_onnx", "read_onnx_metadata"]

ONNX_FORMAT = "cxrnet-onnx"
"""``format`` in the metadata of ONNX files cxrnet exports."""

EXTRA_HINT = 'pip install "cxrnet[export]"'

REQUIRED_METADATA = ("classes", "preprocessing", "input_name", "output_names")
"""``metadata_props`` keys an ONNX file must have; every cxrnet export since the first writes them."""

MAP_OUTPUTS = ("lung_logits", "infection_logits", "explanation", "class_logits")

HINT = "export it again with python -m cxrnet.export checkpoint=<ckpt> format=onnx output=<file>"

_FLOAT32 = ("auto", "32", "32-true")


def import_onnx(name: str = "onnxruntime") -> ModuleType:
    """Import ``onnx`` or ``onnxruntime``, which the optional extra ``export`` installs.

    Raises:
        ImportError: the package is missing; the message says how to install it.
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"{name} is not installed: exporting to ONNX and running ONNX models need the optional extra "
            f"'export': {EXTRA_HINT}"
        ) from err


def _refusal(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"refusing ONNX model {path}: {problem}; {HINT}")


def read_onnx_metadata(session: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The cxrnet metadata of an onnxruntime session, decoded and validated.

    Returns:
        The metadata with JSON values decoded: ``classes``, ``preprocessing``, ``input_name``,
        ``output_names``, ``severity_targets`` and, when exported by a recent cxrnet, ``temperature``,
        ``heads``, ``training_data``, ``model`` (see :func:`cxrnet.export.export_metadata`).

    Raises:
        CheckpointError: a key of :data:`REQUIRED_METADATA` is missing, a value is not JSON or fails the
            checks checkpoint metadata passes, or the graph's inputs and outputs disagree with it.
    """
    path = Path(path)
    raw = dict(session.get_modelmeta().custom_metadata_map)
    missing = [key for key in REQUIRED_METADATA if key not in raw]
    if missing:
        raise _refusal(path, f"its metadata_props lack {missing}: it was not exported by cxrnet")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError as err:
            raise _refusal(path, f"metadata_props {key!r} is not JSON ({err.msg})") from err
    if meta.get("format", ONNX_FORMAT) != ONNX_FORMAT:
        raise _refusal(path, f"metadata_props 'format' is {meta['format']!r}; expected {ONNX_FORMAT!r}")
    targets = meta.get("severity_targets", [])
    # The checks of a checkpoint's metadata; files from before "model" was stored name the classes only.
    model = meta.get("model") or {"classes": meta["classes"], "severity_targets": targets}
    checked = {
        "format_version": FORMAT_VERSION,
        **{key: meta.get(key) for key in ("preprocessing", "temperature", "heads", "training_data")},
        "model": model,
        "classes": meta["classes"],
        "severity_targets": targets,
    }
    try:
        validate_checkpoint({"state_dict": {}, CHECKPOINT_KEY: checked}, path)
    except CheckpointError as err:
        raise reworded_refusal(err, path, f"ONNX model {path}: metadata_props ", HINT) from err
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name: o for o in session.get_outputs()}
    needed = [*MAP_OUTPUTS, *(["severity"] if targets else [])]
    if inputs != [meta["input_name"]] or not set(needed) <= set(outputs):
        raise _refusal(
            path,
            f"the graph has inputs {inputs} and outputs {sorted(outputs)}; its metadata needs the input "
            f"{meta['input_name']!r} and the outputs {needed}",
        )
    width = outputs["class_logits"].shape[-1]
    if isinstance(width, int) and width != len(meta["classes"]):
        raise _refusal(
            path,
            f"class_logits has {width} outputs but classes names {len(meta['classes'])}: {meta['classes']}",
        )
    return meta


def _providers(ort: ModuleType, device: str | torch.device) -> tuple[list[Any], torch.device]:
    device = torch.device(device)
    if device.type == "cpu":
        return ["CPUExecutionProvider"], device
    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"], device
    raise RuntimeError(
        f"device {str(device)!r} is not available to onnxruntime (providers: {', '.join(available)}); use "
        "device='cpu', or install onnxruntime-gpu for CUDA"
    )


class OnnxPredictor(Predictor):
    """A :class:`~cxrnet.predictor.Predictor` running an exported ONNX model on onnxruntime.

    Build one with :func:`load_onnx` (or ``cxrnet.load_model("model.onnx")``).

    Args:
        session: an ``onnxruntime.InferenceSession`` of a cxrnet export.
        metadata: its decoded metadata (:func:`read_onnx_metadata`).
        device: what the session runs on (``cpu`` or ``cuda``), for the record.
        batch_size: images per forward pass.
        path: the ``.onnx`` file, recorded in each prediction's meta as ``checkpoint``.
        keep_untrained: see :class:`~cxrnet.predictor.Predictor`.

    Attributes:
        session: the onnxruntime session.
        metadata: the file's decoded ``metadata_props``.
    """

    def __init__(
        self,
        session: Any,
        metadata: dict[str, Any],
        device: torch.device = torch.device("cpu"),  # noqa: B008 (an immutable value)
        batch_size: int = 8,
        path: str | None = None,
        keep_untrained: bool = False,
    ) -> None:
        self.session = session
        self.metadata = metadata
        self.device = device
        self.precision = "32-true"
        self.channels_last = False
        self._classes = list(metadata["classes"])
        self._severity_targets = list(metadata.get("severity_targets", []))
        self._input_name = str(metadata["input_name"])
        self._outputs = [*MAP_OUTPUTS, *(["severity"] if self._severity_targets else [])]
        temperature = metadata.get("temperature")
        self._configure(
            preprocessing_of(metadata),
            batch_size,
            path,
            1.0 if temperature is None else float(temperature),
            metadata.get("heads"),
            metadata.get("training_data"),
            keep_untrained,
        )

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of the model's outputs."""
        return list(self._classes)

    @property
    def severity_targets(self) -> list[str]:
        """Names of the learned severity scores (empty without a severity head)."""
        return list(self._severity_targets)

    def _forward(self, squares: list[np.ndarray]) -> dict[str, np.ndarray]:
        batch = normalize(np.stack(squares)[:, None].astype(np.float32, copy=False), self.preprocessing)
        out = dict(zip(self._outputs, self.session.run(self._outputs, {self._input_name: batch})))
        result = {
            "lung": expit(out["lung_logits"][:, 0]),
            "infection": expit(out["infection_logits"][:, 0]),
            "explanation": out["explanation"][:, 0],
            "probabilities": softmax(out["class_logits"].astype(np.float32) / self.temperature, axis=1),
        }
        if "severity" in out:
            result["severity"] = out["severity"]
        return {key: np.asarray(value, dtype=np.float32) for key, value in result.items()}


def load_onnx(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    keep_untrained: bool = False,
    precision: str = "auto",
) -> OnnxPredictor:
    """Load an ONNX file exported by cxrnet as an :class:`OnnxPredictor`.

    Args:
        path: the ``.onnx`` file.
        device: ``"cpu"`` (default) or ``"cuda"``/``"cuda:N"`` (needs onnxruntime-gpu).
        batch_size: images per forward pass.
        keep_untrained: see :class:`~cxrnet.predictor.Predictor`.
        precision: ``"auto"`` or ``"32-true"``: ONNX models run in float32.

    Raises:
        ImportError: onnxruntime is not installed (``pip install "cxrnet[export]"``).
        CheckpointError: the file is missing, not an ONNX model, or not a cxrnet export
            (:func:`read_onnx_metadata`).
        ValueError: a precision other than float32.
        RuntimeError: the device is not available to onnxruntime.
    """
    path = Path(path)
    if str(precision) not in _FLOAT32:
        raise ValueError(f"ONNX models run in float32; use precision='auto' or '32-true', not {precision!r}")
    ort = import_onnx("onnxruntime")
    providers, device = _providers(ort, device)
    if not path.is_file():
        raise CheckpointError(f"ONNX model {path} does not exist or is not a file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as torch.set_num_threads (predict num_threads=)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own types for damaged or foreign files
        raise _refusal(
            path, f"onnxruntime cannot read it ({type(err).__name__}: {error_summary(err)})"
        ) from err
    return OnnxPredictor(
        session,
        read_onnx_metadata(session, path),
        device,
        batch_size,
        path=str(path),
        keep_untrained=keep_untrained,
    )
