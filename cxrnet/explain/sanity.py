"""Sanity checks for saliency maps (Adebayo et al., 2018): does the map depend on what the model learned?

A map that looks the same after the model's weights (or its training labels) were randomised explains the
image, not the model. Each check returns, per image, the Spearman rank correlation (and optionally the SSIM)
between the map of the trained model and the map of the randomised one: **low similarity passes**.

Model randomisation (:func:`model_randomisation_check`): a deep copy with some parts re-initialised
(:func:`randomised_copy`). Which parts matter depends on where the map comes from:

* the CAM family (Grad-CAM, Score-CAM, ...) explains encoder 2: randomise ``"classifier"`` (encoder 2 and
  its heads);
* the native map comes out of encoder 1 and the decoder, which ``"classifier"`` leaves untouched: its map is
  *identical* after that randomisation, by design, not by failure. Randomise ``"explanation"`` (encoder 1,
  the decoder and the segmentation head that draws the explanation map) for it, or ``"all"``.

This is the cascading question of Adebayo et al. asked per branch of the Encoder-Decoder-Encoder network.

Label randomisation (:func:`label_randomisation_check`): the same network architecture trained on shuffled
labels, against the one trained on the true labels. The native map is one map per image, not a map per
class, so "the map of another class" cannot test it; a model trained on randomised labels can. Training that
second model is the caller's job (the tests train a tiny CXRNet for a few dozen steps on a synthetic blob
task, once with true and once with shuffled labels, from the same initialisation).

Class sensitivity (:func:`class_sensitivity_check`): for class-discriminative explainers, the map of the
predicted class against the map of the least likely (or a random other) class of the same model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from cxrnet.explain import get_explainer
from cxrnet.explain.faithfulness import class_logits
from cxrnet.explain.native import eval_mode

Explainer = Callable[..., torch.Tensor]
ExplainerSpec = str | Callable[[nn.Module], Explainer]

# Attributes of a CXRNet re-initialised by randomised_copy, per part.
PARTS: dict[str, tuple[str, ...]] = {
    "classifier": ("classifier_encoder", "classification_head", "severity_head"),
    "explanation": ("encoder", "decoder", "segmentation_head"),
    "all": (
        "encoder",
        "decoder",
        "segmentation_head",
        "classifier_encoder",
        "classification_head",
        "severity_head",
    ),
}


class SanityResult(NamedTuple):
    """Per-image similarity of two sets of maps (B images); low values pass a sanity check.

    Attributes:
        rank_correlation: (B,) Spearman rank correlation in [-1, 1]. Where a map is flat (constant, e.g. a
            CAM with no positive evidence for the class) Spearman is undefined; it is then 1 if both maps
            are flat (they agree: nothing is salient) and 0 if only one is (it shares no ranking with the
            other). :func:`rank_correlation` itself returns NaN there.
        ssim: (B,) structural similarity of the [0, 1] maps, or ``None`` when not computed.
        class_index: (B,) the class explained in each image (for class-agnostic maps: the predicted one).
    """

    rank_correlation: torch.Tensor
    ssim: torch.Tensor | None
    class_index: torch.Tensor


def _as_batch(maps: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{name} must be B×H×W maps (or one H×W map), got shape {array.shape}")
    return array.astype(np.float64)


def rank_correlation(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps, ties given their average rank.

    Args:
        a: B×H×W maps (or one H×W map).
        b: maps of the same shape.

    Returns:
        (B,) float64 tensor in [-1, 1]; NaN for a pair where either map is flat (constant), for which the
        correlation is undefined. Equal to ``scipy.stats.spearmanr`` on each flattened pair.
    """
    x, y = _as_batch(a, "a"), _as_batch(b, "b")
    if x.shape != y.shape:
        raise ValueError(
            f"maps of shapes {x.shape} and {y.shape} cannot be compared; resize one to the other"
        )
    rx = rankdata(x.reshape(len(x), -1), axis=1)
    ry = rankdata(y.reshape(len(y), -1), axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denominator > 0, (rx * ry).sum(axis=1) / denominator, np.nan)
    return torch.from_numpy(np.clip(rho, -1.0, 1.0))


