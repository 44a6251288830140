"""Hostile inputs for the fuzz tests (``tests/test_fuzz.py``) and the long fuzz run (``tests/fuzz_run.py``).

Small valid files are made here (PNG 8/16-bit gray and colour, JPEG, TIFF, DICOM raw and deflated, a tiny
cxrnet checkpoint) and hypothesis strategies mutate them: bytes flipped, set, inserted, deleted, files cut
short, and header fields (PNG IHDR, JPEG SOF, DICOM elements, checkpoint metadata and weights) set to odd
values. :func:`read_case` and :func:`load_case` run one case and return the name of the documented error
(``ImageReadError``, ``CheckpointError``) or ``"ok"``; anything else escapes, as it would for a user.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from PIL import Image

from cxrnet.checkpoint import CheckpointError, checkpoint_metadata
from cxrnet.data.images import ImageReadError, read_image
from cxrnet.data.masks import read_mask
from cxrnet.data.transforms import Preprocessing
from cxrnet.inference import load_model
from cxrnet.models import create_model

#: Pixel limit of the fuzzed readers: a mutated header may announce up to this many pixels, which keeps one
#: case's decode small; the limit logic is the same at the default 67 megapixels.
FUZZ_MAX_PIXELS = 4_000_000

# ------------------------------------------------------------------------------------------ images


def _gray(height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 5 + y * 3) % 256 + rng.integers(0, 8, (height, width))).clip(0, 255).astype(np.uint8)


def _pil_bytes(pixels: np.ndarray, format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, **options)
    return buffer.getvalue()


def _png16_colour(pixels: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


def _dicom_bytes(pixels: np.ndarray, *, deflated: bool = False, monochrome1: bool = False) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "P1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelData = (pixels.astype("<u2") * 16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@cache
def image_seeds() -> dict[str, tuple[str, bytes]]:
    """Small valid files by name: ``(suffix, bytes)``."""
    gray = _gray()
    rgb = np.stack([gray, gray[::-1], 255 - gray], axis=-1)
    mask = np.where(gray > 128, 255, 0).astype(np.uint8)
    return {
        "png8_gray": (".png", _pil_bytes(gray, "PNG")),
        "png8_rgba": (".png", _pil_bytes(np.dstack([rgb, gray]), "PNG")),
        "png16_gray": (".png", _pil_bytes(gray.astype(np.uint16) * 257, "PNG")),
        "png16_rgb": (".png", _png16_colour(rgb.astype(np.uint16) * 257)),
        "png_mask": (".png", _pil_bytes(mask, "PNG")),
        "jpeg_gray": (".jpg", _pil_bytes(gray, "JPEG", quality=90)),
        "jpeg_rgb": (".jpg", _pil_bytes(rgb, "JPEG", quality=90)),
        "tiff16": (".tif", _pil_bytes(gray.astype(np.uint16) * 257, "TIFF")),
        "tiff_float": (".tif", _pil_bytes(gray.astype(np.float32) / 255, "TIFF")),
        "dicom": (".dcm", _dicom_bytes(gray)),
        "dicom_mono1": ("", _dicom_bytes(gray, monochrome1=True)),  # found by its magic, no suffix
        "dicom_deflated": (".dcm", _dicom_bytes(gray, deflated=True)),
    }


def _png_chunk_fix(data: bytearray) -> None:
    """Recompute the IHDR CRC so a mutated header field reaches the decoder instead of a CRC error."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 33:
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)


def _set_png_field(data: bytearray, field: str, value: int) -> None:
    offsets = {"width": (16, 4), "height": (20, 4), "bit_depth": (24, 1), "colour_type": (25, 1)}
    offsets |= {"interlace": (28, 1), "filter": (27, 1)}
    start, size = offsets[field]
    if len(data) >= start + size:
        data[start : start + size] = (value % 256**size).to_bytes(size, "big")
        _png_chunk_fix(data)


def _set_jpeg_field(data: bytearray, field: str, value: int) -> None:
    start = data.find(b"\xff\xc0")
    if start < 0 or len(data) < start + 10:
        return
    offsets = {"height": (start + 5, 2), "width": (start + 7, 2), "components": (start + 9, 1)}
    offsets |= {"precision": (start + 4, 1)}
    offset, size = offsets.get(field, offsets["height"])
    data[offset : offset + size] = (value % 256**size).to_bytes(size, "big")


