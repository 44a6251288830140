"""CXRNet: an Encoder-Decoder-Encoder network for chest X-rays (after CXR-Net, Zhang et al. 2021).

Encoder 1 and the shared decoder produce three maps at input resolution: lung mask, infection map and the
explanation map ``e``. Encoder 2 classifies the image *gated* by ``e`` (and optionally by the predicted lung
fields), so the class decision can only use what ``e`` keeps: trained with the classification loss plus an
area and a smoothness penalty on ``e``, the map becomes a small region sufficient for the decision, learned
from class labels alone.

Two optional views make the map point at the evidence rather than at a shape the classifier learns to read
(loss terms ``cls_ungated`` and ``deletion``, see :mod:`cxrnet.losses`): :meth:`CXRNet.ungated_logits`
classifies the lung fields without the explanation gate, so encoder 2 must recognise the disease from the
pixels; :meth:`CXRNet.deletion_logits` classifies the lung fields with the map's region removed, through a
frozen encoder 2, so the map must cover *all* the evidence (a deletion objective, after Fong & Vedaldi 2017
and Dabkowski & Gal 2017).

``explanation_smoothing`` blurs the gated map and gates it again (:meth:`CXRNet.gate_map`): a map that is
sharp at the gate's edge can otherwise peak on a one-pixel rim along the lung borders, away from the disease.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cxrnet.devices import compile_unavailable
from cxrnet.models.encoder_weights import EncoderWeights, load_encoder_weights
from cxrnet.models.encoders import build_encoder, build_segmentation_model, min_input_size
from cxrnet.models.heads import ClassificationHead, SeverityHead, apply_gate, dilate_mask, gaussian_blur

MAP_NAMES = ("lung", "infection", "explanation")
EXPLANATION_INIT_BIAS = 2.0


class CXRNetOutput(NamedTuple):
    """Named model output (B = batch, C = classes, K = severity targets).

    Attributes:
        lung_logits: B×1×H×W lung-mask logits.
        infection_logits: B×1×H×W infection-map logits.
        explanation: B×1×H×W explanation map in [0, 1]: the gate encoder 2 saw the image through (including
            the lung fields when the model gates with them).
        class_logits: B×C class logits.
        severity: B×K severity scores in their own units, or ``None`` without a severity head.
    """

    lung_logits: torch.Tensor
    infection_logits: torch.Tensor
    explanation: torch.Tensor
    class_logits: torch.Tensor
    severity: torch.Tensor | None = None

    def float(self) -> CXRNetOutput:
        """The same output in float32 (after autocast some fields are bfloat16 or float16)."""
        return CXRNetOutput(*(None if t is None else t.float() for t in self))


class Heads(NamedTuple):
    """What encoder 2's heads return: B×C class logits and B×K severity scores (``None`` without that head)."""

    class_logits: torch.Tensor
    severity: torch.Tensor | None = None


