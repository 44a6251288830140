"""Sanity checks (Adebayo et al., 2018): the similarity measures, the randomised copies, and the checks on a
tiny CXRNet trained for a few dozen steps on a synthetic blob task, with true and with shuffled labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from cxrnet.explain import native_explanation
from cxrnet.explain.sanity import (
    PARTS,
    class_sensitivity_check,
    compare_maps,
    label_randomisation_check,
    model_randomisation_check,
    randomised_copy,
    rank_correlation,
    structural_similarity,
)
from cxrnet.models import CXRNet, create_model

TINY = {"encoder": "tu-mobilenetv3_small_100", "decoder_channels": [32, 24, 16, 16, 8]}


def tiny_net(classes: list[str] | None = None) -> CXRNet:
    torch.manual_seed(0)
    return create_model(classes=classes or ["none", "blob"], **TINY)


# --- similarity measures ------------------------------------------------------------------------------


def test_rank_correlation_is_spearman_per_image_with_ties() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(3, 12, 10)).astype(float)  # many ties
    b = a + rng.normal(scale=2.0, size=a.shape)
    rho = rank_correlation(torch.from_numpy(a), torch.from_numpy(b))
    expected = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(rho.numpy(), expected, rtol=1e-12)
    assert rank_correlation(a[0], a[0]).item() == pytest.approx(1.0)
    assert rank_correlation(a[0], -a[0]).item() == pytest.approx(-1.0)
    assert torch.isnan(rank_correlation(np.zeros((4, 4)), a[0, :4, :4])).all()
    with pytest.raises(ValueError, match="cannot be compared"):
        rank_correlation(a, b[:, :6])


def test_flat_maps_agree_with_flat_maps_and_share_nothing_with_others() -> None:
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    flat = maps.clone()
    flat[0], flat[1] = 0.0, 0.0
    other = flat.clone()
    other[0] = maps[0]  # only one of the pair is flat
    result = compare_maps(flat, other, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(result.rank_correlation, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(structural_similarity(maps, maps), torch.ones(3, dtype=torch.float64))


# --- randomised copies --------------------------------------------------------------------------------


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_randomised_copy_changes_only_its_part_and_is_seeded() -> None:
    net = tiny_net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    copy = randomised_copy(net, "classifier", seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the global random state is untouched
    assert not copy.training
    assert _changed(net.classifier_encoder, copy.classifier_encoder)
    assert _changed(net.classification_head, copy.classification_head)
    for name in ("encoder", "decoder", "segmentation_head"):
        assert not _changed(getattr(net, name), getattr(copy, name)), name
    explanation = randomised_copy(net, "explanation", seed=3)
    assert _changed(net.encoder, explanation.encoder) and _changed(
        net.segmentation_head, explanation.segmentation_head
    )
    assert not _changed(net.classifier_encoder, explanation.classifier_encoder)
    assert not _changed(copy, randomised_copy(net, "classifier", seed=3))
    assert _changed(copy, randomised_copy(net, "classifier", seed=4))
    for key, value in net.state_dict().items():  # the original is untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="valid parts: classifier, explanation, all"):
        randomised_copy(net, "decoder")
    assert set(PARTS["all"]) == set(PARTS["classifier"]) | set(PARTS["explanation"])


def test_native_map_ignores_encoder_2_by_design() -> None:
    # The cascading point: randomising encoder 2 leaves the native map exactly as it was, because it comes
    # from encoder 1 and the decoder. The check for the native map must randomise part="explanation".
    net = tiny_net().eval()
    images = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    result = model_randomisation_check(net, "native", images, part="classifier", ssim=False)
    torch.testing.assert_close(result.rank_correlation, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(
        native_explanation(randomised_copy(net, "classifier"), images), native_explanation(net, images)
    )


# --- the checks on trained tiny networks --------------------------------------------------------------


def blob_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """64-px noise images; class 1 ("blob") has a bright Gaussian blob (σ = 5 px) at a random place."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(n, 1, 64, 64, generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centres = torch.randint(12, 52, (n, 2), generator=generator).float()
    for i in torch.nonzero(labels).flatten():
        blob = torch.exp(-((rows - centres[i, 0]) ** 2 + (cols - centres[i, 1]) ** 2) / (2 * 5.0**2))
        images[i, 0] += 2.5 * blob
    return images, labels