_DICOM_FIELDS: dict[str, tuple[str, Callable[[int], Any]]] = {
    "Rows": ("US", lambda v: v % 65536),
    "Columns": ("US", lambda v: v % 65536),
    "BitsAllocated": ("US", lambda v: v % 65536),
    "BitsStored": ("US", lambda v: v % 65536),
    "HighBit": ("US", lambda v: v % 65536),
    "PixelRepresentation": ("US", lambda v: v % 3),
    "SamplesPerPixel": ("US", lambda v: v % 65536),
    "PlanarConfiguration": ("US", lambda v: v % 3),
    "NumberOfFrames": ("IS", str),
    "WindowCenter": ("DS", lambda v: ["nan", "inf", "-inf", "1e308", "0", "abc", str(v)][v % 7]),
    "WindowWidth": ("DS", lambda v: ["nan", "0", "-5", "1e-300", "1e308", "x", str(v)][v % 7]),
    "RescaleSlope": ("DS", lambda v: ["nan", "0", "-1", "1e308", "inf", "1", str(v)][v % 7]),
    "RescaleIntercept": ("DS", lambda v: ["nan", "-1e308", "inf", "0", str(v)][v % 5]),
    "VOILUTFunction": ("CS", lambda v: ["LINEAR", "SIGMOID", "LINEAR_EXACT", "BOGUS"][v % 4]),
    "PhotometricInterpretation": (
        "CS",
        lambda v: ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL_422", "YBR_FULL", "X"][
            v % 7
        ],
    ),
}


def _set_dicom_field(data: bytes, field: str, value: int) -> bytes:
    """Rewrite one element of a DICOM file through pydicom (validation off: the point is an invalid value)."""
    import pydicom
    from pydicom import config

    previous = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            vr, convert = _DICOM_FIELDS[field]
            if field in ds:
                del ds[field]
            ds.add_new(pydicom.datadict.tag_for_keyword(field), vr, convert(value))
            buffer = io.BytesIO()
            ds.save_as(buffer)
            return buffer.getvalue()
    except Exception:  # a value pydicom cannot even write: keep the file as it was
        return data
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = previous


#: Values a mutated header field takes: small, boundary and huge.
FIELD_VALUES = st.one_of(
    st.integers(0, 70),
    st.sampled_from([0, 1, 2, 3, 4, 6, 8, 12, 15, 16, 17, 31, 32, 255, 256, 4095, 65535, 65536, 2**31 - 1]),
    st.integers(0, 2**32 - 1),
)

_POSITIONS = st.one_of(st.integers(0, 160), st.integers(0, 2**31 - 1))  # headers often, anywhere sometimes

BYTE_MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), _POSITIONS, st.integers(0, 7)),
    st.tuples(st.just("set"), _POSITIONS, st.integers(0, 255)),
    st.tuples(st.just("truncate"), _POSITIONS),
    st.tuples(st.just("insert"), _POSITIONS, st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), _POSITIONS, st.integers(1, 256)),
)


def mutate_bytes(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    """Apply byte mutations (positions taken modulo the current length)."""
    out = bytearray(data)
    for mutation in mutations:
        kind, position = mutation[0], mutation[1] % max(len(out), 1)
        if kind == "flip" and out:
            out[position] ^= 1 << mutation[2]
        elif kind == "set" and out:
            out[position] = mutation[2]
        elif kind == "truncate":
            del out[position:]
        elif kind == "insert":
            out[position:position] = mutation[2]
        elif kind == "delete":
            del out[position : position + mutation[2]]
    return bytes(out)


@st.composite
def image_cases(draw: st.DrawFn) -> tuple[str, str, bytes, bool]:
    """``(seed name, suffix, bytes, read as mask)``: a seed with header fields and bytes mutated."""
    name = draw(st.sampled_from(sorted(image_seeds())))
    suffix, data = image_seeds()[name]
    if draw(st.booleans()):  # a header field set to an odd value, checksums fixed where there are any
        value = draw(FIELD_VALUES)
        if name.startswith("png"):
            buffer = bytearray(data)
            field = ["width", "height", "bit_depth", "colour_type", "interlace", "filter"]
            _set_png_field(buffer, draw(st.sampled_from(field)), value)
            data = bytes(buffer)
        elif name.startswith("jpeg"):
            buffer = bytearray(data)
            _set_jpeg_field(
                buffer, draw(st.sampled_from(["height", "width", "components", "precision"])), value
            )
            data = bytes(buffer)
        elif name.startswith("dicom") and not name.endswith("deflated"):
            data = _set_dicom_field(data, draw(st.sampled_from(sorted(_DICOM_FIELDS))), value)
        elif name == "tiff_float":  # pixel values a float image may hold: NaN, infinities, extremes
            pixels = _gray().astype(np.float32) / 255
            specials = st.sampled_from([math.nan, math.inf, -math.inf, 3e38, -3e38, 1e-45, -1.0, 2.0])
            for index in draw(st.lists(st.integers(0, pixels.size - 1), min_size=1, max_size=4)):
                pixels.flat[index] = draw(specials)
            data = _pil_bytes(pixels, "TIFF")
    data = mutate_bytes(data, draw(st.lists(BYTE_MUTATIONS, max_size=4)))
    if draw(st.integers(0, 9)) == 0:  # now and then under another format's name
        suffix = draw(st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".dcm", ""]))
    return name, suffix, data, draw(st.booleans())


