"""In-memory images (numpy arrays, torch tensors) to the float32 H×W [0, 1] convention, checked strictly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as cxrnet.data.raster.LUMA
_CHANNELS = (1, 3, 4)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def to_gray(image: np.ndarray | torch.Tensor, name: str = "image") -> np.ndarray:
    """Convert an in-memory image to float32 HxW in [0, 1], checking it strictly.

    Layouts: HxW; HxWxC for arrays and CxHxW for tensors (the other order is accepted when unambiguous),
    with C = 1 (gray) or 3 (RGB → luminance ``0.299 R + 0.587 G + 0.114 B``); a tensor 1xCxHxW batch of one.
    Values: ``uint8`` (÷255), ``uint16`` (÷65535), ``bool``, or floats already in [0, 1].

    Args:
        image: the pixels.
        name: how to call the input in error messages.

    Raises:
        ValueError: RGBA, another layout, another integer type, NaN, or floats outside [0, 1]; the message
            says how to fix the input.
    """
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
            raise ValueError(
                f"{name} has float values in [{low:g}, {high:g}]; expected [0, 1]. Divide 8-bit data by 255 "
                "and 16-bit data by 65535, min-max scale other data ((x - x.min()) / (x.max() - x.min())), "
                "or pass the file path so that cxrnet reads it"
            )
    else:
        raise ValueError(
            f"{name} has dtype {x.dtype}; expected uint8, uint16, bool or float in [0, 1] "
            "(e.g. x.astype(np.uint16) for 16-bit data held in a wider integer type)"
        )
    if x.ndim == 3:
        x = x[..., 0] if x.shape[-1] == 1 else x @ _LUMA
    return np.ascontiguousarray(x, dtype=np.float32)
