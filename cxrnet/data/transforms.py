"""Geometry, normalisation and augmentation shared by training, evaluation, inference and the overlays.

Every image is first *letterboxed*: resized so that its longer side equals the training size, then padded
symmetrically to a square. The same function serves the dataset and the predictor, and
:func:`unletterbox` maps the model's maps back onto the original image. :func:`resize` is the one resize of
the package (OpenCV: the fastest on CPUs) and :func:`normalize` the one normalisation of the model's input.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

import cv2
import numpy as np

if TYPE_CHECKING:
    import albumentations as A
    import torch

    from cxrnet.data.arrays import InputConvention


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects; stored in every checkpoint so inference repeats training exactly.

    The model takes a [0, 1] image (black 0, white 1), letterboxed to ``image_size``, as
    ``(image - mean) / std``. Images that arrive in another pixel convention are converted to [0, 1] at the
    edge (:meth:`prepare` with ``convention="xrv"`` for torchxrayvision's [-1024, 1024] arrays;
    :func:`cxrnet.data.arrays.from_xrv` before ``model.predict``), so the convention is a property of an
    input, not a field here: a model trained on a torchxrayvision dataset (``data=xrv``, converted the same
    way) expects exactly what one trained on files does, and its checkpoint says nothing different.

    Attributes:
        image_size: side of the square input, in pixels (divisible by 32).
        mean: subtracted from the [0, 1] image.
        std: the result is divided by it.
    """

    image_size: int = 256
    mean: float = 0.5
    std: float = 0.25

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def prepare(
        self, image: np.ndarray | torch.Tensor, *, convention: InputConvention = "cxrnet"
    ) -> np.ndarray:
        """One in-memory image as the model takes it: checked, letterboxed, normalised.

        The path the predictor takes for an array, for one image: :func:`cxrnet.data.arrays.to_gray` (which
        reads ``convention``), :func:`letterbox`, :func:`normalize`. The same radiograph gives the same
        input whether it comes as 8-bit pixels, [0, 1] floats or torchxrayvision's normalised array.

        Args:
            image: the pixels, in ``convention``: ``"cxrnet"`` (uint8, uint16, bool or floats in [0, 1];
                HxW, HxWxC, CxHxW) or ``"xrv"`` (floats in [-1024, 1024], HxW or 1xHxW, as
                ``xrv.datasets.normalize`` returns them).
            convention: see :data:`cxrnet.data.arrays.INPUT_CONVENTIONS`.

        Returns:
            float32 1 x image_size x image_size (add a batch axis for the model: ``x[None]``).

        Raises:
            ValueError: the image does not fit ``convention``; the message says how to fix it.
        """
        # imported here: cxrnet.data.arrays imports torch, which this module otherwise does without
        from cxrnet.data.arrays import to_gray

        square = letterbox(to_gray(image, convention=convention), self.image_size)
        return normalize(square, self).astype(np.float32)[None]


ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


def normalize(image: ArrayT, preprocessing: Preprocessing) -> ArrayT:
    """The [0, 1] image as the model expects it: ``(image - mean) / std``.

    Args:
        image: a numpy array (a dataset sample, H×W) or a torch tensor (a predictor's batch, B×1×H×W) of
            values in [0, 1]; float32 stays float32.
        preprocessing: the model's ``mean`` and ``std``.

    Returns:
        The normalised image, of the input's type, shape and dtype.
    """
    return (image - preprocessing.mean) / preprocessing.std


ResizeKind = Literal["image", "map", "mask", "nearest"]
RESIZE_KINDS: tuple[ResizeKind, ...] = ("image", "map", "mask", "nearest")


def resize(array: np.ndarray, height: int, width: int, *, kind: ResizeKind = "image") -> np.ndarray:
    """``array`` (H×W, or H×W×C) resized to ``height``×``width``, interpolated as its ``kind`` needs.

    Kinds:
        ``"image"``: area averaging when either side shrinks (anti-aliased: every source pixel counts),
        bilinear when enlarging. For radiographs, and for pictures being enlarged.

        ``"map"``: bilinear both ways. For maps upsampled from the network's output: sampling them loses
        nothing that area averaging would keep, and area averaging a 2000-pixel map costs ~50x more.

        ``"mask"``: resized as fractions, like ``"image"``, then thresholded at 0.5, which keeps thin
        structures better than nearest neighbour.

        ``"nearest"``: nearest neighbour. For pictures of a few pixels, which interpolation would smear over
        the whole output.

    Args:
        array: the pixels; bool, uint8 or another numeric dtype.
        height: rows of the result (>= 1).
        width: columns of the result (>= 1).
        kind: one of :data:`RESIZE_KINDS`.

    Returns:
        A new array: bool for ``"mask"``; the input's dtype for ``"nearest"``; for ``"image"`` and
        ``"map"``, uint8 for uint8 input and float32 otherwise. Those two interpolate a bool array as 0/1
        bytes (a quarter of float32's memory traffic), so its pixels come back as 0.0 or 1.0.
    """
    if kind not in RESIZE_KINDS:
        raise ValueError(f"unknown resize kind {kind!r}; valid: {', '.join(RESIZE_KINDS)}")
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {height}x{width}; both sides must be at least 1 pixel")
    if kind == "mask":
        return resize(np.asarray(array, np.float32), height, width) > 0.5
    is_bool = array.dtype == np.bool_
    if is_bool:
        source = array.view(np.uint8)
    elif kind == "nearest" or array.dtype == np.uint8:
        source = array
    else:
        source = array.astype(np.float32, copy=False)
    if kind == "nearest":
        interpolation = cv2.INTER_NEAREST
    elif kind == "image" and (height < array.shape[0] or width < array.shape[1]):
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_LINEAR
    resized = cv2.resize(source, (width, height), interpolation=interpolation)
    if is_bool:
        return resized.view(np.bool_) if kind == "nearest" else resized.astype(np.float32)
    return resized