def read_checked(path: Path, as_mask: bool) -> None:
    """Read ``path`` as an image (or a mask) and check the readers' contract on the result.

    Raises:
        ImageReadError: the documented refusal.
        AssertionError: a read that broke the contract (float32 HxW in [0, 1] for images, bool HxW for
            masks): a silent wrong result.
        Exception: whatever else a reader raised, unchanged (an undocumented crash).
    """
    if as_mask:
        mask = read_mask(path, max_pixels=FUZZ_MAX_PIXELS)
        assert mask.dtype == bool and mask.ndim == 2 and min(mask.shape) > 0, (mask.dtype, mask.shape)
        return
    image = read_image(path, max_pixels=FUZZ_MAX_PIXELS)
    assert image.dtype == np.float32 and image.ndim == 2 and min(image.shape) > 0, image.shape
    assert bool(np.isfinite(image).all()), "image holds NaN or infinity"
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0, (image.min(), image.max())


def read_case(folder: Path, suffix: str, data: bytes, as_mask: bool) -> str:
    """Write ``data`` as a file and :func:`read_checked` it; ``"ok"`` or ``"ImageReadError"``."""
    path = folder / f"case{suffix}"
    path.write_bytes(data)
    try:
        read_checked(path, as_mask)
    except ImageReadError:
        return "ImageReadError"
    return "ok"


# ------------------------------------------------------------------------------------------ checkpoints

#: Largest input side :func:`load_case` predicts at.
PREDICT_MAX_SIZE = 256
CHECKPOINT_CLASSES = ["normal", "pneumonia", "covid19"]
CHECKPOINT_TARGETS = ["brixia"]


@cache
def _small_net_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net = create_model(
        classes=CHECKPOINT_CLASSES,
        encoder="tu-test_efficientnet",  # timm's 0.2-megaparameter test network: a 0.8 MB checkpoint
        decoder_channels=[8, 8, 8, 8, 8],
        severity_targets=CHECKPOINT_TARGETS,
        severity_scales={"brixia": 18},
    ).eval()
    meta = checkpoint_metadata(
        net, Preprocessing(image_size=32), {"temperature": 1.5, "config": SMALL_CONFIG}
    )
    return meta, {f"net.{key}": value for key, value in net.state_dict().items()}


SMALL_CONFIG = "\n".join(
    [
        "seed: 7",
        "data:",
        "  name: synthetic",
        "  seed: 7",
        "  image_size: 32",
        "model:",
        "  decoder: unet",
        "",
    ]
)
"""The stored training config of :func:`small_checkpoint` (YAML, as ``cxrnet.train`` writes it)."""


def small_checkpoint() -> dict[str, Any]:
    """A valid cxrnet checkpoint of a tiny network (32-pixel input), as a fresh dict safe to mutate."""
    meta, state = _small_net_state()
    return {"state_dict": dict(state), "cxrnet": copy.deepcopy(meta)}


