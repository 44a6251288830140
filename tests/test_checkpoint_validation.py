"""Checkpoints are untrusted input: each crafted file of issue 10 is refused by every loader, naming the file
and the field, before anything is built or computed from it."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cxrnet.checkpoint import (
    CheckpointError,
    load_network,
    parse_stored_config,
    read_checkpoint,
    stored_config,
)
from cxrnet.checkpoint_streams import MAX_CONFIG_BYTES
from cxrnet.checkpoint_validation import MAX_METADATA_VALUES
from cxrnet.command import _stored_data_seed
from cxrnet.data.transforms import Preprocessing
from cxrnet.export import export_model
from cxrnet.inference import Predictor, load_model
from cxrnet.models import create_model
from cxrnet.transfer import init_from_checkpoint

from fuzz_cases import (
    CHECKPOINT_CLASSES,
    LAUGHS,
    checkpoint_bytes,
    load_case,
    small_checkpoint,
    tuple_hash_bomb,
    with_pickle_stream,
)

Edit = Callable[[dict[str, Any]], None]


def write(tmp_path: Path, edit: Edit | None = None, name: str = "crafted.ckpt") -> Path:
    """The small valid checkpoint, changed by ``edit``, written to ``tmp_path / name``."""
    checkpoint = small_checkpoint()
    if edit is not None:
        edit(checkpoint)
    path = tmp_path / name
    path.write_bytes(checkpoint_bytes(checkpoint))
    return path


def meta_edit(**values: Any) -> Edit:
    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["cxrnet"].update(values)

    return edit


def model_edit(**values: Any) -> Edit:
    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["cxrnet"]["model"].update(values)

    return edit


def preprocessing_edit(**values: Any) -> Edit:
    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["cxrnet"]["preprocessing"].update(values)

    return edit


def weight_edit(key: str, value: Any) -> Edit:
    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"][key] = value(checkpoint["state_dict"][key]) if callable(value) else value

    return edit


def shared_laughs(checkpoint: dict[str, Any]) -> None:
    """Pickle's memo shares one list: 30 levels of 10 references is 10^30 values once walked."""
    value: list[Any] = ["lol"]
    for _ in range(30):
        value = [value] * 10
    checkpoint["cxrnet"]["training_data"] = {"patient_ids": value}


def cyclic(checkpoint: dict[str, Any]) -> None:
    loop: list[Any] = []
    loop.append(loop)
    checkpoint["cxrnet"]["heads"] = {"sources": loop}


def two_classes(checkpoint: dict[str, Any]) -> None:
    """Both class lists agree on two names; the classifier's weights have three outputs."""
    checkpoint["cxrnet"]["classes"] = checkpoint["cxrnet"]["model"]["classes"] = ["a", "b"]


