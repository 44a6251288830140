"""The CAM family on encoder 2, computed by ``pytorch-grad-cam`` (``pip install grad-cam``).

Each explainer wraps a :class:`~cxrnet.models.CXRNet` and names a layer of encoder 2 (as in MONAI's
``visualize.class_activation_maps``), and explains encoder 2's decision on the image as it saw it. Encoder 1 and the decoder run without gradients and produce the gated image
(``net.gated_input(x)``); the CAM library then sees a small module ``gated image -> class logits``
(``forward_heads(forward_features(·)).class_logits``) and computes the map at the named layer.

What this module adds around the library, and why:

* **Default layer.** The library needs a module; the default is the module of encoder 2 whose output *is*
  ``net.forward_features`` (its deepest stage: ``classifier_encoder.layer4`` for smp ResNets,
  ``classifier_encoder.model.blocks.5`` for ``tu-mobilenetv3_small_100``), found by one tiny probe forward
  pass when the explainer is built. ``layer_name`` names it; any other layer is given by dotted name.
* **No trace on the model.** The library calls ``model.eval()`` and ``model.zero_grad()`` and
  back-propagates into every parameter. Here the network's train/eval flags are restored afterwards, its
  parameters are frozen for the call and their ``requires_grad`` and ``.grad`` put back as they were; the
  gradient flows from the gated *image* instead, so frozen networks work too.
* **One-channel, batched, mixed precision.** Inputs are B×1×H×W (the library handles any channel count);
  activations and logits are cast to float32 before the library turns them into numpy arrays, so the
  explainers also run under ``torch.autocast`` in bfloat16.
* **Maps as tensors.** The library returns numpy B×H×W maps (min-max scaled with an epsilon); they come
  back as float32 tensors on the images' device, min-max normalised per image to exactly [0, 1]
  (:func:`~cxrnet.explain.native.normalize_per_image`; a map with no positive evidence is all zeros).

Gradient-free methods (Score-CAM, Eigen-CAM) run entirely under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace
from typing import Any, ClassVar

import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam import score_cam as _score_cam_module
from pytorch_grad_cam.base_cam import BaseCAM
from threadpoolctl import threadpool_limits
from torch import nn

from cxrnet.explain.layers import ClassIndex, gated_input, resolve_layer
from cxrnet.explain.native import eval_mode, normalize_per_image

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


class _GatedClassifier(nn.Module):
    """Encoder 2 and the class head as one module: B×1×H×W gated image → B×C float32 class logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, gated: torch.Tensor) -> torch.Tensor:
        # float32: the library calls .numpy() on the logits, which bfloat16 (autocast) does not support
        return self.net.forward_heads(self.net.forward_features(gated)).class_logits.float()


class _ClassLogit:
    """Library target: the logit of one class (``ClassifierOutputTarget``, with a bounds check)."""

    def __init__(self, index: int, batch: int) -> None:
        self.index = index
        self.batch = batch

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[-1]
        if self.index >= classes:
            raise ValueError(
                f"class_index must be None, one class index in [0, {classes}) or one per image "
                f"({self.batch}); got {self.index}"
            )
        return logits[..., self.index]


def _targets(class_index: ClassIndex, batch: int) -> list[_ClassLogit] | None:
    """One library target per image, or ``None`` for the predicted class (the library's argmax)."""
    if class_index is None:
        return None
    index = torch.as_tensor(class_index, dtype=torch.long).flatten()
    if index.numel() == 1:
        index = index.expand(batch)
    if index.numel() != batch or (index < 0).any():
        raise ValueError(
            f"class_index must be None, one non-negative class index or one per image ({batch}); "
            f"got {class_index!r}"
        )
    return [_ClassLogit(int(i), batch) for i in index]


def _float(transform: ReshapeTransform | None) -> ReshapeTransform:
    """The reshape transform the library applies to activations and gradients, then a cast to float32."""
    if transform is None:
        return lambda tensor: tensor.float()
    return lambda tensor: transform(tensor).float()


@contextmanager
def _parameters_untouched(net: nn.Module) -> Iterator[None]:
    """Freeze every parameter for the block, then restore each one's ``requires_grad`` and ``.grad``.

    The library back-propagates with ``loss.backward()`` and clears gradients with ``model.zero_grad()``;
    frozen parameters receive nothing, and gradients the caller had accumulated survive.
    """
    saved = [(p, p.requires_grad, p.grad) for p in net.parameters()]
    for p, _, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad


def _probe_layers(net: nn.Module) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    """Run encoder 2 and its heads once on a tiny zero image and record what each submodule returned.

    Returns the deepest feature map (``net.forward_features``) and, per dotted module name, the outputs of
    each call of that module, in call order. Modules that did not run are absent.
    """
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    size = max(64, 2 * int(getattr(net, "output_stride", 32)))
    outputs: dict[str, list[Any]] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: outputs.setdefault(name, []).append(out))
        for name, module in net.named_modules()
        if name
    ]
    try:
        with eval_mode(net), torch.no_grad():
            features = net.forward_features(torch.zeros(1, 1, size, size, device=device))
            net.forward_heads(features)
    finally:
        for handle in handles:
            handle.remove()
    return features, outputs


def _choose_layer(
    net: nn.Module, target_layer: nn.Module | str | None, reshape_transform: ReshapeTransform | None
) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` of the layer to explain; see :class:`CAMExplainer` for the rules."""
    features, outputs = _probe_layers(net)
    if target_layer is None:
        deepest = [name for name, outs in outputs.items() if len(outs) == 1 and outs[0] is features]
        if not deepest:
            raise ValueError(
                "no single module of encoder 2 returns net.forward_features' feature map; name a layer with "
                "target_layer='classifier_encoder.<stage>'"
            )
        name = min(deepest, key=lambda n: n.count("."))  # the outermost: the stage, not its last block
        return name, net.get_submodule(name)
    module = resolve_layer(net, target_layer)
    name = next(n for n, m in net.named_modules() if m is module)
    calls = outputs.get(name, [])
    if not calls:
        raise ValueError(
            f"target layer {name!r} did not run in encoder 2 (forward_features / forward_heads); "
            "choose a module of net.classifier_encoder"
        )
    if len(calls) > 1:
        raise ValueError(
            f"target layer {name!r} runs {len(calls)} times in one forward pass (a shared module, e.g. an "
            "activation reused inside a block); the CAM would mix its calls, so name the enclosing block"
        )
    if reshape_transform is None and not (isinstance(calls[0], torch.Tensor) and calls[0].ndim == 4):
        shape = tuple(calls[0].shape) if isinstance(calls[0], torch.Tensor) else type(calls[0]).__name__
        raise ValueError(
            f"target layer {name!r} returns {shape}; a CAM needs a B×C×h×w feature map: choose a "
            "convolutional stage of encoder 2 (or pass reshape_transform for token outputs)"
        )
    return name, module


@contextmanager
def _silent_progress() -> Iterator[None]:
    # The library's Score-CAM draws a tqdm progress bar per image on stderr; an explainer called inside an
    # evaluation loop must not. Swapping the module's tqdm is not thread-safe: do not run two Score-CAMs
    # in threads of one process.
    original = _score_cam_module.tqdm
    _score_cam_module.tqdm = SimpleNamespace(tqdm=lambda iterable, *_args, **_kwargs: iterable)
    try:
        yield
    finally:
        _score_cam_module.tqdm = original


class _QuietScoreCAM(pgc.ScoreCAM):
    def get_cam_weights(self, *args: Any, **kwargs: Any) -> Any:
        with _silent_progress():
            return super().get_cam_weights(*args, **kwargs)


class CAMExplainer:
    """A ``pytorch-grad-cam`` method on encoder 2 of CXRNet, behind the cxrnet explainer interface.

    Args:
        net: a :class:`~cxrnet.models.CXRNet` (or a module with ``gated_input``, ``forward_features`` and
            ``forward_heads``, see :mod:`cxrnet.explain.layers`).
        target_layer: a module of encoder 2 or its dotted name (``"classifier_encoder.layer3"``); ``None``
            (default) is encoder 2's deepest stage, the module whose output ``net.forward_features``
            returns. The layer must run exactly once per forward pass and return a B×C×h×w map.
        reshape_transform: turns the layer's output (and its gradient) into B×C×h×w, for token outputs
            (vision transformers); see ``pytorch_grad_cam.utils.reshape_transforms``.

    Attributes:
        layer_name: dotted name of the explained layer in ``net``.
        layer: the explained module.

    Call it with B×1×H×W normalised images to get B×H×W maps in [0, 1] at the input size.
    """

    method: ClassVar[type[BaseCAM]]
    images_per_call: ClassVar[int | None] = None  # None: the whole batch in one library call
    single_threaded_blas: ClassVar[bool] = False  # numpy linear algebra on one thread during the call

    def __init__(
        self,
        net: nn.Module,
        target_layer: nn.Module | str | None = None,
        reshape_transform: ReshapeTransform | None = None,
    ) -> None:
        self.net = net
        self.reshape_transform = reshape_transform
        self.layer_name, self.layer = _choose_layer(net, target_layer, reshape_transform)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer_name={self.layer_name!r})"

    def __call__(self, images: torch.Tensor, class_index: ClassIndex = None) -> torch.Tensor:
        """Class activation maps of the predicted (or given) class.

        Args:
            images: B×1×H×W normalised images (H, W multiples of the network's output stride).
            class_index: ``None`` for each image's predicted class, one index for all images, or one per image.

        Returns:
            B×H×W float32 tensor in [0, 1] at the input resolution, on the images' device (the library's
            bilinear upsampling of the layer's map, then per-image min-max; no positive evidence: all zeros).

        Raises:
            ValueError: a malformed batch or class index.
        """
        if hasattr(self.net, "check_input"):
            self.net.check_input(images)
        batch = images.shape[0]
        targets = _targets(class_index, batch)
        step = self.images_per_call or batch
        maps = []
        with eval_mode(self.net), _parameters_untouched(self.net):
            gated = gated_input(self.net, images)
            for start in range(0, batch, step):
                chunk_targets = None if targets is None else targets[start : start + step]
                maps.append(self._library_maps(gated[start : start + step], chunk_targets))
        return normalize_per_image(torch.cat(maps).to(device=images.device, dtype=torch.float32))

    def _library_maps(self, gated: torch.Tensor, targets: Sequence[_ClassLogit] | None) -> torch.Tensor:
        """One library call on a chunk of gated images → B×H×W float32 CPU tensor."""
        cam = self.make_cam(_GatedClassifier(self.net))
        blas = threadpool_limits(limits=1, user_api="blas") if self.single_threaded_blas else nullcontext()
        try:
            with torch.set_grad_enabled(cam.uses_gradients), blas:
                inputs = gated.detach().float().requires_grad_(cam.uses_gradients)
                grayscale = cam(input_tensor=inputs, targets=None if targets is None else list(targets))
        finally:
            cam.activations_and_grads.release()  # the library's hooks, however the call ended
        return torch.from_numpy(grayscale).float()

    def make_cam(self, model: nn.Module) -> BaseCAM:
        """The library object for ``model`` (the gated classifier) at :attr:`layer`."""
        return self.method(
            model=model, target_layers=[self.layer], reshape_transform=_float(self.reshape_transform)
        )


class GradCAM(CAMExplainer):
    """Grad-CAM (Selvaraju et al., 2017): activations weighted by their spatially averaged gradients."""

    method = pgc.GradCAM


class GradCAMPlusPlus(CAMExplainer):
    """Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighted pixel by pixel (closed form)."""

    method = pgc.GradCAMPlusPlus


class XGradCAM(CAMExplainer):
    """XGrad-CAM (Fu et al., 2020): gradients weighted by the normalised activations, summed per channel."""

    method = pgc.XGradCAM


class LayerCAM(CAMExplainer):
    """LayerCAM (Jiang et al., 2021): each activation weighted by its own positive gradient.

    Keeps more spatial detail than Grad-CAM, which makes it useful on shallower layers of encoder 2.
    """

    method = pgc.LayerCAM


class EigenCAM(CAMExplainer):
    """Eigen-CAM (Muhammad & Yeasin, 2020): the first principal component of the layer's activations.

    Gradient-free and **class-agnostic**: ``class_index`` is checked and otherwise ignored, one map per
    image. The sign of a principal component is arbitrary (SVD), so on some images the map highlights the
    complement of the salient region; the library does not correct it.
    """

    method = pgc.EigenCAM
    # The library's per-image SVD of the (h·w)×C activations is small; multi-threaded OpenBLAS next to
    # torch's threads made it 30-60x slower on a busy 2-core machine (5 s instead of 0.09 s for 8 images).
    single_threaded_blas = True


class ScoreCAM(CAMExplainer):
    """Score-CAM (Wang et al., 2020): each channel weighted by the class score of the image masked by it.

    Gradient-free: for every image, the C channels of the layer are upsampled, min-max scaled and multiplied
    into the gated image, and encoder 2 scores the C masked images (in batches of ``batch_size``, under
    ``torch.no_grad``); the softmax of the class logits over the channels are the channel weights. Cost: C
    forward passes of encoder 2 per image (512 for a ResNet-18's last stage), so it is by far the slowest.

    Args:
        net: see :class:`CAMExplainer`.
        target_layer: see :class:`CAMExplainer`.
        reshape_transform: see :class:`CAMExplainer`.
        batch_size: masked images per forward pass of encoder 2.
    """

    method = _QuietScoreCAM
    images_per_call = 1  # the library builds all C masked copies of a call's images at once

    def __init__(
        self,
        net: nn.Module,
        target_layer: nn.Module | str | None = None,
        reshape_transform: ReshapeTransform | None = None,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of masked images, got {batch_size}")
        super().__init__(net, target_layer, reshape_transform)
        self.batch_size = batch_size

    def make_cam(self, model: nn.Module) -> BaseCAM:
        """The library's Score-CAM with this explainer's ``batch_size``."""
        cam = super().make_cam(model)
        cam.batch_size = self.batch_size
        return cam


__all__ = [
    "CAMExplainer",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
]
