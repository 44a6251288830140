"""Each plot function writes a non-empty PNG of the expected size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from scipy.special import softmax

from cxrnet.evaluation.classification import confusion_matrix
from cxrnet.report.plots import (
    DPI,
    plot_confusion,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_segmentation_grid,
    plot_severity_scatter,
)

NAMES = ["covid19", "normal", "pneumonia"]
MIN_SIDE_PX = 4 * DPI  # every figure is at least 4 inches on each side


def _classification(n_classes: int = 3, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.5
    return y, softmax(logits, axis=1)


def _check_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert min(pixels.shape[:2]) >= MIN_SIDE_PX
    assert pixels[..., :3].std() > 0.01  # something was drawn
    return pixels


@pytest.mark.parametrize("n_classes", [2, 3])
def test_roc_pr_confusion_reliability(tmp_path, n_classes):
    y, p = _classification(n_classes)
    names = NAMES[:n_classes]
    y[:5] = -1  # unlabelled items are tolerated
    assert plot_roc(y, p, names, tmp_path / "roc.png") == tmp_path / "roc.png"
    _check_png(tmp_path / "roc.png")
    _check_png(plot_pr(y, p, names, tmp_path / "pr.png"))
    cm = confusion_matrix(y, p.argmax(1), n_classes)
    for normalize in (False, True):
        _check_png(plot_confusion(cm, names, tmp_path / f"cm_{normalize}.png", normalize=normalize))
    _check_png(plot_reliability(y, p, tmp_path / "sub" / "rel.png"))


def test_roc_with_absent_class_does_not_crash(tmp_path):
    y, p = _classification()
    y[y == 2] = 0
    _check_png(plot_roc(y, p, NAMES, tmp_path / "roc.png"))
    _check_png(plot_pr(y, p, NAMES, tmp_path / "pr.png"))
    cm = confusion_matrix(y, p.argmax(1), 3)
    _check_png(plot_confusion(cm, NAMES, tmp_path / "cm.png", normalize=True))


def test_severity_scatter(tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 9, 80).astype(float)
    est = ref + rng.normal(size=80)
    est[3] = np.nan
    _check_png(plot_severity_scatter(est, ref, tmp_path / "sev.png", "reference extent", "estimated extent"))


@pytest.mark.parametrize("k", [1, 5])
def test_segmentation_grid(tmp_path, k):
    rng = np.random.default_rng(2)
    images = [rng.uniform(size=(96, 80)) for _ in range(k)]
    true = [np.zeros((96, 80), bool) for _ in range(k)]
    for m in true:
        m[30:60, 20:50] = True
    pred = [np.roll(m, 5, axis=1).astype(float) * 0.9 for m in true]
    true[-1] = None  # an image without a reference mask
    pixels = _check_png(
        plot_segmentation_grid(
            images, true, pred, [0.8] * k, [f"img{i}" for i in range(k)], tmp_path / "g.png"
        )
    )
    # The prediction is drawn in red: some pixels must be clearly red.
    red = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    assert red.any()


def test_confusion_rejects_wrong_names(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(np.eye(3, dtype=int), ["a", "b"], tmp_path / "x.png")
