"""Encoders and decoders by name: one place that knows which names are valid.

Every smp encoder name works (``resnet18``, ``densenet121``, ``efficientnet-b0``, ...), and any timm model
through smp's ``tu-`` prefix (``tu-convnext_tiny``). Decoders are smp architectures; two have constraints
(``DILATED_DECODERS``, ``DECODER_MIN_SIZE``): ``deeplabv3plus`` and ``pan`` need an encoder with a dilated mode
(not densenet), and ``pan`` images of at least 128×128.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import segmentation_models_pytorch as smp
import timm
from segmentation_models_pytorch.encoders import encoders as _SMP_ENCODERS
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

# Decoder names accepted by ``model.decoder`` → smp architecture names. Only architectures whose
# segmentation head returns maps at the input resolution are listed.
DECODERS: dict[str, str] = {
    "unet": "unet",
    "unetplusplus": "unetplusplus",
    "fpn": "fpn",
    "deeplabv3plus": "deeplabv3plus",
    "linknet": "linknet",
    "manet": "manet",
    "pan": "pan",
}

# Decoders that run encoder 1 dilated (output stride 16, smp's default for them): encoders without a dilated
# mode (smp's densenet, vgg, xception and inception families) cannot serve them.
DILATED_DECODERS = frozenset({"deeplabv3plus", "pan"})

# Smallest image side of decoders that need more than the output stride: PAN's pyramid attention halves the
# stride-16 features three more times, so they must be at least 8 pixels wide (128-pixel images).
DECODER_MIN_SIZE: dict[str, int] = {"pan": 128}

TIMM_PREFIX = "tu-"


def list_encoders() -> list[str]:
    """Names accepted by ``model.encoder``: the smp encoders; any timm model also works as ``tu-<name>``."""
    return sorted(_SMP_ENCODERS)


def list_decoders() -> list[str]:
    """Names accepted by ``model.decoder``."""
    return sorted(DECODERS)


def min_input_size(decoder: str) -> int:
    """Smallest image height and width, in pixels, that ``decoder`` works at (0: any multiple of the stride)."""
    return DECODER_MIN_SIZE.get(decoder, 0)


def check_encoder_name(name: str) -> None:
    """Raise ``ValueError`` listing the valid names when ``name`` is not a known encoder."""
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX) :]
        if timm.is_model(timm_name):
            return
        close = timm.list_models(f"*{timm_name.split('_')[0]}*")[:20]
        raise ValueError(
            f"unknown timm model {timm_name!r} in encoder {name!r}; similar timm names: {close}. "
            "See timm.list_models() for all of them."
        )
    if name not in _SMP_ENCODERS:
        raise ValueError(
            f"unknown encoder {name!r}; valid smp encoders: {', '.join(list_encoders())}; "
            f"or any timm model as '{TIMM_PREFIX}<timm name>' (e.g. 'tu-convnext_tiny')."
        )


def check_decoder_name(name: str) -> None:
    """Raise ``ValueError`` listing the valid names when ``name`` is not a known decoder."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; valid decoders: {', '.join(list_decoders())}")


def _with_offline_hint(build: Callable[[], nn.Module], name: str, pretrained: bool) -> nn.Module:
    try:
        return build()
    except (OSError, RuntimeError, ConnectionError) as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load pretrained ImageNet weights for encoder {name!r} ({err}). Downloading them "
            "needs internet access (or the file already in the torch/huggingface cache). Train from random "
            "initialisation with model.pretrained=false, or copy the weights into the cache first."
        ) from err


def build_segmentation_model(
    encoder: str, decoder: str, out_channels: int, *, pretrained: bool = False, **decoder_kwargs: Any
) -> nn.Module:
    """An smp segmentation model for one-channel input (encoder → decoder → head at input resolution).

    Args:
        encoder: encoder name (see :func:`list_encoders`).
        decoder: decoder name (see :func:`list_decoders`).
        out_channels: number of output maps.
        pretrained: load ImageNet weights (needs internet or a filled cache).
        **decoder_kwargs: passed to the smp architecture (e.g. ``decoder_channels``).

    Returns:
        The smp model; use its ``encoder``, ``decoder`` and ``segmentation_head``.
    """
    check_encoder_name(encoder)
    check_decoder_name(decoder)
    try:
        return _with_offline_hint(
            lambda: smp.create_model(
                DECODERS[decoder],
                encoder_name=encoder,
                encoder_weights="imagenet" if pretrained else None,
                in_channels=1,
                classes=out_channels,
                **decoder_kwargs,
            ),
            encoder,
            pretrained,
        )
    except ValueError as err:
        if decoder not in DILATED_DECODERS or "dilated" not in str(err):
            raise
        undilated = ", ".join(name for name in list_decoders() if name not in DILATED_DECODERS)
        raise ValueError(
            f"decoder {decoder!r} runs the encoder dilated (output stride 16), which encoder {encoder!r} cannot "
            f"({err}); choose a decoder that does not dilate ({undilated}) or another encoder"
        ) from err


def build_encoder(name: str, *, in_channels: int = 1, depth: int = 5, pretrained: bool = False) -> nn.Module:
    """A feature encoder returning ``depth + 1`` feature maps; ``encoder.out_channels`` gives their widths."""
    check_encoder_name(name)
    return _with_offline_hint(
        lambda: get_encoder(
            name, in_channels=in_channels, depth=depth, weights="imagenet" if pretrained else None
        ),
        name,
        pretrained,
    )