@dataclass(frozen=True)
class Letterbox:
    """Where the resized image sits inside the square: original size, resized size, top/left padding."""

    height: int
    width: int
    resized_height: int
    resized_width: int
    top: int
    left: int


def letterbox_geometry(height: int, width: int, size: int) -> Letterbox:
    """Geometry of resizing an H×W image so its longer side is ``size`` and centring it in a square."""
    scale = size / max(height, width)
    rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
    return Letterbox(height, width, rh, rw, (size - rh) // 2, (size - rw) // 2)


def letterbox(array: np.ndarray, size: int, *, is_mask: bool = False) -> np.ndarray:
    """Resize H×W ``array`` (image float32, or mask bool) into a ``size``×``size`` square, padding with 0.

    Images are resized as :func:`resize`'s ``"image"``, masks as its ``"mask"`` (fractions thresholded at
    0.5). Returns float32 (image) or bool (mask).
    """
    geo = letterbox_geometry(*array.shape[:2], size)
    if is_mask:
        resized = resize(array, geo.resized_height, geo.resized_width, kind="mask")
    else:
        resized = resize(np.asarray(array, np.float32), geo.resized_height, geo.resized_width)
    out = np.zeros((size, size), dtype=resized.dtype)
    out[geo.top : geo.top + geo.resized_height, geo.left : geo.left + geo.resized_width] = resized
    return out


def unletterbox(square: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Undo :func:`letterbox` for a size×size float map: crop the padding, resize (bilinear) to the original
    H×W; float32."""
    g = geometry
    crop = square[g.top : g.top + g.resized_height, g.left : g.left + g.resized_width]
    return resize(crop, g.height, g.width, kind="map")


AUGMENT_PRESETS = ("none", "light", "default")


def build_augmentation(preset: str = "default") -> A.Compose | None:
    """Training augmentation applied jointly to the letterboxed image and its masks.

    No horizontal flips: they swap the patient's left and right (heart side, severity per lung).

    Args:
        preset: ``"none"``, ``"light"`` (small geometry + intensity) or ``"default"`` (adds noise, blur and
            stronger exposure changes, as radiographs vary between machines).
    """
    if preset == "none":
        return None
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; valid: {', '.join(AUGMENT_PRESETS)}")
    # Imported here: it takes seconds, and inference and the overlays, which resize with this module, never
    # augment.
    import albumentations as A

    strong = preset == "default"
    transforms: list[A.BasicTransform] = [
        A.Affine(
            scale=(0.9, 1.1) if strong else (0.95, 1.05),
            translate_percent=(-0.05, 0.05),
            rotate=(-8, 8) if strong else (-4, 4),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
            p=0.7,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.2, p=0.7),
        A.RandomGamma(gamma_limit=(80, 125), p=0.5),
    ]
    if strong:
        transforms += [
            A.GaussNoise(std_range=(0.005, 0.03), p=0.3),
            A.GaussianBlur(blur_limit=(3, 3), p=0.15),
        ]
    return A.Compose(transforms)


def seed_augmentation(transform: A.Compose, seed: int, epoch: int, index: int) -> None:
    """Make ``transform``'s next call draw its random parameters from ``(seed, epoch, index)`` alone.

    Albumentations pipelines keep their own random generators, seeded from the operating system unless told
    otherwise, so neither ``seed_everything`` nor a restored RNG state reaches them. Seeding each sample from
    its run seed, epoch and dataset index instead makes the augmentation of every sample reproducible,
    whatever the number of DataLoader workers, the order the sampler draws in, or where a run was interrupted
    and resumed.

    Args:
        transform: the pipeline (its transforms share the two generators set here).
        seed: the run's seed.
        epoch: the training epoch (another draw each epoch).
        index: the sample's index in its dataset.
    """
    generator = np.random.default_rng([seed % 2**64, epoch % 2**64, index % 2**64])
    transform.set_random_state(generator, random.Random(int(generator.integers(2**63))))


def augment(
    transform: A.Compose | None, image: np.ndarray, masks: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Apply ``transform`` to a float32 H×W image in [0, 1] and its bool masks, keeping them aligned."""
    if transform is None:
        return image, masks
    result = transform(image=image, masks=[m.astype(np.uint8) for m in masks])
    return np.clip(result["image"], 0.0, 1.0).astype(np.float32), [m > 0 for m in result["masks"]]