def checkpoint_bytes(checkpoint: dict[str, Any]) -> bytes:
    """``checkpoint`` as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")),
    ]
)
"""The "billion laughs" YAML of issue 10 (560 bytes; 9^9 strings once its aliases are expanded)."""

_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 31, 32, 33, 64, 4096, 4128, 10**9, -32, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "unet", "resnet18", "tu-test_efficientnet", "zero", "blur", "normal", "brixia"]),
)
JSON_VALUES = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)
"""JSON-like values, nested, with NaN, infinities, huge integers and names that mean something here."""

YAML_TEXTS = st.one_of(
    st.just(LAUGHS),
    st.text(max_size=200),
    st.sampled_from(
        [
            "a: [1, 2",  # broken
            "{",
            "a: !!python/object/apply:os.system ['true']",
            "a: &x 1\nb: *x",
            "- 1\n- 2",
            "data: {seed: 99999999999999999999999999}",
            "data:\n  seed: " + "9" * 5000,
            "[" * 100 + "]" * 100,
            "a: b\n\tc: d",
            "",
        ]
    ),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a nested dict/list."""
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += _paths(child, (*prefix, index))
    return paths


def _holds(root: Any, path: tuple[Any, ...]) -> bool:
    """Whether ``path`` leads to a dict inside ``root``."""
    for key in path:
        if not isinstance(root, dict) or key not in root:
            return False
        root = root[key]
    return isinstance(root, dict)


def _place(root: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> None:
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, list) and not isinstance(path[-1], int):  # a key "added" to a list: append
        parent.append(value)
    elif delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


_TENSOR_EDITS = st.sampled_from(
    ["drop", "nan", "inf", "reshape", "not a tensor", "complex", "rename", "repeat"]
)


def _edit_weights(state: dict[str, Any], key: str, edit: str) -> None:
    tensor = state[key]
    if not isinstance(tensor, torch.Tensor):  # already edited into something else
        return
    if edit == "drop":
        del state[key]
    elif edit in ("nan", "inf") and tensor.is_floating_point() and tensor.numel():
        tensor = tensor.clone()
        tensor.view(-1)[0] = math.nan if edit == "nan" else math.inf
        state[key] = tensor
    elif edit == "reshape":
        state[key] = torch.zeros(tensor.numel() + 1)
    elif edit == "not a tensor":
        state[key] = tensor.tolist() if tensor.numel() < 64 else "weights"
    elif edit == "complex":
        state[key] = torch.zeros(tensor.shape, dtype=torch.complex64)
    elif edit == "rename":
        state[f"{key}.renamed"] = state.pop(key)
    elif edit == "repeat" and tensor.numel():
        state[key] = torch.zeros(()).expand(tensor.shape)  # stride 0: one stored value claims the whole shape


_PLAUSIBLE: dict[tuple[str, ...], st.SearchStrategy[Any]] = {
    ("temperature",): st.one_of(st.none(), st.floats(1e-3, 1e3), st.sampled_from([1e-3, 1e3, 0.0, -1.0])),
    ("preprocessing", "image_size"): st.sampled_from([32, 64, 96, 128, 0, 31, 48, 8192]),
    ("preprocessing", "mean"): st.floats(-1e3, 1e3),
    ("preprocessing", "std"): st.one_of(st.floats(1e-3, 1e3), st.sampled_from([1e-300, 5e-4])),
    ("model", "dropout"): st.floats(0.0, 1.0),
    ("model", "lung_dilation"): st.floats(0.0, 1.0),
    ("model", "gate_fill"): st.sampled_from(["zero", "blur"]),
    ("model", "gate_with_lungs"): st.booleans(),
    ("model", "severity_scales", "brixia"): st.one_of(st.floats(1e-6, 1e6), st.just(18.0)),
    ("heads",): st.one_of(st.none(), st.just({})),
    ("heads", "cls", "n"): st.integers(0, 3),
    ("heads", "infection", "n_empty"): st.integers(0, 3),
    ("heads", "lung", "loss_weight"): st.sampled_from([0.0, 1.0]),
    ("heads", "sources"): st.sampled_from([{"synthetic": 1}, {"cohen": 2}, {}]),
    ("training_data",): st.sampled_from(
        [None, {}, {"source": ["synthetic"]}, {"source": ["cohen"], "n_items": 3}]
    ),
}
"""Edits that keep a checkpoint valid, or just miss: to exercise what loaders do after validation."""


def _plausible_heads() -> dict[str, Any]:
    entry = {"n": 2, "sources": {"synthetic": 2}, "loss_weight": 1.0}
    return {
        "n_items": 2,
        "sources": {"synthetic": 2},
        "lung": dict(entry),
        "infection": {**entry, "n_empty": 0},
        "cls": dict(entry),
        "severity": {"brixia": dict(entry)},
    }


