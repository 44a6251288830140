"""Where a CAM looks in CXRNet: the gated input of encoder 2 and its layers, found by module or name.

The class score of a CAM is differentiated along the *gated-input path* only: encoder 1 and the decoder run
without gradients and produce the gated image exactly as ``CXRNet.forward`` does (:func:`gated_input`);
encoder 2 and the heads then run on that image with gradients. A CAM thus explains encoder 2's decision on
what it saw, on equal terms with the native map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ClassIndex = int | Sequence[int] | torch.Tensor | None


def gated_input(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The B×1×H×W image as encoder 2 sees it (:meth:`CXRNet.gated_input`), without gradients."""
    with torch.no_grad():
        return net.gated_input(images)


def resolve_layer(net: nn.Module, layer: nn.Module | str) -> nn.Module:
    """A submodule of ``net`` given as a module or a dotted name (``"classifier_encoder.model.blocks.5"``)."""
    if isinstance(layer, nn.Module):
        if not any(module is layer for module in net.modules()):
            raise ValueError(f"target layer {type(layer).__name__} is not a submodule of the network")
        return layer
    try:
        return net.get_submodule(layer)
    except AttributeError as err:
        names = [name for name, _ in net.named_modules() if name.startswith("classifier_encoder")][:12]
        raise ValueError(
            f"no layer {layer!r} in the network ({err}); name a module of encoder 2, e.g. one of {names} "
            "(list them with [n for n, _ in net.named_modules()]), or pass target_layer=None for its deepest stage"
        ) from err
