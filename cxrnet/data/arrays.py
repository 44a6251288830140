"""In-memory images (numpy arrays, torch tensors) to the float32 H×W [0, 1] convention, checked strictly.

Two input conventions are understood (:data:`INPUT_CONVENTIONS`):

* ``"cxrnet"``: what every cxrnet reader returns and :func:`to_gray` accepts: 8/16-bit integers, or floats
  in [0, 1] (black 0, white 1).
* ``"xrv"``: torchxrayvision's, floats in [-1024, 1024] (``xrv.datasets.normalize(img, maxval)``:
  ``(2 * img / maxval - 1) * 1024``), as its datasets return them and its models take them, usually 1×H×W.
  :func:`from_xrv` converts such an array to ``"cxrnet"`` (``(x / 1024 + 1) / 2``) and :func:`to_xrv` back.

Conventions describe inputs, never models: a model is fed ``(image - mean) / std`` of the [0, 1] image
(:class:`cxrnet.data.transforms.Preprocessing`), whatever the convention its input arrived in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as cxrnet.data.raster.LUMA
_CHANNELS = (1, 3, 4)

InputConvention = Literal["cxrnet", "xrv"]
INPUT_CONVENTIONS: tuple[InputConvention, ...] = ("cxrnet", "xrv")
"""Pixel conventions of in-memory images (see the module docstring)."""

XRV_MAX = 1024.0
"""torchxrayvision's images span [-XRV_MAX, XRV_MAX]: black is -1024, white 1024."""

XRV_TOLERANCE = 1e-3
"""Relative slack on xrv's range: resizing can overshoot it by rounding; such values are clipped."""


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def to_gray(
    image: np.ndarray | torch.Tensor, name: str = "image", *, convention: InputConvention = "cxrnet"
) -> np.ndarray:
    """Convert an in-memory image to float32 HxW in [0, 1], checking it strictly.

    Layouts: HxW; HxWxC for arrays and CxHxW for tensors (the other order is accepted when unambiguous),
    with C = 1 (gray) or 3 (RGB → luminance ``0.299 R + 0.587 G + 0.114 B``); a tensor 1xCxHxW batch of one.
    Values: ``uint8`` (÷255), ``uint16`` (÷65535), ``bool``, or floats already in [0, 1].

    Args:
        image: the pixels.
        name: how to call the input in error messages.
        convention: ``"cxrnet"`` (the above) or ``"xrv"`` (torchxrayvision's [-1024, 1024] floats, read by
            :func:`from_xrv`).

    Raises:
        ValueError: RGBA, another layout, another integer type, NaN, or floats outside [0, 1]; the message
            says how to fix the input. An unknown ``convention``.
    """
    if convention == "xrv":
        return from_xrv(image, name)
    if convention != "cxrnet":
        raise ValueError(
            f"convention={convention!r} is not valid; choose one of: {', '.join(INPUT_CONVENTIONS)}"
        )
    channels_first = isinstance(image, torch.Tensor)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    x = np.asarray(image)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3:
        first, last = x.shape[0] in _CHANNELS, x.shape[-1] in _CHANNELS
        if first and (channels_first or not last):
            x = np.moveaxis(x, 0, -1)
        elif not last:
            raise ValueError(
                f"{name} has shape {_shape_text(x.shape)}; expected HxW, HxWxC or CxHxW with C = 1 (gray) "
                "or 3 (RGB); pass several images as a list"
            )
        if x.shape[-1] == 4:
            raise ValueError(
                f"{name} is 4-channel RGBA; expected grayscale or RGB. Drop the alpha channel "
                "(x[..., :3]) or composite it first; image files with alpha are read correctly by path"
            )
    elif x.ndim != 2:
        raise ValueError(
            f"{name} has shape {_shape_text(x.shape)}; expected one image HxW (gray) or HxWx3 (RGB); "
            "pass several images as a list"
        )
    if min(x.shape[:2]) < 1:
        raise ValueError(f"{name} is empty (shape {_shape_text(x.shape)})")

    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255)
    elif x.dtype == np.uint16:
        x = x.astype(np.float32) / np.float32(65535)
    elif x.dtype == bool:
        x = x.astype(np.float32)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if np.isnan(x).any():
            raise ValueError(f"{name} contains NaN; replace it (np.nan_to_num) before predicting")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            xrv = (
                " If it is torchxrayvision-normalised ([-1024, 1024]), convert it with "
                "cxrnet.data.arrays.from_xrv(x)."
                if low < 0.0 and _within_xrv_range(low, high)
                else ""
            )
            raise ValueError(
                f"{name} has float values in [{low:g}, {high:g}]; expected [0, 1]. Divide 8-bit data by 255 "
                "and 16-bit data by 65535, min-max scale other data ((x - x.min()) / (x.max() - x.min())), "
                f"or pass the file path so that cxrnet reads it.{xrv}"
            )
    else:
        raise ValueError(
            f"{name} has dtype {x.dtype}; expected uint8, uint16, bool or float in [0, 1] "
            "(e.g. x.astype(np.uint16) for 16-bit data held in a wider integer type)"
        )
    if x.ndim == 3:
        x = x[..., 0] if x.shape[-1] == 1 else x @ _LUMA
    return np.ascontiguousarray(x, dtype=np.float32)