@st.composite
def checkpoint_cases(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(kind, file bytes)``: the small checkpoint with its metadata, weights or bytes mutated."""
    checkpoint = small_checkpoint()
    kind = draw(st.sampled_from(["plausible", "metadata", "config", "weights", "bytes", "pickle"]))
    meta = checkpoint["cxrnet"]
    if kind == "plausible":
        meta["heads"] = _plausible_heads()
        for _ in range(draw(st.integers(1, 4))):
            path = draw(st.sampled_from(sorted(_PLAUSIBLE)))
            if _holds(meta, path[:-1]):  # an earlier edit may have removed the parent
                _place(meta, path, draw(_PLAUSIBLE[path]))
    elif kind == "metadata":
        for _ in range(draw(st.integers(1, 3))):
            paths = _paths(meta) or [("format_version",)]
            path = draw(st.sampled_from(sorted(paths, key=repr)))
            action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            if action == "add":
                path = (*path[:-1], draw(st.text(max_size=12)))
            _place(meta, path, draw(JSON_VALUES), delete=action == "delete")
    elif kind == "config":
        meta["config"] = draw(YAML_TEXTS)
    elif kind == "weights":
        state = checkpoint["state_dict"]
        for _ in range(draw(st.integers(1, 2))):
            key = draw(st.sampled_from(sorted(state)))
            _edit_weights(state, key, draw(_TENSOR_EDITS))
    data = checkpoint_bytes(checkpoint)
    if kind == "bytes":
        data = mutate_bytes(data, draw(st.lists(BYTE_MUTATIONS, min_size=1, max_size=4)))
    elif kind == "pickle":
        data = _mutate_pickle(data, draw(st.lists(BYTE_MUTATIONS, min_size=1, max_size=3)))
    return kind, data


def with_pickle_stream(data: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """A torch zip archive with its pickle stream (``data.pkl``) replaced by ``edit(stream)``."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename.endswith("/data.pkl"):
                content = edit(content)
            target.writestr(info, content)
    return out.getvalue()


def _mutate_pickle(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    return with_pickle_stream(data, lambda stream: mutate_bytes(stream, mutations))


def tuple_hash_bomb(levels: int = 60) -> bytes:
    """A pickle stream of ``{t: None}`` where t nests ``levels`` tuples of two references to the one below.

    Unpickling hashes the key, visiting 2**levels tuples: allowed by ``weights_only``, and never ending.
    """
    ops = bytearray(pickle.PROTO + b"\x02" + pickle.EMPTY_TUPLE + pickle.LONG_BINPUT + struct.pack("<I", 0))
    for level in range(levels):
        get = pickle.LONG_BINGET + struct.pack("<I", level)
        ops += get + get + pickle.TUPLE2 + pickle.LONG_BINPUT + struct.pack("<I", level + 1)
    ops += pickle.EMPTY_DICT + pickle.LONG_BINGET + struct.pack("<I", levels) + pickle.NONE + pickle.SETITEM
    return bytes(ops + pickle.STOP)


def load_checked(path: Path) -> None:
    """Load ``path`` as a predictor and predict one image; the numbers must be usable.

    A checkpoint that loads must give one finite probability per class, summing to 1. The prediction is
    skipped above :data:`PREDICT_MAX_SIZE` (a valid checkpoint may ask for 4096-pixel inputs, which the tiny
    network would take seconds and gigabytes to run).

    Raises:
        CheckpointError: the documented refusal.
        AssertionError: a loaded checkpoint predicts NaN, or names its outputs inconsistently.
        Exception: whatever else loading raised, unchanged (an undocumented crash).
    """
    model = load_model(path)
    size = model.preprocessing.image_size
    if size > PREDICT_MAX_SIZE:
        return
    prediction = model.predict(np.full((size, size), 0.5, dtype=np.float32))
    probabilities = list(prediction.probabilities.values())
    assert list(prediction.probabilities) in ([], model.classes), (
        list(prediction.probabilities),
        model.classes,
    )
    if probabilities:
        assert all(math.isfinite(p) for p in probabilities), prediction.probabilities
        assert abs(sum(probabilities) - 1.0) < 1e-4, prediction.probabilities


def load_case(folder: Path, data: bytes) -> str:
    """Write ``data`` as a checkpoint and :func:`load_checked` it; ``"ok"`` or ``"CheckpointError"``."""
    path = folder / "case.ckpt"
    path.write_bytes(data)
    try:
        load_checked(path)
    except CheckpointError:
        return "CheckpointError"
    return "ok"
