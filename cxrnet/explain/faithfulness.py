"""Deletion and insertion curves (Petsiuk et al., 2018, "RISE"): does the model need what the map points at?

For each image the pixels are ranked by saliency, most salient first. **Deletion** removes them in ``steps``
equal fractions (0 %, 5 %, ..., 100 % with the default 20 steps), replacing them by a *baseline*, and records
the probability of the explained class after each step: a faithful map makes it fall fast, so a low area
under the curve (AUC) is good. **Insertion** starts from the baseline and reveals the most salient pixels
first: a faithful map makes the probability rise fast, so a high AUC is good.

The perturbed images go through the *whole* model, ``softmax(model(x).class_logits)`` for a CXRNet: the
decision a user sees, explanation gate included, not encoder 2 alone.

Baseline: by default what the model itself puts where its gate is closed (``net.gate_fill``): zeros, the
dataset mean after normalisation (``"zero"``), or a box-blurred copy of the image (``"blur"``, the same
blur as :func:`cxrnet.models.heads.apply_gate`). So "removed" means the same thing to the model as "gated
out". Pass ``baseline=`` to choose another.

Ties in saliency (flat regions, a binary mask) are broken deterministically: equal pixels are taken in
row-major order (a stable sort), so a curve is a function of the map alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import nn

from cxrnet.explain.native import eval_mode
from cxrnet.models.heads import blur

ClassIndex = int | Sequence[int] | torch.Tensor | None
Model = nn.Module | Callable[[torch.Tensor], Any]
BLUR_PIXELS = 8  # the half-width apply_gate uses for gate_fill="blur"


class Curves(NamedTuple):
    """Per-image deletion or insertion curves (B images, S = ``steps``).

    Attributes:
        fractions: (S+1,) fraction of pixels removed (deletion) or revealed (insertion), 0 to 1.
        probabilities: B×(S+1) probability of the explained class at each fraction.
        auc: (B,) area under each curve, trapezoid rule on [0, 1]; in [0, 1].
        class_index: (B,) the class explained in each image.
    """

    fractions: torch.Tensor
    probabilities: torch.Tensor
    auc: torch.Tensor
    class_index: torch.Tensor


def class_logits(model: Model, images: torch.Tensor) -> torch.Tensor:
    """B×C float32 logits of ``model`` on ``images``: ``model(images).class_logits``, or the output itself."""
    output = model(images)
    logits = getattr(output, "class_logits", output)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(
            "the model must return B×C class logits or an output with a class_logits field (a CXRNet); "
            f"got {type(output).__name__}"
        )
    return logits.float()


def default_baseline(model: Model, images: torch.Tensor) -> torch.Tensor:
    """What replaces removed pixels: a blurred copy if ``model.gate_fill == "blur"``, zeros otherwise.

    Args:
        model: the model (its ``gate_fill`` attribute is read when it has one).
        images: B×1×H×W normalised images.

    Returns:
        B×1×H×W baseline images.
    """
    if getattr(model, "gate_fill", "zero") == "blur":
        return blur(images, BLUR_PIXELS)
    return torch.zeros_like(images)


def _check(images: torch.Tensor, maps: torch.Tensor, steps: int, batch_size: int) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"images must be a B×C×H×W batch, got shape {tuple(images.shape)}")
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"maps of shape {tuple(maps.shape)} do not match images {tuple(images.shape)}; expected "
            f"B×H×W = {(images.shape[0], *images.shape[-2:])} (upsample the maps to the input size)"
        )
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    return maps


def _curve(
    model: Model,
    images: torch.Tensor,
    maps: torch.Tensor,
    class_index: ClassIndex,
    steps: int,
    batch_size: int,
    baseline: torch.Tensor | None,
    insertion: bool,
) -> Curves:
    maps = _check(images, maps, steps, batch_size)
    batch, pixels = images.shape[0], images.shape[-2] * images.shape[-1]
    context = eval_mode(model) if isinstance(model, nn.Module) else nullcontext()
    with context, torch.no_grad():
        baseline = default_baseline(model, images) if baseline is None else baseline.to(images)
        if baseline.shape != images.shape:
            raise ValueError(
                f"baseline shape {tuple(baseline.shape)} differs from images {tuple(images.shape)}"
            )
        clean = torch.softmax(class_logits(model, images), dim=1)
        index = _class_index(class_index, clean)
        # rank[b, p] = position of pixel p in image b's order, most salient first; stable: ties row-major
        order = torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(pixels, device=order.device).expand(batch, -1))
        counts = torch.round(torch.linspace(0, pixels, steps + 1, device=images.device)).long()

        probabilities = torch.empty(batch, steps + 1, device=images.device)
        clean_step = steps if insertion else 0  # the unperturbed image: no forward pass needed
        probabilities[:, clean_step] = clean.gather(1, index[:, None])[:, 0]
        pairs = [(b, s) for b in range(batch) for s in range(steps + 1) if s != clean_step]
        for start in range(0, len(pairs), batch_size):
            chunk = torch.tensor(pairs[start : start + batch_size], device=images.device)
            b, s = chunk[:, 0], chunk[:, 1]
            changed = (rank[b] < counts[s][:, None]).view(-1, 1, *images.shape[-2:])
            if insertion:  # the most salient pixels come from the image, the rest from the baseline
                perturbed = torch.where(changed, images[b], baseline[b])
            else:
                perturbed = torch.where(changed, baseline[b], images[b])
            probs = torch.softmax(class_logits(model, perturbed), dim=1)
            probabilities[b, s] = probs.gather(1, index[b][:, None])[:, 0]
    fractions = counts.float() / pixels
    auc = torch.trapezoid(probabilities, fractions, dim=1)
    return Curves(fractions, probabilities, auc, index)


def _class_index(class_index: ClassIndex, probabilities: torch.Tensor) -> torch.Tensor:
    batch, classes = probabilities.shape
    if class_index is None:
        return probabilities.argmax(dim=1)
    index = torch.as_tensor(class_index, device=probabilities.device, dtype=torch.long).flatten()
    if index.numel() == 1:
        index = index.expand(batch)
    if index.numel() != batch or (index < 0).any() or (index >= classes).any():
        raise ValueError(
            f"class_index must be None, one class index in [0, {classes}) or one per image ({batch}); "
            f"got {class_index!r}"
        )
    return index


def deletion_curve(
    model: Model,
    images: torch.Tensor,
    maps: torch.Tensor,
    class_index: ClassIndex = None,
    steps: int = 20,
    batch_size: int = 32,
    baseline: torch.Tensor | None = None,
) -> Curves:
    """Probability of the class as the most salient pixels are removed (lower AUC = more faithful map).

    Args:
        model: a :class:`~cxrnet.models.CXRNet`, or any callable ``B×C×H×W images -> B×K class logits`` (or an
            output with a ``class_logits`` field). Modules run in eval mode, restored afterwards.
        images: B×C×H×W normalised images (B×1×H×W for a CXRNet).
        maps: B×H×W (or B×1×H×W) saliency maps at the input size, any range; higher = more important.
        class_index: ``None`` for each image's predicted class (on the clean image), one index for all, or
            one per image.
        steps: number of equal fractions; the curve has ``steps + 1`` points from 0 to 100 % removed.
        batch_size: perturbed images per forward pass.
        baseline: B×C×H×W values of removed pixels; ``None`` for :func:`default_baseline` (the model's gate
            fill: zeros or a blurred copy).

    Returns:
        :class:`Curves`; ``probabilities[:, 0]`` is the clean image's probability, ``probabilities[:, -1]``
        the baseline's.

    Raises:
        ValueError: maps that do not match the images, or a bad class index.
    """
    return _curve(model, images, maps, class_index, steps, batch_size, baseline, insertion=False)


def insertion_curve(
    model: Model,
    images: torch.Tensor,
    maps: torch.Tensor,
    class_index: ClassIndex = None,
    steps: int = 20,
    batch_size: int = 32,
    baseline: torch.Tensor | None = None,
) -> Curves:
    """Probability of the class as the most salient pixels are revealed on the baseline (higher AUC = better).

    Same arguments as :func:`deletion_curve`; the class explained is still the clean image's prediction.

    Returns:
        :class:`Curves`; ``probabilities[:, 0]`` is the baseline's probability, ``probabilities[:, -1]`` the
        clean image's.
    """
    return _curve(model, images, maps, class_index, steps, batch_size, baseline, insertion=True)


__all__ = ["Curves", "class_logits", "default_baseline", "deletion_curve", "insertion_curve"]
