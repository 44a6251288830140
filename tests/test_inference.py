"""The Python API: ``load_model(ckpt).predict(path | array | tensor | list)`` on awkward real-world inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import cxrnet
from cxrnet import Prediction, Predictor, load_model
from cxrnet.checkpoint import CheckpointError
from cxrnet.data.images import ImageReadError
from cxrnet.inference import SyntheticTrainingWarning
from cxrnet.provenance import SYNTHETIC_CAVEAT
from cxrnet.severity import assess_severity

from inference_helpers import (
    CLASSES,
    IMAGE_SIZE,
    SEVERITY_SCALES,
    SEVERITY_TARGETS,
    cohen_heads,
    radiograph,
    synthetic_heads,
    tiny_checkpoint,
    tiny_net,
    write_corrupt_files,
    write_monochrome1_dicom,
    write_png,
    write_tiny_checkpoint,
)

__all__ = ["tiny_checkpoint"]  # a fixture, used by name


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> Predictor:
    return load_model(tiny_checkpoint, device="cpu", batch_size=4)


def assert_same(a: Prediction, b: Prediction, atol: float = 1e-5) -> None:
    assert a.label == b.label
    np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=atol)
    np.testing.assert_allclose(a.infection_map, b.infection_map, atol=atol)
    np.testing.assert_allclose(a.explanation, b.explanation, atol=atol)
    assert (a.lung_mask != b.lung_mask).mean() < 1e-3  # pixels exactly at 0.5 may flip


def check_prediction(pred: Prediction, shape: tuple[int, int]) -> None:
    assert list(pred.probabilities) == CLASSES
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.label == max(pred.probabilities, key=pred.probabilities.get)
    assert pred.lung_mask.shape == pred.infection_map.shape == pred.explanation.shape == shape
    assert pred.lung_mask.dtype == bool
    for values in (pred.infection_map, pred.explanation):
        assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() <= 1.0
    assert (pred.meta["height"], pred.meta["width"]) == shape
    assert pred.meta["model_size"] == IMAGE_SIZE


def test_public_api_and_model_attributes(model: Predictor) -> None:
    assert {"load_model", "Predictor", "Prediction"} <= set(cxrnet.__all__)
    assert {"load_model", "Predictor", "Prediction"} <= set(cxrnet.inference.__all__)
    assert model.classes == CLASSES and model.severity_targets == SEVERITY_TARGETS
    assert model.preprocessing.image_size == IMAGE_SIZE
    assert "tiny.ckpt" in repr(model)


def test_path_array_and_tensor_give_the_same_prediction(model: Predictor, tmp_path: Path) -> None:
    pixels = radiograph(250, 190)  # neither side divisible by 32
    path = write_png(tmp_path / "cxr.png", pixels)
    by_path = model.predict(path)
    check_prediction(by_path, (250, 190))
    assert by_path.meta["source"] == str(path)
    for other in (
        model.predict(str(path)),
        model.predict(pixels),
        model.predict(pixels.astype(np.float32) / 255),
        model.predict(torch.from_numpy(pixels)),
        model.predict(torch.from_numpy(pixels)[None]),  # 1 x H x W
        model.predict(pixels[..., None]),  # H x W x 1
    ):
        assert_same(by_path, other, atol=1e-6)
    assert model.predict(pixels).meta["source"] == "<array>"
    assert model.predict(torch.from_numpy(pixels)).meta["source"] == "<tensor>"


def test_xrv_normalised_arrays_predict_like_their_pixels_with_the_xrv_convention(
    tiny_checkpoint: Path,
) -> None:
    from cxrnet.data.arrays import to_xrv

    pixels = radiograph(120, 100)
    xrv_pixels = to_xrv(pixels)  # torchxrayvision's [-1024, 1024] floats, as its datasets return them
    plain = load_model(tiny_checkpoint, batch_size=2)
    xrv = load_model(tiny_checkpoint, batch_size=2, input_convention="xrv")
    assert xrv.input_convention == "xrv" and plain.input_convention == "cxrnet"
    assert_same(plain.predict(pixels), xrv.predict(xrv_pixels), atol=1e-5)
    assert_same(plain.predict(pixels), xrv.predict(torch.from_numpy(xrv_pixels)), atol=1e-5)
    with pytest.raises(ValueError, match="from_xrv"):  # the cxrnet convention refuses xrv's range, with the fix
        plain.predict(xrv_pixels)
    with pytest.raises(ValueError, match="input_convention"):
        load_model(tiny_checkpoint, input_convention="hounsfield")


@pytest.mark.parametrize("shape", [(250, 190), (20, 20), (190, 250), (3000, 2500)])
def test_maps_come_back_at_the_original_size(model: Predictor, shape: tuple[int, int]) -> None:
    check_prediction(model.predict(radiograph(*shape)), shape)


class _MapsFromImage(Predictor):
    """The tiny model, with smooth lung and infection maps drawn from the image (dark = lung)."""

    def _forward(self, squares: list[np.ndarray]) -> dict[str, np.ndarray]:
        out = super()._forward(squares)
        lung = 1.0 / (1.0 + np.exp((np.stack(squares) - 0.5) * 20.0))
        lower = np.linspace(0.0, 1.0, lung.shape[1])[None, :, None]
        out["lung"], out["infection"] = lung.astype(np.float32), (lung * lower).astype(np.float32)
        return out


def test_severity_from_maps_and_learned(model: Predictor) -> None:
    maps_model = _MapsFromImage(model.net, model.preprocessing)
    small = maps_model.predict(radiograph(40, 36))  # smaller than the model input: scored at original size
    assert small.severity["from_maps"] == assess_severity(small.lung_mask, small.infection_map).to_dict()
    assert small.severity["from_maps"]["area_right"] > 100
    pred = maps_model.predict(radiograph(640, 560))  # larger: scored at model resolution, areas rescaled
    at_full_size = assess_severity(pred.lung_mask, pred.infection_map).to_dict()
    assert at_full_size["area_right"] > 10_000 and at_full_size["fraction_right"] > 0.1
    for key in ("fraction_right", "fraction_left", "fraction_total"):
        assert pred.severity["from_maps"][key] == pytest.approx(at_full_size[key], abs=0.03)
    for key in ("area_right", "area_left"):
        assert pred.severity["from_maps"][key] == pytest.approx(at_full_size[key], rel=0.05)
    learned = pred.severity["learned"]
    assert list(learned) == SEVERITY_TARGETS
    for name, value in learned.items():
        assert 0.0 <= value <= SEVERITY_SCALES[name]


def test_list_gives_a_list_in_order_equal_to_single_predictions(model: Predictor, tmp_path: Path) -> None:
    images = [radiograph(60 + 10 * i, 70, seed=i) for i in range(6)]
    inputs = [images[0], write_png(tmp_path / "b.png", images[1]), torch.from_numpy(images[2]), *images[3:]]
    preds = model.predict(inputs, batch_size=4)  # two batches, the second one partial
    assert isinstance(preds, list) and len(preds) == 6
    for image, pred in zip(images, preds):
        check_prediction(pred, image.shape)
        assert_same(pred, model.predict(image))
    assert model.predict([]) == []


def test_rgb_rgba_and_16_bit_files(model: Predictor, tmp_path: Path) -> None:
    gray = radiograph(90, 80)
    rgb = np.stack([gray, np.roll(gray, 3, axis=1), gray // 2], axis=-1)
    rgba = np.concatenate([rgb, np.full((90, 80, 1), 255, np.uint8)], axis=-1)
    by_rgb_file = model.predict(write_png(tmp_path / "rgb.png", rgb))
    check_prediction(by_rgb_file, (90, 80))
    assert_same(by_rgb_file, model.predict(rgb))  # RGB arrays are reduced to luminance, as files are
    # An opaque RGBA file reads like its RGB content; an RGBA array is ambiguous and refused.
    assert_same(model.predict(write_png(tmp_path / "rgba.png", rgba)), by_rgb_file)
    with pytest.raises(ValueError, match="image is 4-channel RGBA; expected grayscale or RGB"):
        model.predict(rgba)
    with pytest.raises(ValueError, match="4-channel RGBA"):
        model.predict(torch.from_numpy(rgba).permute(2, 0, 1))
    sixteen = (gray.astype(np.uint16) * 257 + 100).astype(np.uint16)
    by_16bit_file = model.predict(write_png(tmp_path / "sixteen.png", sixteen))
    check_prediction(by_16bit_file, (90, 80))
    assert_same(by_16bit_file, model.predict(sixteen))


def test_monochrome1_dicom(model: Predictor, tmp_path: Path) -> None:
    raw = radiograph(120, 100).astype(np.uint16) * 200 + 1000
    path = write_monochrome1_dicom(tmp_path / "scan.dcm", raw)
    pred = model.predict(path)
    check_prediction(pred, (120, 100))
    # No window in the file: min-max scaled, then inverted because MONOCHROME1 shows bone dark.
    expected = 1.0 - (raw - raw.min()) / (raw.max() - raw.min())
    assert_same(pred, model.predict(expected.astype(np.float32)))
    assert not np.allclose(
        pred.probabilities["normal"], model.predict(1.0 - expected).probabilities["normal"]
    )


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((50, 50), 255.0, np.float32), r"\[255, 255\]; expected \[0, 1\]. Divide 8-bit data by 255"),
        (np.full((50, 50), -0.5), "min-max scale"),
        (np.full((50, 50), np.nan), "NaN"),
        (np.zeros((50, 50), np.int64), "dtype int64"),
        (np.zeros((2, 50, 50, 1), np.uint8), "pass several images as a list"),
        (np.zeros((50, 50, 5), np.uint8), "shape 50x50x5"),
        (np.zeros((0, 50), np.uint8), "empty"),
    ],
)
def test_bad_arrays_fail_with_a_fix(model: Predictor, bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        model.predict(bad)


def test_bad_inputs_and_files(model: Predictor, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="file path, a numpy array, a torch tensor"):
        model.predict(42)  # type: ignore[arg-type]
    files = write_corrupt_files(tmp_path)
    with pytest.raises(ImageReadError, match=r"empty\.png"):
        model.predict(files["empty"])
    with pytest.raises(ImageReadError, match="does not exist"):
        model.predict(tmp_path / "missing.png")


def test_predict_files_turns_unreadable_files_into_error_results(model: Predictor, tmp_path: Path) -> None:
    good = [write_png(tmp_path / f"ok{i}.png", radiograph(40 + i, 50, seed=i)) for i in range(3)]
    bad = write_corrupt_files(tmp_path / "bad")
    order = [good[0], bad["truncated"], good[1], bad["random"], bad["empty"], good[2]]
    results = list(model.predict_files(order, batch_size=2, preview_size=32))
    assert [r.path for r in results] == order
    assert [r.error is None for r in results] == [True, False, True, False, False, True]
    for r in results:
        if r.error is None:
            assert r.prediction is not None and max(r.preview.shape) == 32
            assert_same(r.prediction, model.predict(r.path))
        else:
            assert r.prediction is None and r.preview is None and r.error
    assert "empty" in results[4].error and "truncated or corrupt" in results[1].error


class _RecordsFinishing(Predictor):
    """Notes, per full-size prediction built, the thread that built it and how many results were out."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.finished: list[str] = []
        self.yielded = 0
        self.most_waiting = 0

    def _finish(self, out: dict[str, np.ndarray], i: int, item: object) -> Prediction:
        self.finished.append(threading.current_thread().name)
        self.most_waiting = max(self.most_waiting, len(self.finished) - self.yielded)
        return super()._finish(out, i, item)  # type: ignore[arg-type]