def with_nan(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[0] = math.nan
    return tensor


CRAFTED: dict[str, tuple[Edit, str]] = {
    # the stored YAML config
    "billion laughs YAML": (meta_edit(config=LAUGHS), r"cxrnet\.config uses YAML anchors or aliases"),
    "huge YAML": (meta_edit(config="a: b\n" * (MAX_CONFIG_BYTES // 5 + 1)), r"cxrnet\.config is \d+ bytes"),
    "broken YAML": (meta_edit(config="data: [1, 2\nseed: {"), r"cxrnet\.config is not valid YAML"),
    "unsafe YAML tag": (
        meta_edit(config="a: !!python/object/apply:os.system ['true']"),
        r"cxrnet\.config is not valid YAML",
    ),
    "YAML not a mapping": (meta_edit(config="- 1\n- 2\n"), r"cxrnet\.config is YAML of a list"),
    # the metadata as a whole
    "shared-list laughs": (shared_laughs, rf"expands to more than {MAX_METADATA_VALUES} values"),
    "cyclic metadata": (cyclic, r"cxrnet\.heads\.sources\[0\] contains itself"),
    "tensor in metadata": (meta_edit(precision=torch.zeros(3)), r"cxrnet\.precision is a Tensor"),
    # sizes that would allocate many GB
    "huge image_size": (preprocessing_edit(image_size=1 << 20), r"preprocessing\.image_size is 1048576"),
    "image_size not a multiple of 32": (preprocessing_edit(image_size=100), r"preprocessing\.image_size"),
    "image_size a string": (preprocessing_edit(image_size="256"), r"preprocessing\.image_size is '256'"),
    "huge decoder widths": (
        model_edit(decoder_channels=[1 << 20] * 5),
        r"model\.decoder_channels\[0\] is 1048576; expected a whole number in \[1, 4096\]",
    ),
    "decoder widths in bounds but no weights for them": (
        model_edit(decoder_channels=[4096] * 5),
        r"weights in .* do not fit the network its 'model' describes",
    ),
    "zero std": (preprocessing_edit(std=0.0), r"preprocessing\.std is 0\.0"),
    "NaN mean": (preprocessing_edit(mean=math.nan), r"preprocessing\.mean is nan"),
    # temperature
    "NaN temperature": (meta_edit(temperature=math.nan), r"cxrnet\.temperature is nan; expected a finite"),
    "infinite temperature": (meta_edit(temperature=math.inf), r"cxrnet\.temperature is inf"),
    "zero temperature": (meta_edit(temperature=0.0), r"cxrnet\.temperature is 0\.0"),
    "negative temperature": (meta_edit(temperature=-1.0), r"cxrnet\.temperature is -1\.0"),
    "temperature a string": (meta_edit(temperature="1.5"), r"cxrnet\.temperature is '1\.5'"),
    "temperature beyond float range": (meta_edit(temperature=10**400), r"cxrnet\.temperature is 1000000"),
    # one source of truth for the class names
    "top-level classes disagree with the model's": (
        meta_edit(classes=["normal", "covid19", "pneumonia"]),
        r"cxrnet\.classes is \['normal', 'covid19', 'pneumonia'\] but cxrnet\.model\.classes is",
    ),
    "classes disagree with the classifier's outputs": (
        two_classes,
        r"classification_head\.fc\.weight'\] has 3 outputs but classes names 2",
    ),
    "one class": (model_edit(classes=["normal"]), r"model\.classes holds 1 name\(s\); expected 2 to 1000"),
    "repeated class": (
        model_edit(classes=["normal", "normal", "covid19"]),
        r"model\.classes names \['normal'\] more than once",
    ),
    "empty class name": (model_edit(classes=["normal", " ", "covid19"]), r"model\.classes holds ' '"),
    "severity targets disagree": (meta_edit(severity_targets=["opacity"]), r"cxrnet\.severity_targets is"),
    "NaN severity scale": (
        model_edit(severity_scales={"brixia": math.nan}),
        r"severity_scales\.brixia is nan",
    ),
    # names and settings
    "unknown encoder": (model_edit(encoder="resnet9000"), r"model\.encoder is unknown"),
    "unknown decoder": (model_edit(decoder="transformer"), r"model\.decoder is unknown"),
    "unknown model setting": (model_edit(_target_="os.system"), r"model has unknown settings \['_target_'\]"),
    "format version": (meta_edit(format_version=2), r"has checkpoint format 2"),
    "heads of the wrong type": (meta_edit(heads={"cls": {"n": "many"}}), r"cxrnet\.heads\.cls\.n is 'many'"),
    "fingerprint hashes that are not hashes": (
        meta_edit(training_data={"image_hashes": ["zz"]}),
        r"training_data\.image_hashes holds a value",
    ),
    # weights
    "NaN weights": (
        weight_edit("net.classification_head.fc.weight", with_nan),
        r"state_dict\['net\.classification_head\.fc\.weight'\] holds NaN or infinite values",
    ),
    "weights that repeat one stored value": (
        weight_edit("net.decoder.blocks.0.conv1.0.weight", lambda t: torch.zeros(1).expand(t.shape)),
        r"tensors repeat their values",
    ),
    "a weight that is not a tensor": (
        weight_edit("net.classification_head.fc.bias", [0.0, 0.0, 0.0]),
        r"state_dict\['net\.classification_head\.fc\.bias'\] is a list; expected a tensor",
    ),
    "severity scales stored differently": (
        weight_edit("net.severity_head.scales", torch.tensor([1.0])),
        r"severity_head\.scales'\] is \[1\.0\] but model\.severity_scales gives \[18\.0\]",
    ),
}


def test_a_pickle_whose_key_would_hash_forever_is_refused_before_torch_load(tmp_path: Path) -> None:
    path = tmp_path / "hash_bomb.ckpt"
    path.write_bytes(with_pickle_stream(checkpoint_bytes({}), lambda _: tuple_hash_bomb(60)))
    with pytest.raises(CheckpointError, match=r"pickle stream has a dictionary key of over 10000 values"):
        read_checkpoint(path)  # torch.load itself would hash 2**60 tuples
    path.write_bytes(with_pickle_stream(checkpoint_bytes({}), lambda _: tuple_hash_bomb(8)))
    with pytest.raises(CheckpointError, match="not a cxrnet checkpoint"):  # a light key passes the scan
        read_checkpoint(path)


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_checkpoint_is_refused_naming_file_and_field(tmp_path: Path, case: str) -> None:
    edit, message = CRAFTED[case]
    path = write(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_network(path)
    assert str(path) in str(caught.value)


def test_the_small_checkpoint_itself_loads_and_predicts(tmp_path: Path) -> None:
    """Guards the cases above: each is refused for its edit, not because the base file is broken."""
    assert load_case(tmp_path, checkpoint_bytes(small_checkpoint())) == "ok"


LOADERS: dict[str, Callable[[Path, Path], object]] = {
    "read_checkpoint": lambda path, out: read_checkpoint(path),
    "load_network": lambda path, out: load_network(path),
    "load_model": lambda path, out: load_model(path),
    "export_model": lambda path, out: export_model(path, "onnx", out / "model.onnx"),
    "init_from_checkpoint": lambda path, out: init_from_checkpoint(
        create_model(classes=CHECKPOINT_CLASSES, encoder="tu-test_efficientnet"), path
    ),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("case", ["billion laughs YAML", "top-level classes disagree with the model's"])
def test_every_loader_goes_through_the_same_validation(tmp_path: Path, loader: str, case: str) -> None:
    path = write(tmp_path, CRAFTED[case][0])
    with pytest.raises(CheckpointError, match=CRAFTED[case][1]):
        LOADERS[loader](path, tmp_path)
    assert not (tmp_path / "model.onnx").exists()


def test_evaluate_reads_the_split_seed_from_the_stored_config_as_plain_data(tmp_path: Path) -> None:
    meta = read_checkpoint(write(tmp_path))["cxrnet"]
    assert stored_config(meta)["data"] == {"name": "synthetic", "seed": 7, "image_size": 32}
    assert _stored_data_seed(meta) == 7
    assert _stored_data_seed({**meta, "config": "data:\n  seed: ${oc.env:HOME}\n"}) is None  # never resolved
    assert _stored_data_seed({**meta, "config": None}) is None


def test_stored_config_parser_refuses_aliases_before_expanding_them() -> None:
    with pytest.raises(CheckpointError, match="anchors or aliases"):
        parse_stored_config("a: &x [1, 2]\nb: *x\n", "model.ckpt")
    with pytest.raises(CheckpointError, match="nested more than"):
        parse_stored_config("a: " + "[" * 100 + "]" * 100, "model.ckpt")
    assert parse_stored_config("") == {}


def test_a_predictor_refuses_a_temperature_that_is_not_a_finite_positive_number() -> None:
    net = create_model(classes=CHECKPOINT_CLASSES, encoder="tu-test_efficientnet")
    for temperature in (math.nan, math.inf, 0.0):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            Predictor(net, Preprocessing(image_size=32), temperature=temperature)


def test_a_calibrated_temperature_is_applied_and_none_means_one(tmp_path: Path) -> None:
    plain = load_model(write(tmp_path, meta_edit(temperature=None), "plain.ckpt"))
    hot = load_model(write(tmp_path, meta_edit(temperature=100.0), "hot.ckpt"))
    image = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    p_plain = np.array(list(plain.predict(image).probabilities.values()))
    p_hot = np.array(list(hot.predict(image).probabilities.values()))
    assert plain.temperature == 1.0 and hot.temperature == 100.0
    assert np.ptp(p_hot) < np.ptp(p_plain)  # a high temperature flattens the probabilities
