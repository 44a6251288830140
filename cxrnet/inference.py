"""Predict with a trained model: images in, named :class:`Prediction` objects out.

>>> from cxrnet import load_model
>>> model = load_model("checkpoints/best.ckpt")            # safe load, CPU by default
>>> pred = model.predict("patient.dcm")                    # path, array or tensor; a list gives a list
>>> pred.label, pred.probabilities, pred.severity["from_maps"]["grade"]

:func:`load_model` reads three kinds of model, chosen by the path: a checkpoint (``.ckpt``), a pretrained
folder (``config.json`` + ``model.safetensors``, written by ``python -m cxrnet.export format=hf``,
:mod:`cxrnet.pretrained`) and an ONNX file (``.onnx``, run on onnxruntime by
:class:`~cxrnet.onnx_predictor.OnnxPredictor`). All three give the same :class:`Prediction` objects; the
predictor itself lives in :mod:`cxrnet.predictor`.

Every input goes through the preprocessing the model was trained with (stored in the model):
letterbox to the training size, then :func:`~cxrnet.data.transforms.normalize`. The maps come back through
:func:`~cxrnet.data.transforms.unletterbox` at the input's original size.

No numbers from a head that never learned: the checkpoint records which heads saw training targets
(:mod:`cxrnet.provenance`). An output whose head saw none (the infection map of a model trained on lung masks
only, and the severity derived from it) is withheld (``None`` / left out) and named in
:attr:`Prediction.untrained`; ``load_model(..., keep_untrained=True)`` keeps such outputs for inspection,
still named there. A model trained on synthetic phantoms only says so in :attr:`Prediction.caveats` and
warns once (:class:`SyntheticTrainingWarning`) when it first reads a real file. Checkpoints written before
this record existed behave as before: every head counts as trained.

Research software, not a medical device.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cxrnet.checkpoint import CheckpointError, load_network, preprocessing_of
from cxrnet.data.arrays import INPUT_CONVENTIONS, to_gray
from cxrnet.devices import inference_precision, resolve_device
from cxrnet.onnx_predictor import load_onnx
from cxrnet.prediction import FileResult, Prediction, SyntheticTrainingWarning
from cxrnet.predictor import ImageInput, Predictor
from cxrnet.pretrained import load_pretrained

__all__ = [
    "CheckpointError",
    "FileResult",
    "ImageInput",
    "Prediction",
    "Predictor",
    "SyntheticTrainingWarning",
    "load_model",
    "to_gray",
]


def load_model(
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    keep_untrained: bool = False,
    precision: str = "auto",
    input_convention: str = "cxrnet",
) -> Predictor:
    """Load a model safely (weights only, nothing downloaded) as a :class:`Predictor`.

    Args:
        checkpoint: what to load, told apart by the path: a folder is a pretrained folder
            (:func:`cxrnet.pretrained.load_pretrained`), a ``.onnx`` file an ONNX export
            (:func:`cxrnet.onnx_predictor.load_onnx`, needs ``pip install "cxrnet[export]"``), anything else a
            ``.ckpt`` written by ``python -m cxrnet.train`` or :func:`cxrnet.checkpoint.save_checkpoint`.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ...
        batch_size: images per forward pass when predicting on lists and folders.
        keep_untrained: return the outputs of heads that saw no training target too (still named in
            :attr:`Prediction.untrained`); by default they are withheld.
        precision: ``"auto"`` (the training rule of :func:`~cxrnet.devices.resolve_precision`) or a
            Lightning precision name; see :class:`Predictor`. ONNX models run in float32 only.
        input_convention: ``"cxrnet"`` or ``"xrv"``: the scale of arrays and tensors given to ``predict``
            (:attr:`Predictor.input_convention`; ``"xrv"`` takes torchxrayvision's [-1024, 1024] floats).

    Raises:
        CheckpointError: the file or folder is missing, not a cxrnet model, or fails validation (metadata out
            of bounds, class names that disagree, weights that do not fit:
            :mod:`cxrnet.checkpoint_validation`).
        RuntimeError: the requested device is not available.
        ImportError: an ONNX file without onnxruntime installed.
    """
    if input_convention not in INPUT_CONVENTIONS:  # before reading a large file
        raise ValueError(f"input_convention={input_convention!r} is not one of {', '.join(INPUT_CONVENTIONS)}")
    path = Path(checkpoint)
    if path.suffix.lower() == ".onnx" and not path.is_dir():
        predictor = load_onnx(path, device, batch_size, keep_untrained=keep_untrained, precision=precision)
        predictor.input_convention = input_convention
        return predictor
    device = resolve_device(device)  # before reading a large file
    inference_precision(precision, device)  # an unknown name fails here too
    if path.is_dir():
        net, meta = load_pretrained(path)
    else:
        net, meta = load_network(path)
    # Set by python -m cxrnet.calibrate; validated (finite, within bounds) when the model was read.
    temperature = meta.get("temperature")
    predictor = Predictor(
        net,
        preprocessing_of(meta),
        device,
        batch_size,
        checkpoint=str(checkpoint),
        temperature=1.0 if temperature is None else float(temperature),
        heads=meta.get("heads"),
        training_data=meta.get("training_data"),
        keep_untrained=keep_untrained,
        precision=precision,
    )
    predictor.input_convention = input_convention
    return predictor