@pytest.mark.parametrize("read_ahead", [True, False])
def test_predict_files_builds_maps_off_the_callers_thread_one_batch_at_a_time(
    model: Predictor, tmp_path: Path, read_ahead: bool
) -> None:
    files = [write_png(tmp_path / f"cxr{i}.png", radiograph(40, 50 + i, seed=i)) for i in range(7)]
    broken = write_corrupt_files(tmp_path / "bad")["truncated"]
    order = [*files[:3], broken, *files[3:]]
    recorder = _RecordsFinishing(model.net, model.preprocessing)
    results = []
    for result in recorder.predict_files(order, batch_size=3, read_ahead=read_ahead):
        results.append(result)
        recorder.yielded = sum(r.prediction is not None for r in results)
        time.sleep(0.02)  # a slow consumer (writing rows, drawing): the maps must not run ahead of it
    assert [r.path for r in results] == order and results[3].error and results[3].prediction is None
    for result in results[:3] + results[4:]:  # each file's own maps, whichever row it had in its batch
        assert_same(result.prediction, model.predict(result.path))
    assert len(recorder.finished) == 7
    threads = set(recorder.finished)
    if read_ahead:
        assert all(name.startswith("cxrnet-finish") for name in threads), threads
    else:
        assert threads == {threading.current_thread().name}
    # Full-size predictions built but not yet handed out never exceed one batch, however fast the maps.
    assert recorder.most_waiting <= 3


