"""Hand-written Grad-CAM and Grad-CAM++: the test oracle for the library-backed explainers.

cxrnet's explainers come from pytorch-grad-cam (:mod:`cxrnet.explain.cams`); these independent
implementations of the two papers' formulas check that the wrapping explains the same thing.
Gradients are taken with ``torch.autograd.grad`` w.r.t. the layer's activations, so no ``.grad`` is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrnet.explain.layers import ClassIndex, gated_input, resolve_layer
from cxrnet.explain.native import eval_mode, normalize_per_image


def _last_tensor(output: Any) -> torch.Tensor:
    """A layer's activation: the tensor it returns, or the last (deepest) one of a list/tuple of features."""
    if isinstance(output, (list, tuple)):
        output = [o for o in output if isinstance(o, torch.Tensor)][-1]
    return output


@contextmanager
def _capture(layer: nn.Module | None, store: list[torch.Tensor]) -> Iterator[None]:
    """Record ``layer``'s output in ``store`` while the block runs; the hook is removed however it ends."""
    if layer is None:
        yield
        return
    handle = layer.register_forward_hook(lambda _module, _inputs, output: store.append(_last_tensor(output)))
    try:
        yield
    finally:
        handle.remove()


def _class_indices(class_index: ClassIndex, logits: torch.Tensor) -> torch.Tensor:
    batch, classes = logits.shape
    if class_index is None:
        return logits.argmax(dim=1)
    index = torch.as_tensor(class_index, device=logits.device, dtype=torch.long).flatten()
    if index.numel() == 1:
        index = index.expand(batch)
    if index.numel() != batch or (index < 0).any() or (index >= classes).any():
        raise ValueError(
            f"class_index must be None, one class index in [0, {classes}) or one per image ({batch}); "
            f"got {class_index!r}"
        )
    return index


class GradCAM:
    """Grad-CAM (Selvaraju et al., 2017): activations weighted by their spatially averaged gradients.

    Args:
        net: a :class:`~cxrnet.models.CXRNet` (or a module with the same four methods).
        target_layer: a module of encoder 2, or its dotted name; ``None`` (default) uses the deepest feature
            map, the output of ``net.forward_features``, which works for every smp and ``tu-`` timm encoder.
            A layer returning a list of feature maps contributes its last one.

    Call it with B×1×H×W normalised images to get B×H×W maps in [0, 1].
    """

    def __init__(self, net: nn.Module, target_layer: nn.Module | str | None = None) -> None:
        self.net = net
        self.target_layer = None if target_layer is None else resolve_layer(net, target_layer)

    def __call__(self, images: torch.Tensor, class_index: ClassIndex = None) -> torch.Tensor:
        """Class activation maps of the predicted (or given) class.

        Args:
            images: B×1×H×W normalised images (H, W multiples of the network's output stride).
            class_index: ``None`` for each image's predicted class, one index for all images, or one per image.

        Returns:
            B×H×W float tensor in [0, 1] at the input resolution (bilinear upsampling of the layer's map, then
            per-image min-max; a map with no positive evidence is all zeros).
        """
        if hasattr(self.net, "check_input"):
            self.net.check_input(images)
        store: list[torch.Tensor] = []
        with eval_mode(self.net):
            gated = gated_input(self.net, images).detach().requires_grad_(True)
            with torch.enable_grad(), _capture(self.target_layer, store):
                features = self.net.forward_features(gated)
                logits = self.net.forward_heads(features).class_logits
            if self.target_layer is None:
                activations = features
            elif store:
                activations = store[-1]
            else:
                raise ValueError(
                    f"target layer {type(self.target_layer).__name__} did not run in encoder 2 "
                    "(forward_features / forward_heads); choose a module of net.classifier_encoder"
                )
            if activations.ndim != 4:
                raise ValueError(
                    f"target layer output has shape {tuple(activations.shape)}; Grad-CAM needs a B×C×h×w "
                    "feature map (choose a convolutional stage of encoder 2)"
                )
            index = _class_indices(class_index, logits.detach())
            score = logits.gather(1, index[:, None]).sum()
            (gradients,) = torch.autograd.grad(score, activations)
        activations, gradients = activations.detach(), gradients.detach()
        weights = self.channel_weights(activations, gradients)
        cam = F.relu((weights[:, :, None, None] * activations).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return normalize_per_image(cam[:, 0].float())

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """B×K weights of the K activation channels: the gradients averaged over space."""
        return gradients.mean(dim=(2, 3))


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighted pixel by pixel.

    Uses the closed form for an exponential score, as ``pytorch-grad-cam`` does:
    ``α = g² / (2g² + ΣA·g³)``, weights ``w_k = Σ_ij α_ij relu(g_ij)``. Same arguments as :class:`GradCAM`.
    """

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """B×K weights of the K activation channels (Grad-CAM++)."""
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        total = activations.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + total * g3 + 1e-7)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(gradients)).sum(dim=(2, 3))