def train_tiny(images: torch.Tensor, labels: torch.Tensor, steps: int = 40) -> CXRNet:
    """The same initialisation and schedule every time: Adam 1e-2, batches of 16, class loss + area penalty."""
    net = tiny_net()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    net.train()
    for _ in range(steps):
        batch = torch.randint(0, len(images), (16,), generator=generator)
        out = net(images[batch])
        loss = F.cross_entropy(out.class_logits, labels[batch]) + 0.1 * out.explanation.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval()


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.Tensor | CXRNet]:
    images, labels = blob_task(128, seed=0)
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]
    test_images, test_labels = blob_task(48, seed=99)
    true = train_tiny(images, labels)
    with torch.no_grad():
        recognised = true(test_images).class_logits.argmax(1) == 1
    # The checks explain the class the model predicts, so they run on blob images it recognises: a few
    # dozen steps learn the task on every CPU, but which one or two test blobs it misses depends on the
    # CPU's convolution kernels (none on an AMD EPYC, two of the first twelve on an Intel Xeon with AMX).
    return {
        "true": true,
        "shuffled": train_tiny(images, shuffled),
        "test_images": test_images,
        "test_labels": test_labels,
        "blobs": test_images[(test_labels == 1) & recognised][:12],
    }


@pytest.mark.slow
def test_the_true_label_model_learned_the_task(trained: dict) -> None:
    # without this the label-randomisation test below would compare two untrained networks
    with torch.no_grad():
        predicted = trained["true"](trained["test_images"]).class_logits.argmax(1)
        shuffled = trained["shuffled"](trained["test_images"]).class_logits.argmax(1)
    assert (predicted == trained["test_labels"]).float().mean() >= 0.9  # measured 1.0
    assert (shuffled == trained["test_labels"]).float().mean() <= 0.75  # measured 0.5: chance


@pytest.mark.slow
@pytest.mark.parametrize(("explainer", "threshold"), [("native", 0.5), ("gradcam", 0.5), ("gradcam++", 0.5)])
def test_label_randomisation_changes_the_maps(trained: dict, explainer: str, threshold: float) -> None:
    # measured mean ρ over 12 blob images: native 0.25-0.34, Grad-CAM 0.2-0.3, Grad-CAM++ 0.2-0.35
    # (the native map of the untrained initialisation correlates 0.1-0.2 with the trained one)
    result = label_randomisation_check(trained["true"], trained["shuffled"], explainer, trained["blobs"])
    assert result.rank_correlation.shape == (12,) and result.ssim is not None
    assert (result.class_index == 1).all()  # the trained model's prediction on blob images
    assert result.rank_correlation.mean() < threshold, result.rank_correlation


@pytest.mark.slow
@pytest.mark.parametrize(
    ("explainer", "part", "threshold"),
    [("native", "explanation", 0.3), ("gradcam", "classifier", 0.5), ("layercam", "classifier", 0.5)],
)
def test_model_randomisation_changes_the_maps(
    trained: dict, explainer: str, part: str, threshold: float
) -> None:
    # measured mean ρ: native (encoder 1 + decoder randomised) 0.08-0.16; Grad-CAM and LayerCAM (encoder 2
    # randomised) -0.2-0.3, single images anywhere in [-0.9, 0.9]
    result = model_randomisation_check(trained["true"], explainer, trained["blobs"], part=part, ssim=False)
    assert result.rank_correlation.mean() < threshold, result.rank_correlation


@pytest.mark.slow
def test_class_sensitivity_of_gradcam_and_not_of_the_native_map(trained: dict) -> None:
    native = class_sensitivity_check(trained["true"], "native", trained["blobs"], ssim=False)
    torch.testing.assert_close(native.rank_correlation, torch.ones(12, dtype=torch.float64))
    cam = class_sensitivity_check(trained["true"], "gradcam", trained["blobs"], ssim=False)
    assert (cam.class_index == 0).all()  # two classes: the least likely is the other one
    assert cam.rank_correlation.mean() < 0.5, cam.rank_correlation