def test_stopping_predict_files_early_stops_its_threads(model: Predictor, tmp_path: Path) -> None:
    files = [write_png(tmp_path / f"cxr{i}.png", radiograph(40, 50, seed=i)) for i in range(12)]
    recorder = _RecordsFinishing(model.net, model.preprocessing)
    results = recorder.predict_files(files, batch_size=2)
    first = next(results)
    results.close()
    assert first.path == files[0] and first.prediction is not None
    assert len(recorder.finished) <= 4  # the batch handed out and at most the one after it
    assert not [t for t in threading.enumerate() if t.name.startswith(("cxrnet-read", "cxrnet-finish"))]


def test_to_dict_is_json_ready(model: Predictor) -> None:
    pred = model.predict(radiograph(40, 30))
    summary = json.loads(json.dumps(pred.to_dict()))
    assert summary["label"] == pred.label and list(summary["probabilities"]) == CLASSES
    assert set(summary["severity"]) == {"from_maps", "learned"}
    assert summary["meta"]["height"] == 40 and "lung_mask" not in summary
    full = json.loads(json.dumps(pred.to_dict(include_maps=True)))
    assert np.asarray(full["infection_map"]).shape == (40, 30)


def test_not_a_checkpoint_and_missing_devices(tmp_path: Path) -> None:
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.ckpt"):
        load_model(tmp_path / "notes.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a cxrnet checkpoint"):
        load_model(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"CUDA is not available.*device='cpu'"):
            load_model(tmp_path / "missing.ckpt", device="cuda:1")