class CXRNet(nn.Module):
    """Multitask chest X-ray network: segmentation, explanation, classification and severity.

    Args:
        classes: class names, in logit order.
        encoder: encoder 1 (see :func:`cxrnet.models.list_encoders`; timm models as ``tu-<name>``).
        decoder: shared decoder architecture (see :func:`cxrnet.models.list_decoders`); ``deeplabv3plus`` and
            ``pan`` need an encoder with a dilated mode (not densenet), ``pan`` images of at least 128×128.
        classifier_encoder: encoder 2; defaults to the same name as ``encoder`` (separate weights).
        pretrained: load ImageNet weights for both encoders (needs internet; off by default).
        decoder_channels: decoder widths for U-Net-style decoders; ``None`` keeps smp's default.
        severity_targets: names of the severity scores to regress (empty: no severity head).
        severity_scales: maximum of each score, by name (e.g. ``{"brixia": 18}``); 1.0 when not given.
        gate_with_lungs: encoder 2 only sees what lies inside the predicted, slightly dilated lung fields.
        gate_fill: ``"zero"`` or ``"blur"``: what replaces the gated-out image.
        lung_dilation: dilation of the lung gate as a fraction of the image width.
        explanation_smoothing: standard deviation of a Gaussian blur of the gated explanation map, as a
            fraction of the image width (0 = none). The blurred map is gated again, so it stays exactly zero
            outside the lung fields; a thin rim along the gate's edge loses about half its height, and a map
            can no longer peak on one bright pixel (experiments/explanations/README.md).
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        classes: list[str] | tuple[str, ...],
        encoder: str = "resnet18",
        decoder: str = "unet",
        classifier_encoder: str | None = None,
        pretrained: bool = False,
        decoder_channels: list[int] | tuple[int, ...] | None = None,
        severity_targets: list[str] | tuple[str, ...] = (),
        severity_scales: dict[str, float] | None = None,
        gate_with_lungs: bool = False,
        gate_fill: str = "zero",
        lung_dilation: float = 0.03,
        explanation_smoothing: float = 0.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if len(classes) < 2:
            raise ValueError(f"need at least two classes, got {list(classes)}")
        severity_scales = dict(severity_scales or {})
        self.compiled = False  # set by create_model(compile=True)
        self.encoder_weights: EncoderWeights | None = None  # set by create_model(encoder_weights=...)
        self.config: dict[str, Any] = {
            "classes": list(classes),
            "encoder": encoder,
            "decoder": decoder,
            "classifier_encoder": classifier_encoder,
            "pretrained": pretrained,
            "decoder_channels": list(decoder_channels) if decoder_channels else None,
            "severity_targets": list(severity_targets),
            "severity_scales": {k: float(v) for k, v in severity_scales.items()},
            "gate_with_lungs": gate_with_lungs,
            "gate_fill": gate_fill,
            "lung_dilation": lung_dilation,
            "dropout": dropout,
        }
        if explanation_smoothing:
            # Only when set: a checkpoint without smoothing then loads in cxrnet releases that predate it.
            self.config["explanation_smoothing"] = explanation_smoothing
        self.classes = list(classes)
        self.severity_targets = list(severity_targets)
        self.gate_with_lungs = gate_with_lungs
        self.gate_fill = gate_fill
        self.lung_dilation = lung_dilation
        if not 0.0 <= explanation_smoothing <= 0.5:
            raise ValueError(
                f"explanation_smoothing is {explanation_smoothing}; expected a fraction of the image width "
                "in [0, 0.5] (0 = no smoothing)"
            )
        self.explanation_smoothing = explanation_smoothing
        apply_gate(
            torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), gate_fill
        )  # fail now, not at the first batch

        decoder_kwargs: dict[str, Any] = {}
        if decoder_channels:
            decoder_kwargs["decoder_channels"] = tuple(decoder_channels)
        segmenter = build_segmentation_model(
            encoder, decoder, len(MAP_NAMES), pretrained=pretrained, **decoder_kwargs
        )
        self.encoder = segmenter.encoder
        self.decoder = segmenter.decoder
        self.segmentation_head = segmenter.segmentation_head
        self.output_stride = 2 ** len(self.encoder.out_channels[1:])
        self.min_input_size = min_input_size(decoder)
        self._open_explanation_gate(EXPLANATION_INIT_BIAS)

        self.classifier_encoder = build_encoder(classifier_encoder or encoder, pretrained=pretrained)
        features = self.classifier_encoder.out_channels[-1]
        self.classification_head = ClassificationHead(features, len(classes), dropout)
        self.severity_head = (
            SeverityHead(features, [severity_scales.get(name, 1.0) for name in severity_targets])
            if severity_targets
            else None
        )

    def _open_explanation_gate(self, bias: float) -> None:
        # The gate starts mostly open (sigmoid(2) ≈ 0.88): early on, encoder 2 sees nearly the whole image and
        # learns the classes quickly; the area penalty then closes the gate where the decision needs nothing.
        conv = next(m for m in self.segmentation_head.modules() if isinstance(m, nn.Conv2d))
        with torch.no_grad():
            conv.bias[MAP_NAMES.index("explanation")] = bias

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` with a fix when ``x`` is not B×1×H×W with H, W divisible by the output stride
        and at least the decoder's minimum size (``min_input_size``)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(
                f"expected a B×1×H×W grayscale batch, got shape {tuple(x.shape)}; convert RGB to grayscale "
                "and add batch and channel axes (x[None, None] for one H×W image)"
            )
        h, w = x.shape[-2:]
        m = self.min_input_size
        if h < m or w < m:
            raise ValueError(
                f"image size {h}×{w} is smaller than {m}×{m}, the smallest decoder {self.config['decoder']!r} "
                f"works at; resize it to at least {m}×{m} (data.image_size={m}) or choose another decoder"
            )
        s = self.output_stride
        if h % s or w % s:
            raise ValueError(
                f"image size {h}×{w} is not divisible by {s}; pad it to {-(-h // s) * s}×{-(-w // s) * s} "
                f"(cxrnet.models.pad_to_multiple(x, {s})) or resize it"
            )

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder 1 → decoder → B×3×H×W logits of (lung, infection, explanation)."""
        return self.segmentation_head(self.decoder(self.encoder(x)))

    def lung_gate(self, lung_logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """B×1×H×W: the dilated predicted lung fields (1 inside) with ``gate_with_lungs``, else all ones.

        The lung fields are where the lung head's probability exceeds 0.5, dilated by ``lung_dilation`` of the
        image width; the mask carries no gradient.
        """
        if not self.gate_with_lungs:
            return torch.ones_like(like)
        # The predicted lung fields as a hard mask (probability > 0.5), detached: the classifier must not be
        # able to redraw the lungs to suit itself, and soft probability tails outside the lungs would let
        # markers and borders through (measured on real films: a fifth of the gate's mass lay there).
        lungs = (lung_logits.detach() > 0).to(like.dtype)
        return dilate_mask(lungs, round(self.lung_dilation * int(like.shape[-1])))

    def gate_map(self, lung_logits: torch.Tensor, explanation: torch.Tensor) -> torch.Tensor:
        """The effective B×1×H×W gate: the explanation map, times :meth:`lung_gate` with ``gate_with_lungs``
        (outside the dilated lung fields the gate is then exactly zero), blurred by ``explanation_smoothing``
        and gated again."""
        sigma = self.explanation_smoothing * int(explanation.shape[-1])
        if not self.gate_with_lungs:
            return gaussian_blur(explanation, sigma)
        lungs = self.lung_gate(lung_logits, explanation)
        gated = explanation * lungs
        return gaussian_blur(gated, sigma) * lungs if sigma > 0 else gated

    def gate(self, x: torch.Tensor, lung_logits: torch.Tensor, explanation: torch.Tensor) -> torch.Tensor:
        """The image as encoder 2 sees it: gated by the explanation (and the dilated lung fields)."""
        return apply_gate(x, self.gate_map(lung_logits, explanation), self.gate_fill)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lung_logits, infection_logits, explanation)``, each B×1×H×W; the explanation is the effective gate
        (:meth:`gate_map`): exactly what encoder 2 is allowed to see."""
        lung_logits, infection_logits, raw = self._raw_maps(x)
        return lung_logits, infection_logits, self.gate_map(lung_logits, raw)

    def _raw_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = self.segment(x)
        return maps[:, 0:1], maps[:, 1:2], torch.sigmoid(maps[:, 2:3])

    def gated_input(self, x: torch.Tensor) -> torch.Tensor:
        """The B×1×H×W image as encoder 2 sees it in :meth:`forward` (for explainers that wrap encoder 2)."""
        return apply_gate(x, self.maps(x)[2], self.gate_fill)

    def ungated_logits(self, x: torch.Tensor, lung_logits: torch.Tensor) -> torch.Tensor:
        """B×C class logits of encoder 2 on the lung fields without the explanation gate (:meth:`lung_gate`).

        The ``cls_ungated`` loss term trains encoder 2 on this view too, so that it recognises the classes from
        the pixels and cannot rely on the shape of the gate alone. The view trains the weights but leaves the
        normalisation statistics alone (:func:`running_stats_kept`): they must describe the gated images that
        encoder 2 sees at inference. Mixing the two views' statistics cost 0.45 of test macro-F1 on the phantoms
        when the gate is small (experiments/explanations/README.md).
        """
        with running_stats_kept(self.classifier_encoder, self.classification_head, self.severity_head):
            return self.forward_heads(
                self.forward_features(apply_gate(x, self.lung_gate(lung_logits, x), self.gate_fill))
            ).class_logits

    def deletion_logits(
        self, x: torch.Tensor, explanation: torch.Tensor, lung_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """B×C class logits of the image with the explanation's region removed, through a frozen encoder 2.

        The view keeps ``lung_gate - explanation`` (``1 - explanation`` without ``lung_logits``): the lung
        fields minus what the map points at. Encoder 2 and its heads run in eval mode without parameter
        gradients, so the ``deletion`` loss term (which asks these logits to lose the true class) trains only
        the map, to cover all the evidence; it cannot teach the classifier to doubt images with a hole.
        """
        keep = (
            1 - explanation if lung_logits is None else self.lung_gate(lung_logits, explanation) - explanation
        )
        with frozen(self.classifier_encoder, self.classification_head, self.severity_head):
            return self.forward_heads(
                self.forward_features(apply_gate(x, keep.clamp(0, 1), self.gate_fill))
            ).class_logits

    def forward_features(self, gated: torch.Tensor) -> torch.Tensor:
        """Encoder 2 on a gated image: B×1×H×W → deepest feature map B×F×h×w."""
        return self.classifier_encoder(gated)[-1]

    def forward_heads(self, features: torch.Tensor) -> Heads:
        """:class:`Heads` (class logits B×C, severity B×K or ``None``) from encoder-2 features."""
        severity = self.severity_head(features) if self.severity_head is not None else None
        return Heads(self.classification_head(features), severity)

    def forward(self, x: torch.Tensor) -> CXRNetOutput:
        """Run the whole network on a normalised B×1×H×W batch (H, W divisible by ``output_stride``)."""
        return self.forward_with_raw_map(x)[0]

    def forward_with_raw_map(self, x: torch.Tensor) -> tuple[CXRNetOutput, torch.Tensor]:
        """:meth:`forward`, plus the B×1×H×W explanation map *before* the lung gate (the sigmoid of the
        explanation logits), in one pass. With ``loss.guide_raw_map=true`` the ``explanation_guidance`` loss
        constrains this map everywhere: on the gated map alone, nothing holds the map down outside the lung
        fields, and the steep fall it then needs at the gate's edge can leave a bright rim along the lung
        borders (experiments/explanations/README.md)."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            self.check_input(x)
        lung_logits, infection_logits, raw = self._raw_maps(x)
        explanation = self.gate_map(lung_logits, raw)
        heads = self.forward_heads(self.forward_features(apply_gate(x, explanation, self.gate_fill)))
        out = CXRNetOutput(lung_logits, infection_logits, explanation, heads.class_logits, heads.severity)
        return out, raw


@contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Run ``modules`` in eval mode without parameter gradients; restore both flags afterwards."""
    present = [m for m in modules if m is not None]
    modes = [m.training for m in present]
    params = [p for m in present for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for m in present:
            m.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in zip(present, modes):
            m.train(mode)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextmanager
def running_stats_kept(*modules: nn.Module | None) -> Iterator[None]:
    """Let the batch-norm layers of ``modules`` normalise with batch statistics as usual in training, but keep
    their running mean, variance and batch count unchanged: for auxiliary views (:meth:`CXRNet.ungated_logits`)
    whose images differ from what the layers see at inference."""
    norms = [
        m
        for module in modules
        if module is not None
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def create_model(
    compile: bool = False,
    encoder_weights: str | os.PathLike[str] | None = None,
    encoder_weights_input: str = "xrv",
    data_mean: float = 0.5,
    data_std: float = 0.25,
    **config: Any,
) -> CXRNet:
    """Build a :class:`CXRNet` from keyword arguments, e.g. ``create_model(**checkpoint_config)``.

    Args:
        compile: compile the network in place with ``torch.compile`` (``nn.Module.compile``: parameter names
            and checkpoints are unchanged; the first forward passes are slower while it compiles). Where
            compiling cannot run (no C++ compiler for the CPU backend, an unsupported platform: see
            :func:`cxrnet.devices.compile_unavailable`) a warning says why and the network stays eager.
            ``model.compile=true`` in the training config. Not stored in checkpoints.
        encoder_weights: a state-dict file for the encoders (``model.encoder_weights``): torchxrayvision's
            DenseNet-121 for the ``densenet121`` encoders, or an smp encoder's own state dict
            (:func:`cxrnet.models.encoder_weights.load_encoder_weights`); the report is kept as
            ``net.encoder_weights``. Not stored in checkpoints (they hold the weights themselves). Skipped for
            a network built on the ``meta`` device, which has no values to load into.
        encoder_weights_input: the pixel convention those weights were trained on: ``"xrv"`` (first
            convolution rescaled for cxrnet's normalised input) or ``"cxrnet"`` (copied unchanged).
        data_mean, data_std: the data normalisation (``data.mean``, ``data.std``), which the rescaling needs.
        config: the arguments of :class:`CXRNet`.

    Raises:
        FileNotFoundError, ValueError: ``encoder_weights`` is missing or does not fit (see
            :func:`~cxrnet.models.encoder_weights.load_encoder_weights`).
    """
    net = CXRNet(**config)
    if encoder_weights and not any(p.is_meta for p in net.parameters()):
        net.encoder_weights = load_encoder_weights(
            net, encoder_weights, convention=encoder_weights_input, mean=data_mean, std=data_std
        )
    if compile:
        reason = compile_unavailable("cuda" if torch.cuda.is_available() else "cpu")
        if reason is not None:
            warnings.warn(f"model.compile=true skipped: {reason}; the network runs uncompiled", stacklevel=2)
        else:
            net.compile()
            net.compiled = True
    return net


def pad_to_multiple(
    x: torch.Tensor, multiple: int = 32, value: float = 0.0
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad B×C×H×W on the bottom and right to the next multiple; returns the padded tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), value=value), (h, w)
