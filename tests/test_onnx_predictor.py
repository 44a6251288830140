"""``load_model("model.onnx")``: onnxruntime gives the torch predictor's Prediction objects, temperature and
withheld outputs included, from what the export stored in ``metadata_props``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from scipy.special import softmax

from cxrnet import Prediction, Predictor, load_model
from cxrnet.checkpoint import CheckpointError
from cxrnet.data.phantoms import make_phantom
from cxrnet.data.transforms import letterbox, normalize
from cxrnet.export import export_model
from cxrnet.onnx_predictor import OnnxPredictor

from inference_helpers import CLASSES, radiograph, write_corrupt_files, write_png, write_run_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run_checkpoint(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def onnx_file(checkpoint: Path) -> Path:
    return export_model(checkpoint, "onnx", checkpoint.parents[2] / "model.onnx")


@pytest.fixture(scope="module")
def torch_model(checkpoint: Path) -> Predictor:
    return load_model(checkpoint, precision="32-true")


@pytest.fixture(scope="module")
def onnx_model(onnx_file: Path) -> OnnxPredictor:
    return load_model(onnx_file, batch_size=2)


def assert_close(a: Prediction, b: Prediction) -> None:
    """Same fields and the same numbers, to onnxruntime's float error."""
    assert a.label == b.label and list(a.probabilities) == list(b.probabilities)
    np.testing.assert_allclose(
        list(a.probabilities.values()), list(b.probabilities.values()), rtol=0, atol=1e-4
    )
    for name in ("infection_map", "explanation"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.shape == y.shape and x.dtype == y.dtype
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-4, err_msg=name)
    assert a.lung_mask.shape == b.lung_mask.shape and a.lung_mask.dtype == b.lung_mask.dtype == bool
    assert (a.lung_mask != b.lung_mask).mean() < 1e-3  # pixels whose logit is ~0 may flip
    assert a.severity.keys() == b.severity.keys()
    for kind in a.severity:
        assert a.severity[kind].keys() == b.severity[kind].keys()
        for key, value in a.severity[kind].items():
            if isinstance(value, float):
                assert value == pytest.approx(b.severity[kind][key], abs=1e-2), key
    assert a.untrained == b.untrained and a.caveats == b.caveats
    assert a.meta.keys() == b.meta.keys() and a.meta["height"] == b.meta["height"]


def test_the_onnx_file_keeps_temperature_preprocessing_and_training_records(
    onnx_file: Path, torch_model: Predictor
) -> None:
    props = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["format"] == "cxrnet-onnx" and props["classes"] == CLASSES
    assert props["temperature"] == 1.7
    assert props["preprocessing"] == {"image_size": 64, "mean": 0.5, "std": 0.25}
    assert "(pixel in [0, 1] - mean) / std" in props["input_layout"] and props["input_name"] == "image"
    assert props["heads"] == torch_model.heads and "infection_map" in props["untrained_outputs"]
    assert props["training_data"]["n_patients"] == 2 and "patient_ids" not in props["training_data"]
    assert props["precision"] == "bf16-mixed" and props["export_image_size"] == 64
    assert props["model"]["encoder"] == "tu-mobilenetv3_small_100"


def test_load_model_of_an_onnx_file_predicts_as_the_torch_predictor(
    onnx_model: OnnxPredictor, torch_model: Predictor
) -> None:
    assert isinstance(onnx_model, OnnxPredictor) and isinstance(onnx_model, Predictor)
    assert (
        onnx_model.classes == torch_model.classes
        and onnx_model.severity_targets == torch_model.severity_targets
    )
    assert onnx_model.temperature == 1.7 and onnx_model.untrained == torch_model.untrained
    assert onnx_model.preprocessing == torch_model.preprocessing
    images = [make_phantom(3, size=96, label="covid19").image, make_phantom(5, size=128).image[:100, :90]]
    onnx_predictions = onnx_model.predict(images)
    for ours, reference in zip(onnx_predictions, torch_model.predict(images)):
        assert_close(ours, reference)
        assert ours.infection_map is None  # withheld: the Cohen-like training had no infection masks
    kept = load_model(onnx_model.checkpoint, keep_untrained=True).predict(images[0])
    reference = load_model(torch_model.checkpoint, keep_untrained=True, precision="32-true").predict(
        images[0]
    )
    assert kept.infection_map is not None and "infection_map" in kept.untrained
    assert_close(kept, reference)


