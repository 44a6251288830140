"""The network's own explanation: the E-D-E map ``e`` that gated what encoder 2 saw.

CXRNet classifies ``x·e`` (see :mod:`cxrnet.models.cxrnet`), so ``e`` is faithful by construction: it is the
only part of the image the decision could use. It comes out of the decoder at input resolution, in [0, 1];
:func:`native_explanation` min-max rescales it per image so that it lives on the same scale as a Grad-CAM map.
The explanation metrics are invariant to that rescaling (they rank pixels, and the mass share rescales
itself), so it only matters for display and for comparing maps pixel by pixel.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def normalize_per_image(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max rescale each map of a batch to [0, 1].

    Args:
        maps: B×H×W maps, any range.
        eps: a map whose range is below this is flat and becomes all zeros (no pixel is preferred).

    Returns:
        B×H×W float tensor in [0, 1], each map spanning [0, 1] unless it is flat.
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > eps, (flat - low) / span.clamp_min(eps), torch.zeros_like(flat))
    return scaled.view_as(maps)


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Run ``net`` in eval mode and restore every submodule's train/eval flag afterwards.

    Explaining a network in training mode would update BatchNorm statistics and sample dropout; this keeps the
    model's state as the caller left it.
    """
    modes = [(module, module.training) for module in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for module, training in modes:
            module.training = training


def native_explanation(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The E-D-E explanation map of each image, rescaled to [0, 1] per image.

    Args:
        net: a :class:`~cxrnet.models.CXRNet` (anything whose output has an ``explanation`` B×1×H×W field).
        images: B×1×H×W normalised images (H, W multiples of the network's output stride).

    Returns:
        B×H×W float tensor in [0, 1] at the input resolution, on the images' device; see
        :func:`normalize_per_image`.
    """
    with eval_mode(net), torch.no_grad():
        explanation = net(images).explanation
    return normalize_per_image(explanation[:, 0].float())


class NativeExplainer:
    """The native map behind the same interface as the CAM explainers (:mod:`cxrnet.explain.cams`).

    Args:
        net: a :class:`~cxrnet.models.CXRNet`.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def __call__(
        self, images: torch.Tensor, class_index: int | Sequence[int] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """B×1×H×W images → B×H×W maps in [0, 1].

        ``class_index`` is accepted for interface compatibility and ignored: the E-D-E map is one region that
        is sufficient for the decision, not a map per class.
        """
        return native_explanation(self.net, images)