def _within_xrv_range(low: float, high: float) -> bool:
    return low >= -XRV_MAX * (1 + XRV_TOLERANCE) and high <= XRV_MAX * (1 + XRV_TOLERANCE)


def from_xrv(image: np.ndarray | torch.Tensor, name: str = "image") -> np.ndarray:
    """A torchxrayvision-normalised image as float32 HxW in [0, 1]: ``(x / 1024 + 1) / 2``.

    The inverse of xrv's ``normalize(img, maxval)``: an 8-bit image ``u`` comes back as ``u / 255``, what
    :func:`to_gray` makes of ``u`` itself (to float32 rounding).

    Args:
        image: floats in [-1024, 1024] (values beyond by at most :data:`XRV_TOLERANCE` of the range, as a
            resize can leave, are clipped), shaped HxW, 1xHxW or 1x1xHxW; a numpy array or a torch tensor.
        name: how to call the input in error messages.

    Returns:
        float32 HxW in [0, 1].

    Raises:
        ValueError: another shape, a non-float dtype, NaN or infinity, values outside xrv's range, or values
            that all lie in [0, 1] (cxrnet's convention: as an xrv image it would be a uniform mid-grey);
            the message says how to fix the input.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    x = np.asarray(image)
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2 or min(x.shape) < 1:
        raise ValueError(
            f"{name} has shape {_shape_text(np.shape(image))}; expected one torchxrayvision image, HxW or "
            "1xHxW (xrv datasets give 1xHxW)"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{name} has dtype {x.dtype}; torchxrayvision images are floats in [-1024, 1024] "
            "(xrv.datasets.normalize(img, maxval)). Integer images are cxrnet's convention: pass them as they are"
        )
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinity; replace it (np.nan_to_num) first")
    low, high = float(x.min()), float(x.max())
    if not _within_xrv_range(low, high):
        raise ValueError(
            f"{name} has values in [{low:g}, {high:g}], outside torchxrayvision's [-1024, 1024]; normalise it "
            "with xrv.datasets.normalize(img, maxval) (maxval 255 for 8-bit data), or pass [0, 1] data with "
            "the cxrnet convention"
        )
    if low >= 0.0 and high <= 1.0 and high > low:
        raise ValueError(
            f"{name} has values in [{low:g}, {high:g}]: that is cxrnet's [0, 1] convention, not "
            "torchxrayvision's [-1024, 1024] (as an xrv image it would be a uniform mid-grey); pass it with "
            "the cxrnet convention instead"
        )
    return np.clip((x / np.float32(XRV_MAX) + 1) / 2, 0.0, 1.0).astype(np.float32)


def to_xrv(image: np.ndarray | torch.Tensor, name: str = "image") -> np.ndarray:
    """An image in cxrnet's convention (as :func:`to_gray` takes it) as torchxrayvision takes it: float32
    1xHxW in [-1024, 1024], ``(2 * x - 1) * 1024`` of the [0, 1] image.

    Raises:
        ValueError: as :func:`to_gray`.
    """
    return ((2 * to_gray(image, name) - 1) * np.float32(XRV_MAX))[None].astype(np.float32)