def test_probabilities_are_the_softmax_of_the_logits_over_the_temperature(onnx_model: OnnxPredictor) -> None:
    image = make_phantom(7, size=64, label="viral").image
    batch = normalize(letterbox(image, 64)[None, None].astype(np.float32), onnx_model.preprocessing)
    (logits,) = onnx_model.session.run(["class_logits"], {"image": batch})
    expected = softmax(logits[0] / 1.7)
    got = list(onnx_model.predict(image).probabilities.values())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert not np.allclose(got, softmax(logits[0]), atol=1e-6)  # the temperature made a difference


def test_files_stream_through_the_shared_machinery(onnx_model: OnnxPredictor, tmp_path: Path) -> None:
    good = write_png(tmp_path / "cxr.png", radiograph(90, 70))
    broken = write_corrupt_files(tmp_path / "broken")["truncated"]
    results = list(onnx_model.predict_files([good, broken, good], batch_size=2))
    assert [r.path for r in results] == [good, broken, good]
    assert results[1].prediction is None and results[1].error
    assert results[0].prediction.lung_mask.shape == (90, 70) and results[2].error is None


def _with_metadata(source: Path, target: Path, edit: Callable[[dict[str, str]], None]) -> Path:
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    edit(props)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


def test_an_older_export_without_temperature_or_records_loads_with_temperature_one(
    onnx_file: Path, tmp_path: Path
) -> None:
    def strip(props: dict[str, str]) -> None:
        for key in ("temperature", "heads", "training_data", "model", "format", "untrained_outputs"):
            props.pop(key)

    model = load_model(_with_metadata(onnx_file, tmp_path / "old.onnx", strip))
    assert model.temperature == 1.0 and model.untrained == frozenset()
    assert model.predict(radiograph(64, 64)).infection_map is not None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.pop("classes"), r"metadata_props lack \['classes'\]"),
        (
            lambda p: p.update(preprocessing='{"image_size": 70, "mean": 0.5, "std": 0.25}'),
            "preprocessing.image_size is 70",
        ),
        (lambda p: p.update(temperature="0"), r"metadata_props temperature is 0"),
        (lambda p: p.update(classes="[not json"), "'classes' is not JSON"),
        (
            lambda p: p.update(
                classes='["a", "b", "c"]',
                model=json.dumps({**json.loads(p["model"]), "classes": ["a", "b", "c"]}),
            ),
            "class_logits has 4 outputs but classes names 3",
        ),
    ],
    ids=["no classes", "image size", "temperature", "not JSON", "class count"],
)
def test_bad_metadata_is_refused_naming_the_file(
    onnx_file: Path, tmp_path: Path, edit: Callable[[dict[str, str]], None], message: str
) -> None:
    path = _with_metadata(onnx_file, tmp_path / "bad.onnx", edit)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_model(path)
    assert str(path) in str(caught.value) and "format=onnx" in str(caught.value)


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(CheckpointError, match="onnxruntime cannot read it"):
        load_model(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")


def test_onnx_models_run_in_float32_only(onnx_file: Path) -> None:
    with pytest.raises(ValueError, match="ONNX models run in float32"):
        load_model(onnx_file, precision="bf16-mixed")


def test_without_the_export_extra_the_message_says_how_to_install_it(
    onnx_file: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r'onnxruntime is not installed.*pip install "cxrnet\[export\]"'):
        load_model(onnx_file)
    with pytest.raises(ImportError, match=r'onnx is not installed.*pip install "cxrnet\[export\]"'):
        export_model(checkpoint, "onnx", tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
    assert load_model(checkpoint).classes == CLASSES  # checkpoints need neither
