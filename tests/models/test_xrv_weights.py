"""model.encoder_weights: a torchxrayvision DenseNet-121 state dict (or an smp encoder's) into CXRNet's encoders.

Every xrv model here is built with ``weights=None`` (random initialisation): nothing is downloaded. Images are
64 px: DenseNet-121 is slow on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchxrayvision as xrv
from hydra.utils import instantiate

from cxrnet.checkpoint_validation import _MODEL_KEYS
from cxrnet.data.transforms import Preprocessing
from cxrnet.models import create_model
from cxrnet.models.encoder_weights import load_encoder_weights

from conftest import compose_train

SMALL = "tu-mobilenetv3_small_100"
CLASSES = ["normal", "covid19"]


def xrv_densenet(seed: int = 0) -> xrv.models.DenseNet:
    """A randomly initialised xrv DenseNet-121 whose batch-norm statistics are not the defaults either, so
    that copying them, and using them in eval mode, is tested too."""
    torch.manual_seed(seed)
    model = xrv.models.DenseNet(weights=None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def xrv_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    model = xrv_densenet()
    path = tmp_path_factory.mktemp("weights") / "xrv-densenet121.pt"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_an_xrv_densenet_goes_into_both_densenet121_encoders_tensor_for_tensor(xrv_file) -> None:
    path, reference = xrv_file
    net = create_model(
        classes=CLASSES, encoder="densenet121", encoder_weights=path, encoder_weights_input="cxrnet"
    )
    report = net.encoder_weights
    assert report.kind == "densenet121" and set(report.loaded) == {"encoder", "classifier_encoder"}
    assert report.missing == {"encoder": [], "classifier_encoder": []}
    assert report.unused == [
        "classifier.bias",
        "classifier.weight",
    ]  # xrv's 18-pathology head: no encoder part
    for encoder in (net.encoder, net.classifier_encoder):
        own = encoder.state_dict()
        assert set(own) == set(reference) - {"classifier.weight", "classifier.bias"}
        unequal = [key for key in own if not torch.equal(own[key], reference[key])]
        assert not unequal, unequal[:5]


def test_xrv_weights_compute_on_cxrnets_input_what_xrv_computes_on_its_own(xrv_file) -> None:
    path, reference = xrv_file
    net = create_model(classes=CLASSES, encoder="densenet121", classifier_encoder=SMALL, encoder_weights=path)
    report = net.encoder_weights
    assert set(report.loaded) == {"encoder"}  # encoder 2 is no densenet121: left alone
    own = net.encoder.state_dict()
    # the first convolution absorbs the change of input scale, 2048 x data.std = 512: exact, a power of two
    assert torch.equal(own["features.conv0.weight"], reference["features.conv0.weight"] * 512)
    assert all(torch.equal(own[k], reference[k]) for k in own if k != "features.conv0.weight")
    assert any("x 512" in note for note in report.adapted)

    pixels = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    cxrnet_input = torch.from_numpy(Preprocessing(image_size=64).prepare(pixels))[None]
    xrv_input = torch.from_numpy(xrv.datasets.normalize(pixels, maxval=255, reshape=True))[None]
    model = xrv_densenet()  # the same weights and statistics as the file
    with torch.no_grad():
        expected = model.features(xrv_input)
        got = net.encoder.eval()(cxrnet_input)[-1]
        unscaled = create_model(
            classes=CLASSES, encoder="densenet121", classifier_encoder=SMALL, encoder_weights=path,
            encoder_weights_input="cxrnet",
        ).encoder.eval()(cxrnet_input)[-1]  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert (unscaled - expected).abs().max() > 0.1 * expected.abs().max()  # copying as-is would not


def test_a_plain_smp_encoder_state_dict_loads_where_it_fits(tmp_path: Path) -> None:
    source = create_model(classes=CLASSES, encoder=SMALL)
    state = {f"module.{k}": v for k, v in source.encoder.state_dict().items()}  # as DataParallel saves it
    dropped = sorted(state)[:3]
    for key in dropped:
        del state[key]
    torch.save(state, tmp_path / "encoder.pt")
    net = create_model(
        classes=CLASSES,
        encoder=SMALL,
        encoder_weights=tmp_path / "encoder.pt",
        encoder_weights_input="cxrnet",
    )
    report = net.encoder_weights
    assert report.kind == "encoder" and report.missing["encoder"] == [
        k.removeprefix("module.") for k in dropped
    ]
    for encoder in (net.encoder, net.classifier_encoder):
        own = encoder.state_dict()
        assert all(
            torch.equal(own[k], v)
            for k, v in source.encoder.state_dict().items()
            if k in report.loaded["encoder"]
        )


def test_files_that_are_not_encoder_state_dicts_are_refused_naming_the_file(tmp_path: Path, xrv_file) -> None:
    small = create_model(classes=CLASSES, encoder=SMALL)

    def refused(obj: object, match: str, error: type[Exception] = ValueError, **kwargs: object) -> None:
        path = tmp_path / "weights.pt"
        torch.save(obj, path)
        with pytest.raises(error, match=match) as caught:
            load_encoder_weights(small, path, **kwargs)
        assert str(path) in str(caught.value)

    refused(
        xrv_file[1], r"holds DenseNet-121 weights, but no encoder .*model.encoder=tu-mobilenetv3_small_100"
    )
    refused({"conv1.weight": torch.zeros(64, 1, 7, 7)}, r"not a DenseNet-121 state dict .*too few")
    refused(torch.nn.Linear(2, 2), r"weights_only=True.*torch.save\(model.state_dict\(\), path\)")
    refused({"state_dict": {"net.encoder.x": torch.zeros(1)}}, "training checkpoint.*init_from")
    refused(
        {"features.conv0.weight": [1, 2]}, "not a state dict: its entry 'features.conv0.weight' holds a list"
    )
    refused(small.encoder.state_dict(), r"data.mean=0.5", mean=0.4)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt does not exist"):
        load_encoder_weights(small, tmp_path / "nowhere.pt")
    with pytest.raises(ValueError, match="xrv, cxrnet"):
        load_encoder_weights(small, xrv_file[0], convention="imagenet")


def test_the_dense_net_check_tells_densenet121_from_others() -> None:
    from cxrnet.models.encoder_weights import densenet121_problem

    assert densenet121_problem(xrv.models.DenseNet(weights=None).state_dict()) is None
    bigger = xrv.models.DenseNet(weights=None, block_config=(6, 12, 32, 32)).state_dict()  # a DenseNet-169
    assert densenet121_problem(bigger) == "features.norm5.weight is (1664,), not (1024,)"
    del bigger["features.conv0.weight"]
    assert densenet121_problem(bigger) == "no features.conv0.weight or features.norm5.weight"


def test_torchvision_style_old_names_and_rgb_stems_are_read(tmp_path: Path, xrv_file) -> None:
    reference = xrv_file[1]
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in reference.items()}
    old["features.conv0.weight"] = reference["features.conv0.weight"].repeat(1, 3, 1, 1) / 3  # an RGB stem
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "old.pt")
    net = create_model(
        classes=CLASSES, encoder="densenet121", classifier_encoder=SMALL, encoder_weights=tmp_path / "old.pt",
        encoder_weights_input="cxrnet",
    )  # fmt: skip
    own = net.encoder.state_dict()
    assert net.encoder_weights.missing["encoder"] == []
    torch.testing.assert_close(own["features.conv0.weight"], reference["features.conv0.weight"])
    assert torch.equal(
        own["features.denseblock4.denselayer16.norm1.weight"],
        reference["features.denseblock4.denselayer16.norm1.weight"],
    )


def test_the_model_config_key_loads_the_file_and_checkpoints_do_not_store_it(
    tmp_path: Path, xrv_file
) -> None:
    path = xrv_file[0]
    cfg = compose_train(
        ["data.image_size=64", "model.encoder=densenet121", f"model.classifier_encoder={SMALL}",
         f"model.encoder_weights={path}"],
        tmp_path,
    )  # fmt: skip
    net = instantiate(cfg.model, _convert_="all")
    assert set(net.encoder_weights.loaded) == {"encoder"}
    assert torch.equal(
        net.encoder.state_dict()["features.norm5.running_var"], xrv_file[1]["features.norm5.running_var"]
    )
    assert (
        set(net.config) <= _MODEL_KEYS and "encoder_weights" not in net.config
    )  # rebuilt from the checkpoint
    with torch.device("meta"):  # as train's precision rule and the checkpoint check build it: nothing to load
        skeleton = instantiate(cfg.model, _convert_="all")
    assert skeleton.encoder_weights is None
