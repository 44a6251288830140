"""Export a checkpoint to share or deploy: ``python -m cxrnet.export checkpoint=<ckpt> format=<f> output=<o>``.

Three formats; ``hf`` and ``onnx`` are read back by ``cxrnet.load_model(<path>)`` as a predictor giving the
same :class:`~cxrnet.prediction.Prediction` objects as the checkpoint:

- ``hf``: a pretrained folder (``model.safetensors``, ``config.json``, model card ``README.md``) in the layout
  of the Hugging Face Hub; see :mod:`cxrnet.pretrained`, and :mod:`cxrnet.hub` to upload it.
- ``onnx``: one ``.onnx`` file, run by :class:`cxrnet.onnx_predictor.OnnxPredictor` on onnxruntime (needs
  ``pip install "cxrnet[export]"``).
- ``torchscript``: one traced ``.pt`` file, for C++ and other torch runtimes.

An existing output (a file, or a non-empty folder) is refused unless ``overwrite=true``; files and folders
are written under a temporary name beside the output and renamed into place when complete, so a failed
export leaves nothing half-written.

ONNX and TorchScript take one input and return every map and score of :class:`~cxrnet.models.CXRNetOutput`
by name:

- input ``image``: float32 B×1×H×W, the grayscale image in [0, 1] normalised as ``(x - mean) / std`` with the
  checkpoint's preprocessing; batch size, H and W are free (H and W multiples of 32; the model was trained
  at ``image_size``×``image_size``, letterboxed).
- outputs ``lung_logits``, ``infection_logits`` (B×1×H×W logits), ``explanation`` (B×1×H×W in [0, 1]),
  ``class_logits`` (B×C, classes in the order of the ``classes`` metadata) and, only when the model has a
  severity head, ``severity`` (B×K, in the units of each target).

ONNX uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``): the
``torch.export``-based default needs the optional ``onnxscript`` package, and the legacy path reproduces the
network to ~1e-6. The class names, preprocessing, calibrated temperature, training records and output names
are stored as JSON strings in the model's ``metadata_props`` (see :func:`export_metadata`); onnxruntime shows
them in ``session.get_modelmeta().custom_metadata_map``.

TorchScript is a *traced* module returning ``Dict[str, Tensor]`` with the output names as keys (scripting
fails on timm encoders). The same metadata travels as the extra file ``cxrnet.json``: read it with
``files = {"cxrnet.json": ""}; torch.jit.load(path, _extra_files=files)``.

Both graphs fix what the network derives from the image size at export time: with ``model.gate_with_lungs``
the dilation of the lung gate (a fraction of the width) becomes a constant number of pixels, so run such a
model at the export size (``image_size``, by default the training size).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from cxrnet.checkpoint import load_network, partial_path, preprocessing_of
from cxrnet.command import CONFIG_PATH, register_resolvers
from cxrnet.models.cxrnet import CXRNet
from cxrnet.onnx_predictor import ONNX_FORMAT, import_onnx
from cxrnet.pretrained import export_pretrained, fingerprint_summary, input_convention, public_heads
from cxrnet.provenance import untrained_outputs

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "hf")
INPUT_NAME = "image"
MAP_OUTPUTS = ("lung_logits", "infection_logits", "explanation")
METADATA_FILE = "cxrnet.json"


def output_names(net: CXRNet) -> list[str]:
    """Names of the exported outputs, in order: the three maps, ``class_logits`` and, if any, ``severity``."""
    return [*MAP_OUTPUTS, "class_logits", *(["severity"] if net.severity_head is not None else [])]


class ExportWrapper(nn.Module):
    """A :class:`CXRNet` with plain outputs, as exporters need them.

    Args:
        net: the network, in eval mode.
        as_dict: return ``{name: tensor}`` (TorchScript) instead of a tuple in :func:`output_names` order (ONNX).
    """

    def __init__(self, net: CXRNet, as_dict: bool = False) -> None:
        super().__init__()
        self.net = net
        self.names = output_names(net)
        self.as_dict = as_dict

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
        """B×1×H×W normalised image → outputs named by :func:`output_names` (``severity`` only if present)."""
        out = self.net(image)._asdict()
        values = {name: out[name] for name in self.names}
        return values if self.as_dict else tuple(values.values())


def export_metadata(net: CXRNet, meta: dict[str, Any], image_size: int | None = None) -> dict[str, str]:
    """What a user of the exported file alone needs to know, as JSON strings by key.

    Keys: ``format`` (``"cxrnet-onnx"``), ``classes`` (names in logit order), ``preprocessing``
    (``image_size`` in pixels, ``mean``, ``std`` of the [0, 1] image), ``input_name``, ``input_layout`` (the
    input convention in words), ``output_names``, ``severity_targets``, ``temperature`` (the calibrated
    softmax temperature, ``null`` when not calibrated: apply ``softmax(class_logits / T)``), ``model`` (the
    constructor config), ``heads`` and ``untrained_outputs`` (what each head was trained on,
    :mod:`cxrnet.provenance`), ``training_data`` (:func:`cxrnet.pretrained.fingerprint_summary`),
    ``precision`` (of training), ``export_image_size`` (the traced size), ``cxrnet_version`` and
    ``gate_with_lungs``.
    """
    from cxrnet import __version__

    preprocessing = preprocessing_of(meta).to_dict()
    heads = public_heads(meta.get("heads"))
    values: dict[str, Any] = {
        "format": ONNX_FORMAT,
        # The network's own names, as predict uses them (the checkpoint's metadata is checked to agree).
        "classes": list(net.classes),
        "preprocessing": preprocessing,
        "input_name": INPUT_NAME,
        "input_layout": input_convention(int(preprocessing["image_size"])),
        "output_names": output_names(net),
        "severity_targets": list(net.severity_targets),
        "temperature": meta.get("temperature"),
        "model": dict(net.config, pretrained=False),
        "heads": heads,
        "untrained_outputs": sorted(untrained_outputs(heads, net.severity_targets)),
        "training_data": fingerprint_summary(meta.get("training_data")),
        "precision": meta.get("precision"),
        "export_image_size": int(image_size or preprocessing["image_size"]),
        "cxrnet_version": meta.get("cxrnet_version", __version__),
        "gate_with_lungs": bool(net.gate_with_lungs),
    }
    return {key: json.dumps(value) for key, value in values.items()}


def _check_image_size(image_size: int, net: CXRNet) -> None:
    if image_size <= 0 or image_size % net.output_stride:
        fixed = max(1, round(image_size / net.output_stride)) * net.output_stride
        raise ValueError(
            f"export image_size={image_size} must be a positive multiple of {net.output_stride} "
            f"(e.g. image_size={fixed}), or leave it unset to use the checkpoint's training size"
        )


def _export_onnx(
    net: CXRNet, example: torch.Tensor, output: Path, opset: int, metadata: dict[str, str]
) -> None:
    onnx = import_onnx("onnx")
    names = output_names(net)
    image_axes = {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {INPUT_NAME: image_axes}
    dynamic_axes.update({name: image_axes if name in MAP_OUTPUTS else {0: "batch"} for name in names})
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (see the module docstring); its deprecation notice is noise.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        torch.onnx.export(
            ExportWrapper(net).eval(),
            (example,),
            str(output),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    model = onnx.load(str(output))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = "cxrnet chest X-ray model; see metadata_props for classes, preprocessing and outputs"
    onnx.checker.check_model(model)
    onnx.save(model, str(output))


def _export_torchscript(net: CXRNet, example: torch.Tensor, output: Path, metadata: dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning
        )
        # check_trace would re-run and compare the trace (doubling the time); tests/test_export.py checks parity.
        traced = torch.jit.trace(
            ExportWrapper(net, as_dict=True).eval(), (example,), strict=False, check_trace=False
        )
        extra = {METADATA_FILE: json.dumps({key: json.loads(value) for key, value in metadata.items()})}
        torch.jit.save(traced, str(output), _extra_files=extra)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.is_dir():
        raise FileExistsError(
            f"output {output} is a folder; name a file (e.g. output={output / 'model.onnx'})"
        )
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"output {output} exists; choose another name, or add overwrite=true to replace it"
        )


def export_model(
    checkpoint: str | os.PathLike[str],
    format: str,
    output: str | os.PathLike[str],
    opset: int = 17,
    image_size: int | None = None,
    overwrite: bool = False,
    metrics: str | os.PathLike[str] | None = None,
) -> Path:
    """Export the network of a checkpoint.

    Args:
        checkpoint: a cxrnet checkpoint (``checkpoints/best.ckpt`` of a training run).
        format: ``"onnx"``, ``"torchscript"`` or ``"hf"`` (a pretrained folder, :mod:`cxrnet.pretrained`).
        output: file to write (its folder is created), or the folder for ``"hf"``.
        opset: ONNX opset version (ONNX only).
        image_size: side in pixels of the example image the graph is traced with; default the checkpoint's
            training size. Batch size and image size stay free in the exported graph (ONNX, TorchScript).
        overwrite: replace an existing output file; for ``"hf"``, the three files of a non-empty folder.
        metrics: ``metrics.json`` for the model card (``"hf"``); default the one of the checkpoint's run.

    Returns:
        The path written.

    Raises:
        ValueError: unknown format, ``image_size`` with ``"hf"``, or an image size that is not a multiple of
            the network's output stride.
        FileExistsError: the output exists (a non-empty folder for ``"hf"``) and ``overwrite`` is false.
        ImportError: ONNX export without the ``onnx`` package (``pip install "cxrnet[export]"``).
        cxrnet.checkpoint.CheckpointError: the checkpoint cannot be read or fails validation.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(FORMATS)}")
    output = Path(output)
    if format == "hf":
        if image_size is not None:
            raise ValueError(
                "image_size applies to format=onnx and format=torchscript only; leave it unset for hf"
            )
        return export_pretrained(checkpoint, output, overwrite=overwrite, metrics=metrics)
    _check_output(output, overwrite)
    if format == "onnx":
        import_onnx("onnx")  # a missing extra fails before the checkpoint is read
    net, meta = load_network(checkpoint)
    size = int(image_size or preprocessing_of(meta).image_size)
    _check_image_size(size, net)
    output.parent.mkdir(parents=True, exist_ok=True)
    if net.gate_with_lungs:
        log.warning(
            "model uses gate_with_lungs: the lung-gate dilation is fixed for %d px images in the exported graph; "
            "run it at that size",
            size,
        )
    # Batch 2, not 1: a batch of one lets the tracer treat the batch axis as a constant in places.
    example = torch.zeros(2, 1, size, size)
    metadata = export_metadata(net, meta, size)
    temporary = partial_path(output)
    try:
        with torch.no_grad():
            if format == "onnx":
                _export_onnx(net, example, temporary, opset, metadata)
            else:
                _export_torchscript(net, example, temporary, metadata)
        os.replace(temporary, output)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    log.info("exported %s (%s, outputs %s) to %s", checkpoint, format, ", ".join(output_names(net)), output)
    return output


def _run(cfg: DictConfig) -> None:
    if not cfg.output:
        raise ValueError(
            "no output: add output=<file> (e.g. output=model.onnx), or output=<folder> for format=hf, to the "
            "command line"
        )
    export_model(
        cfg.checkpoint,
        cfg.format,
        cfg.output,
        opset=cfg.opset,
        image_size=cfg.image_size,
        overwrite=bool(cfg.get("overwrite", False)),
        metrics=cfg.get("metrics"),
    )


def main() -> None:
    """Command-line entry point (Hydra): see ``conf/export.yaml``."""
    register_resolvers()
    hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")(_run)()


if __name__ == "__main__":
    main()
