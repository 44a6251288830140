"""Predict with a trained checkpoint: images in, named :class:`Prediction` objects out.

>>> from cxrnet import load_model
>>> model = load_model("checkpoints/best.ckpt")            # safe load, CPU by default
>>> pred = model.predict("patient.dcm")                    # path, array or tensor; a list gives a list
>>> pred.label, pred.probabilities, pred.severity["from_maps"]["grade"]

Every input goes through the preprocessing the model was trained with (stored in the checkpoint):
letterbox to the training size, then ``(x - mean) / std``. The maps come back through
:func:`~cxrnet.data.transforms.unletterbox` at the input's original size.

Research software, not a medical device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from cxrnet.checkpoint import CheckpointError, load_network, preprocessing_of
from cxrnet.data.arrays import to_gray
from cxrnet.data.io import ImageReadError, read_image
from cxrnet.data.transforms import Letterbox, Preprocessing, letterbox, letterbox_geometry, unletterbox
from cxrnet.devices import resolve_device
from cxrnet.models.cxrnet import CXRNet
from cxrnet.severity import assess_severity

__all__ = ["CheckpointError", "FileResult", "ImageInput", "Prediction", "Predictor", "load_model", "to_gray"]

log = logging.getLogger(__name__)

ImageInput = str | os.PathLike | np.ndarray | torch.Tensor
"""A path (PNG, JPEG, BMP, TIFF, DICOM), a numpy array or a torch tensor."""


@dataclass
class Prediction:
    """Everything the model says about one radiograph, at the image's original size (HxW).

    Attributes:
        probabilities: class name → probability, in the checkpoint's class order; sums to 1.
        label: the most probable class.
        lung_mask: bool HxW, lung probability > 0.5.
        infection_map: float32 HxW infection probability in [0, 1].
        explanation: float32 HxW explanation map in [0, 1] (the region encoder 2 classified).
        severity: ``{"from_maps": assess_severity(...).to_dict()}``, computed on the lung and infection
            maps at the model's resolution when the image is larger (areas in original pixels), plus, when
            the model has a severity head, ``"learned": {target: score in its own units}``.
        meta: ``source`` (the path, or ``"<array>"``/``"<tensor>"``), ``height``, ``width`` (pixels),
            ``model_size`` (side of the square the model saw).
    """

    probabilities: dict[str, float]
    label: str
    lung_mask: np.ndarray
    infection_map: np.ndarray
    explanation: np.ndarray
    severity: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_maps: bool = False) -> dict[str, Any]:
        """JSON-ready summary: label, probabilities, severity and meta.

        Args:
            include_maps: also add ``lung_mask``, ``infection_map`` and ``explanation`` as nested lists
                (large: HxW numbers each).
        """
        out: dict[str, Any] = {
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "severity": {kind: dict(values) for kind, values in self.severity.items()},
            "meta": dict(self.meta),
        }
        if include_maps:
            out["lung_mask"] = self.lung_mask.tolist()
            out["infection_map"] = self.infection_map.tolist()
            out["explanation"] = self.explanation.tolist()
        return out


class FileResult(NamedTuple):
    """One item of :meth:`Predictor.predict_files`: a prediction, or the reason the file failed.

    Attributes:
        path: the input file.
        prediction: the prediction, ``None`` when the file could not be read.
        error: why the file could not be read (:class:`ImageReadError` reason), ``None`` when it worked.
        preview: the image (float32 in [0, 1]) shrunk so its longer side is at most ``preview_size``,
            for overlays; ``None`` on error.
    """

    path: Path
    prediction: Prediction | None
    error: str | None
    preview: np.ndarray | None


class _Item(NamedTuple):
    square: np.ndarray  # sizexsize float32 in [0, 1], letterboxed
    geometry: Letterbox
    meta: dict[str, Any]


def _preview(image: np.ndarray, size: int | None) -> np.ndarray:
    h, w = image.shape
    if size is None or max(h, w) <= size:
        return image
    scale = size / max(h, w)
    return cv2.resize(
        image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )


class Predictor:
    """A trained CXRNet with its preprocessing, ready to predict on images of any size.

    Build one with :func:`load_model`. Inputs of :meth:`predict` are paths, numpy arrays or torch tensors
    (see :func:`to_gray` for the accepted layouts and value ranges).

    Args:
        net: the network (put in eval mode and moved to ``device``).
        preprocessing: input size and normalisation the network was trained with.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        batch_size: images per forward pass.
        checkpoint: path of the checkpoint, recorded in each prediction's meta.
        temperature: divides the class logits before the softmax (fitted by ``python -m cxrnet.calibrate``).
    """

    def __init__(
        self,
        net: CXRNet,
        preprocessing: Preprocessing,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        checkpoint: str | None = None,
        temperature: float = 1.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.net = net.eval().to(self.device)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.checkpoint = checkpoint
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of the model's outputs."""
        return list(self.net.classes)

    @property
    def severity_targets(self) -> list[str]:
        """Names of the learned severity scores (empty without a severity head)."""
        return list(self.net.severity_targets)

    def __repr__(self) -> str:
        return (
            f"Predictor(classes={self.classes}, image_size={self.preprocessing.image_size}, "
            f"device={self.device}, checkpoint={self.checkpoint!r})"
        )

    # ----------------------------------------------------------------------------------- public API

    def predict(
        self, x: ImageInput | Sequence[ImageInput], batch_size: int | None = None
    ) -> Prediction | list[Prediction]:
        """Predict one image, or a list of images (processed in batches).

        Args:
            x: a path, an array, a tensor, or a list (or tuple) of them.
            batch_size: images per forward pass; defaults to the predictor's.

        Returns:
            A :class:`Prediction`, or a list of them in input order for a list.

        Raises:
            ImageReadError: a file cannot be read (the message names it).
            ValueError: an array or tensor has an unsupported layout or value range.
        """
        if isinstance(x, (list, tuple)):
            return self.predict_batch(list(x), batch_size)
        return self.predict_batch([x], 1)[0]

    def predict_batch(self, inputs: Sequence[ImageInput], batch_size: int | None = None) -> list[Prediction]:
        """Predict a list of images in batches of ``batch_size``; returns predictions in input order."""
        return list(self.iter_predict(inputs, batch_size))

    def iter_predict(
        self, inputs: Iterable[ImageInput], batch_size: int | None = None
    ) -> Iterator[Prediction]:
        """Like :meth:`predict_batch`, but yields predictions one at a time (inputs are read lazily)."""
        for chunk in _chunks(inputs, batch_size or self.batch_size):
            items = [self._prepare(*self._load(x)) for x in chunk]
            yield from self._run(items)

    def predict_files(
        self,
        paths: Iterable[str | os.PathLike],
        batch_size: int | None = None,
        preview_size: int | None = 512,
    ) -> Iterator[FileResult]:
        """Stream over many files: a file that cannot be read gives an error result, not an exception.

        Memory stays flat: one batch of letterboxed inputs and previews, and one full-size prediction at a
        time (the caller should not keep them all).

        Args:
            paths: image files, read lazily.
            batch_size: images per forward pass; defaults to the predictor's.
            preview_size: longer side of :attr:`FileResult.preview` in pixels; ``None`` keeps full size.

        Yields:
            One :class:`FileResult` per path, in order.
        """
        for chunk in _chunks(paths, batch_size or self.batch_size):
            slots: list[tuple[Path, str | None, np.ndarray | None]] = []
            items = []
            for raw in chunk:
                path = Path(raw)
                try:
                    image = read_image(path)
                except ImageReadError as err:
                    slots.append((path, err.reason, None))
                    continue
                except Exception as err:  # a broken file must not end a run over thousands of them
                    log.warning("unexpected error reading %s", path, exc_info=True)
                    slots.append((path, f"{type(err).__name__}: {err}", None))
                    continue
                items.append(self._prepare(image, {"source": str(path)}))
                slots.append((path, None, _preview(image, preview_size)))
                del image
            predictions = self._run(items)
            for path, error, preview in slots:
                if error is not None:
                    yield FileResult(path, None, error, None)
                else:
                    yield FileResult(path, next(predictions), None, preview)

    # ----------------------------------------------------------------------------------- internals

    def _load(self, x: ImageInput) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(x, (str, os.PathLike)):
            return read_image(x), {"source": str(x)}
        if isinstance(x, torch.Tensor):
            return to_gray(x), {"source": "<tensor>"}
        if isinstance(x, np.ndarray):
            return to_gray(x), {"source": "<array>"}
        raise TypeError(
            f"cannot predict on a {type(x).__name__}; pass a file path, a numpy array, a torch tensor or a "
            "list of them"
        )

    def _prepare(self, image: np.ndarray, meta: dict[str, Any]) -> _Item:
        size = self.preprocessing.image_size
        h, w = image.shape
        meta = {**meta, "height": int(h), "width": int(w), "model_size": int(size)}
        if self.checkpoint:
            meta["checkpoint"] = self.checkpoint
        return _Item(letterbox(image, size), letterbox_geometry(h, w, size), meta)

    @torch.inference_mode()
    def _forward(self, squares: list[np.ndarray]) -> dict[str, np.ndarray]:
        p = self.preprocessing
        batch = torch.from_numpy(np.stack(squares)[:, None])
        batch = ((batch - p.mean) / p.std).to(self.device, non_blocking=True)
        out = self.net(batch)
        result = {
            "lung": torch.sigmoid(out.lung_logits)[:, 0],
            "infection": torch.sigmoid(out.infection_logits)[:, 0],
            "explanation": out.explanation[:, 0],
            "probabilities": torch.softmax(out.class_logits.float() / self.temperature, dim=1),
        }
        if out.severity is not None:
            result["severity"] = out.severity
        return {key: value.float().cpu().numpy() for key, value in result.items()}

    def _run(self, items: list[_Item]) -> Iterator[Prediction]:
        """Forward ``items`` as one batch, then build each full-size prediction lazily."""
        if not items:
            return iter(())
        out = self._forward([item.square for item in items])
        return (self._finish(out, i, item) for i, item in enumerate(items))

    def _finish(self, out: dict[str, np.ndarray], i: int, item: _Item) -> Prediction:
        geo = item.geometry
        lung_mask = unletterbox(out["lung"][i], geo) > 0.5
        infection = np.clip(unletterbox(out["infection"][i], geo), 0.0, 1.0)
        explanation = np.clip(unletterbox(out["explanation"][i], geo), 0.0, 1.0)
        probs = out["probabilities"][i]
        severity: dict[str, dict[str, Any]] = {
            "from_maps": self._map_severity(out, i, geo, lung_mask, infection)
        }
        if "severity" in out:
            severity["learned"] = {
                name: float(value) for name, value in zip(self.severity_targets, out["severity"][i])
            }
        return Prediction(
            probabilities={name: float(p) for name, p in zip(self.classes, probs)},
            label=self.classes[int(np.argmax(probs))],
            lung_mask=lung_mask,
            infection_map=infection,
            explanation=explanation,
            severity=severity,
            meta=item.meta,
        )

    @staticmethod
    def _map_severity(
        out: dict[str, np.ndarray], i: int, geo: Letterbox, lung_mask: np.ndarray, infection: np.ndarray
    ) -> dict[str, Any]:
        """``assess_severity`` on the maps at whichever is smaller: the model's resolution or the image's.

        Upsampled maps hold no more information than the model's output, and scoring a 3000-pixel map
        costs about 0.5 s against 2 ms at the model's size, with the same fractions to within a fraction of
        a percent. Areas are reported in pixels of the original image either way.
        """
        model_pixels = geo.resized_height * geo.resized_width
        if geo.height * geo.width <= model_pixels:
            return assess_severity(lung_mask, infection).to_dict()
        rows = slice(geo.top, geo.top + geo.resized_height)
        cols = slice(geo.left, geo.left + geo.resized_width)
        result = assess_severity(out["lung"][i][rows, cols] > 0.5, out["infection"][i][rows, cols]).to_dict()
        scale = geo.height * geo.width / model_pixels
        for key in ("area_right", "area_left"):
            result[key] = round(result[key] * scale)
        return result


def _chunks(values: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load_model(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 8
) -> Predictor:
    """Load a cxrnet checkpoint safely (weights only, nothing downloaded) as a :class:`Predictor`.

    Args:
        checkpoint: a ``.ckpt`` written by ``python -m cxrnet.train`` or :func:`cxrnet.checkpoint.save_checkpoint`.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ...
        batch_size: images per forward pass when predicting on lists and folders.

    Raises:
        CheckpointError: the file is missing or not a cxrnet checkpoint.
        RuntimeError: the requested device is not available.
    """
    device = resolve_device(device)  # before reading a large file
    net, meta = load_network(checkpoint)
    temperature = float(meta.get("temperature", 1.0))  # set by python -m cxrnet.calibrate
    return Predictor(
        net, preprocessing_of(meta), device, batch_size, checkpoint=str(checkpoint), temperature=temperature
    )
