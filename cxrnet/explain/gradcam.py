"""Grad-CAM and Grad-CAM++ on encoder 2, the classifier of CXRNet.

An explainer wraps a network and names a layer (as in MONAI's ``visualize.class_activation_maps`` and
``pytorch-grad-cam``). The network needs the interface of :class:`~cxrnet.models.CXRNet`:
``gated_input(x) -> B×1×H×W`` (the image as encoder 2 sees it), ``forward_features(gated) -> B×F×h×w`` and
``forward_heads(features) -> Heads(class_logits, severity)``.

The class score is differentiated along the *gated-input path* only: encoder 1 and the decoder run without
gradients and produce the gated image exactly as ``CXRNet.forward`` does; encoder 2 and the heads then run on
that image with gradients. Grad-CAM thus explains encoder 2's decision on what it saw, on equal terms with
the native map. Gradients are taken with ``torch.autograd.grad`` w.r.t. the layer's activations, so no
``.grad`` is written to any parameter and frozen weights work too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrnet.explain.native import eval_mode, normalize_per_image

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