@pytest.mark.slow
def test_inference_does_not_import_lightning() -> None:
    code = "import sys, cxrnet.inference; print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert not {m for m in loaded.split() if m.split(".")[0] in {"lightning", "pytorch_lightning"}}


def test_a_calibrated_checkpoint_divides_the_logits_by_its_temperature(tmp_path: Path) -> None:
    from cxrnet.checkpoint import save_checkpoint
    from cxrnet.data.transforms import Preprocessing

    net = tiny_net(seed=3)
    plain = load_model(save_checkpoint(tmp_path / "plain.ckpt", net, Preprocessing(image_size=64)))
    hot = load_model(
        save_checkpoint(tmp_path / "hot.ckpt", net, Preprocessing(image_size=64), {"temperature": 4.0})
    )
    image = radiograph(80, 80, seed=1)
    p_plain = np.array(list(plain.predict(image).probabilities.values()))
    p_hot = np.array(list(hot.predict(image).probabilities.values()))
    logits = np.log(p_plain)  # up to a constant, which the softmax ignores
    expected = np.exp(logits / 4.0) / np.exp(logits / 4.0).sum()
    np.testing.assert_allclose(p_hot, expected, atol=1e-5)
    assert p_hot.max() < p_plain.max()  # a higher temperature softens the prediction


# ------------------------------------------------------------------------- untrained heads and caveats


def test_an_untrained_infection_head_gives_no_map_and_no_severity_from_maps(
    model: Predictor, tmp_path: Path
) -> None:
    cohen = load_model(write_tiny_checkpoint(tmp_path / "cohen.ckpt", heads=cohen_heads()))
    assert cohen.untrained == {"infection_map", "severity.from_maps", "severity.learned.brixia"}
    assert "untrained" in repr(cohen)
    pred = cohen.predict(radiograph(90, 80))
    assert pred.untrained == cohen.untrained and pred.caveats == []
    assert pred.infection_map is None
    assert "from_maps" not in pred.severity, "severity from an untrained head must not read as a finding"
    assert pred.severity["learned"].keys() == {"geographic_extent"}
    # What was trained is unchanged (the same weights as the model without a record).
    old = model.predict(radiograph(90, 80))
    assert pred.probabilities == old.probabilities and pred.label == old.label
    np.testing.assert_array_equal(pred.lung_mask, old.lung_mask)
    np.testing.assert_array_equal(pred.explanation, old.explanation)
    summary = json.loads(json.dumps(pred.to_dict(include_maps=True)))
    assert summary["untrained"] == sorted(cohen.untrained) and summary["infection_map"] is None
    assert "from_maps" not in summary["severity"]