def rank_agreement(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    """:func:`rank_correlation` with flat maps scored: 0 against a map that is not flat, 1 against a flat one.

    A flat map (e.g. a CAM with no positive evidence) has no ranking, so Spearman's ρ is undefined; for a
    sanity check, a flat map shares nothing with a map that ranks its pixels, and agrees with another flat one.
    """
    rho = rank_correlation(a, b)
    flat_a, flat_b = (np.ptp(_as_batch(m, "maps").reshape(len(rho), -1), axis=1) == 0 for m in (a, b))
    return torch.where(
        torch.from_numpy(flat_a | flat_b), torch.from_numpy(flat_a & flat_b).to(rho.dtype), rho
    )


def structural_similarity(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    """SSIM (``skimage.metrics.structural_similarity``, 7×7 window) of each pair of [0, 1] maps.

    Args:
        a: B×H×W maps in [0, 1] (or one H×W map), H and W at least 7.
        b: maps of the same shape.

    Returns:
        (B,) float64 tensor; 1 for identical maps.
    """
    from skimage.metrics import structural_similarity as skimage_ssim  # slow to import; only SSIM needs it

    x, y = _as_batch(a, "a"), _as_batch(b, "b")
    if x.shape != y.shape:
        raise ValueError(
            f"maps of shapes {x.shape} and {y.shape} cannot be compared; resize one to the other"
        )
    return torch.tensor([skimage_ssim(i, j, data_range=1.0) for i, j in zip(x, y)], dtype=torch.float64)


def randomised_copy(net: nn.Module, part: str = "classifier", seed: int = 0) -> nn.Module:
    """A deep copy of ``net`` with one part re-initialised, as a freshly built network would have it.

    Every submodule of the part that has ``reset_parameters`` (convolutions, linear layers, normalisation
    layers, whose running statistics reset too) draws new weights; any parameter no such module owns is
    drawn from N(0, 0.02²). The global random state is left as it was.

    Args:
        net: a :class:`~cxrnet.models.CXRNet` (any module with the attributes named in :data:`PARTS`).
        part: ``"classifier"`` (encoder 2 and its heads: what the CAM family explains), ``"explanation"``
            (encoder 1, the decoder and the segmentation head: what the native map comes from) or ``"all"``.
        seed: seed of the new weights; the same seed gives the same copy.

    Returns:
        The randomised copy, in the train/eval mode of ``net``; ``net`` itself is unchanged.

    Raises:
        ValueError: an unknown part, or a network with none of its modules.
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; valid parts: {', '.join(PARTS)}")
    modules = [getattr(net, name) for name in PARTS[part] if isinstance(getattr(net, name, None), nn.Module)]
    if not modules:
        raise ValueError(f"the network has none of the modules of part {part!r}: {', '.join(PARTS[part])}")
    clone = copy.deepcopy(net)
    devices = sorted({p.device.index or 0 for p in clone.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.no_grad():
            for name in PARTS[part]:
                module = getattr(clone, name, None)
                if isinstance(module, nn.Module):
                    _reinitialise(module)
    return clone


def _reinitialise(root: nn.Module) -> None:
    covered: set[int] = set()
    for module in root.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            covered.update(id(p) for p in module.parameters(recurse=False))
    for module in root.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in covered:
                nn.init.normal_(p, std=0.02)
                covered.add(id(p))


def _explainer(spec: ExplainerSpec, net: nn.Module, kwargs: dict[str, Any]) -> Explainer:
    return get_explainer(spec, net, **kwargs) if isinstance(spec, str) else spec(net)


def _predicted(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with eval_mode(net), torch.no_grad():
        return class_logits(net, images).argmax(dim=1)


def compare_maps(
    a: torch.Tensor, b: torch.Tensor, class_index: torch.Tensor, ssim: bool = True
) -> SanityResult:
    """:class:`SanityResult` of two B×H×W batches of maps in [0, 1] (flat maps: see its ``rank_correlation``)."""
    return SanityResult(rank_agreement(a, b), structural_similarity(a, b) if ssim else None, class_index)


def _class_tensor(
    class_index: int | Sequence[int] | torch.Tensor | None, net: nn.Module, images: torch.Tensor
) -> torch.Tensor:
    if class_index is None:
        return _predicted(net, images)
    index = torch.as_tensor(class_index, dtype=torch.long, device=images.device).flatten()
    return index.expand(images.shape[0]) if index.numel() == 1 else index


def model_randomisation_check(
    net: nn.Module,
    explainer: ExplainerSpec,
    images: torch.Tensor,
    part: str = "classifier",
    seed: int = 0,
    class_index: int | Sequence[int] | torch.Tensor | None = None,
    ssim: bool = True,
    **explainer_kwargs: Any,
) -> SanityResult:
    """Maps of ``net`` against maps of a copy with ``part`` re-initialised (:func:`randomised_copy`).

    Args:
        net: a trained :class:`~cxrnet.models.CXRNet`.
        explainer: a name of :data:`cxrnet.explain.EXPLAINERS` or a factory ``net -> explainer``.
        images: B×1×H×W normalised images.
        part: see :func:`randomised_copy`; ``"classifier"`` for the CAM family, ``"explanation"`` for the
            native map (which ``"classifier"`` does not change).
        seed: seed of the re-initialised weights.
        class_index: the class to explain in both models; ``None`` for the *trained* model's prediction
            (the randomised model predicts something else, and must explain the same class).
        ssim: also compute the SSIM of each pair.
        **explainer_kwargs: passed to :func:`~cxrnet.explain.get_explainer` (e.g. ``target_layer`` by name,
            which resolves in the copy too).

    Returns:
        :class:`SanityResult`; a map that depends on the randomised weights has a low rank correlation.
    """
    index = _class_tensor(class_index, net, images)
    randomised = randomised_copy(net, part, seed)
    trained_maps = _explainer(explainer, net, explainer_kwargs)(images, class_index=index)
    random_maps = _explainer(explainer, randomised, explainer_kwargs)(images, class_index=index)
    return compare_maps(trained_maps, random_maps, index, ssim)


def label_randomisation_check(
    trained: nn.Module,
    shuffled: nn.Module,
    explainer: ExplainerSpec,
    images: torch.Tensor,
    class_index: int | Sequence[int] | torch.Tensor | None = None,
    ssim: bool = True,
    **explainer_kwargs: Any,
) -> SanityResult:
    """Maps of a model trained on the true labels against one trained on shuffled labels.

    Both networks should share architecture, initialisation and training schedule, so that only the labels
    differ. This is the label-randomisation test for the native map too, which has no "map of another class".

    Args:
        trained: network trained on the true labels.
        shuffled: the same network trained on randomly permuted labels.
        explainer: a name of :data:`cxrnet.explain.EXPLAINERS` or a factory ``net -> explainer``.
        images: B×1×H×W normalised images.
        class_index: class explained in both; ``None`` for the trained network's prediction.
        ssim: also compute the SSIM of each pair.
        **explainer_kwargs: passed to :func:`~cxrnet.explain.get_explainer`.

    Returns:
        :class:`SanityResult`; low rank correlation passes.
    """
    index = _class_tensor(class_index, trained, images)
    trained_maps = _explainer(explainer, trained, explainer_kwargs)(images, class_index=index)
    shuffled_maps = _explainer(explainer, shuffled, explainer_kwargs)(images, class_index=index)
    return compare_maps(trained_maps, shuffled_maps, index, ssim)


def class_sensitivity_check(
    net: nn.Module,
    explainer: ExplainerSpec,
    images: torch.Tensor,
    other: str = "least_likely",
    seed: int = 0,
    ssim: bool = True,
    **explainer_kwargs: Any,
) -> SanityResult:
    """Map of the predicted class against the map of another class of the same model.

    Args:
        net: a :class:`~cxrnet.models.CXRNet`.
        explainer: a name of :data:`cxrnet.explain.EXPLAINERS` or a factory ``net -> explainer``.
        images: B×1×H×W normalised images.
        other: ``"least_likely"`` (the lowest logit) or ``"random"`` (a seeded uniform draw among the other
            classes).
        seed: seed of the ``"random"`` draw.
        ssim: also compute the SSIM of each pair.
        **explainer_kwargs: passed to :func:`~cxrnet.explain.get_explainer`.

    Returns:
        :class:`SanityResult` whose ``class_index`` is the *other* class. A class-agnostic map (the native
        map, Eigen-CAM) correlates 1 with itself here by construction; use
        :func:`label_randomisation_check` for those.
    """
    with eval_mode(net), torch.no_grad():
        logits = class_logits(net, images)
    predicted = logits.argmax(dim=1)
    if other == "least_likely":
        alternative = logits.argmin(dim=1)
    elif other == "random":
        generator = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, logits.shape[1], (len(images),), generator=generator).to(predicted.device)
        alternative = (predicted + shift) % logits.shape[1]
    else:
        raise ValueError(f"unknown other={other!r}; valid: 'least_likely', 'random'")
    explain = _explainer(explainer, net, explainer_kwargs)
    return compare_maps(
        explain(images, class_index=predicted), explain(images, class_index=alternative), alternative, ssim
    )


__all__ = [
    "PARTS",
    "SanityResult",
    "class_sensitivity_check",
    "compare_maps",
    "label_randomisation_check",
    "model_randomisation_check",
    "randomised_copy",
    "rank_agreement",
    "rank_correlation",
    "structural_similarity",
]