def test_keep_untrained_returns_the_outputs_but_still_flags_them(model: Predictor, tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "cohen.ckpt", heads=cohen_heads())
    kept = load_model(path, keep_untrained=True).predict(radiograph(70, 60))
    old = model.predict(radiograph(70, 60))
    assert "infection_map" in kept.untrained and "severity.from_maps" in kept.untrained
    np.testing.assert_allclose(kept.infection_map, old.infection_map)
    assert kept.severity["from_maps"] == old.severity["from_maps"]
    assert set(kept.severity["learned"]) == set(SEVERITY_TARGETS)


def test_older_checkpoints_report_every_head_and_never_warn(model: Predictor, tmp_path: Path) -> None:
    assert model.untrained == frozenset() and model.caveats == [] and not model.synthetic_only
    with warnings.catch_warnings():
        warnings.simplefilter("error", SyntheticTrainingWarning)
        pred = model.predict(write_png(tmp_path / "cxr.png", radiograph(60, 60)))
    assert pred.untrained == frozenset() and pred.caveats == []
    assert pred.infection_map is not None and set(pred.severity) == {"from_maps", "learned"}


def test_a_phantom_only_model_warns_once_per_predictor_on_real_files(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "synthetic.ckpt", heads=synthetic_heads())
    files = [write_png(tmp_path / f"cxr{i}.png", radiograph(60, 50, seed=i)) for i in range(3)]
    phantom_model = load_model(path)
    assert phantom_model.synthetic_only and phantom_model.caveats == [SYNTHETIC_CAVEAT]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_array = phantom_model.predict(radiograph(60, 50))  # arrays are often phantoms: no warning
        assert not caught
        phantom_model.predict(files[0])
        phantom_model.predict(files[1:])
        results = list(phantom_model.predict_files(files))
        load_model(path).predict(files[0])  # a new predictor warns again
    synthetic = [w for w in caught if issubclass(w.category, SyntheticTrainingWarning)]
    assert len(synthetic) == 2
    assert SYNTHETIC_CAVEAT in str(synthetic[0].message) and "synthetic.ckpt" in str(synthetic[0].message)
    assert from_array.caveats == [SYNTHETIC_CAVEAT] == results[0].prediction.caveats
    assert from_array.to_dict()["caveats"] == [SYNTHETIC_CAVEAT]


def test_an_older_phantom_checkpoint_is_told_by_its_training_fingerprint(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "old.ckpt", training_data={"source": ["synthetic"], "n_items": 8})
    with pytest.warns(SyntheticTrainingWarning, match="not validated on real radiographs"):
        pred = load_model(path).predict(write_png(tmp_path / "cxr.png", radiograph(60, 50)))
    assert pred.untrained == frozenset() and pred.caveats == [SYNTHETIC_CAVEAT]


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (1, 300), (30000, 20), (20, 30000)])
def test_tiny_and_extreme_images_predict(model: Predictor, tmp_path: Path, shape: tuple[int, int]) -> None:
    path = write_png(tmp_path / "odd.png", np.full(shape, 128, np.uint8))
    (result,) = model.predict_files([path], preview_size=512)
    assert result.error is None, result.error
    check_prediction(result.prediction, shape)
    assert result.preview.shape[0] >= min(shape[0], 16) and result.preview.shape[1] >= min(shape[1], 16)


class _FailsOnWideImages(Predictor):
    def _finish(self, out: dict[str, np.ndarray], i: int, item: object) -> Prediction:
        if item.meta["width"] > 1000:  # type: ignore[attr-defined]
            raise RuntimeError("cannot score this one")
        return super()._finish(out, i, item)  # type: ignore[arg-type]


def test_a_file_that_fails_after_reading_is_one_error_result(model: Predictor, tmp_path: Path) -> None:
    files = [
        write_png(tmp_path / "a.png", radiograph(60, 50)),
        write_png(tmp_path / "wide.png", radiograph(20, 3000)),
        write_png(tmp_path / "b.png", radiograph(50, 60)),
    ]
    results = list(_FailsOnWideImages(model.net, model.preprocessing).predict_files(files, batch_size=3))
    assert [r.path for r in results] == files
    assert [r.error is None for r in results] == [True, False, True]
    assert "cannot score this one" in results[1].error and results[1].prediction is None
