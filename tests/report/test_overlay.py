"""The predict overlay: honest about untrained heads and training caveats, robust to tiny and odd images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.text import Text

from cxrnet.inference import Prediction
from cxrnet.provenance import SYNTHETIC_CAVEAT
from cxrnet.report.overlay import overlay_figure, render_overlay
from cxrnet.severity import assess_severity

CLASSES = ("normal", "covid19")


def prediction(
    height: int = 64,
    width: int = 56,
    untrained: frozenset[str] = frozenset(),
    caveats: tuple[str, ...] = (),
    lungs: str = "two",
) -> Prediction:
    """A prediction with two elliptic lungs ("two"), lungs everywhere ("all") or nowhere ("none")."""
    y, x = np.mgrid[0:height, 0:width]
    two = ((x / max(width, 1) - 0.3) / 0.18) ** 2 + ((y / max(height, 1) - 0.5) / 0.35) ** 2 < 1
    two |= ((x / max(width, 1) - 0.7) / 0.18) ** 2 + ((y / max(height, 1) - 0.5) / 0.35) ** 2 < 1
    lung = {"two": two, "all": np.ones_like(two), "none": np.zeros_like(two)}[lungs]
    infection = (lung * (y > height / 2)).astype(np.float32) * 0.9
    severity = {"learned": {"brixia": 7.0}}
    if "severity.from_maps" not in untrained:
        severity["from_maps"] = assess_severity(lung, infection).to_dict()
    return Prediction(
        probabilities=dict(zip(CLASSES, (0.2, 0.8))),
        label="covid19",
        lung_mask=lung,
        infection_map=None if "infection_map" in untrained else infection,
        explanation=np.full((height, width), 0.5, np.float32),
        severity=severity,
        meta={"source": "x.png", "height": height, "width": width},
        untrained=untrained,
        caveats=list(caveats),
    )


def texts(fig: Figure) -> str:
    """Every string drawn on the figure: titles, panel notes, the text column, header and footer."""
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def test_an_untrained_infection_head_is_not_drawn_and_gives_no_severity_numbers() -> None:
    image = np.full((64, 56), 0.5, np.float32)
    trained = overlay_figure(image, prediction())
    untrained = overlay_figure(
        image, prediction(untrained=frozenset({"infection_map", "severity.from_maps"}))
    )
    # Panel 2 is the radiograph alone (one image, no heatmap over it), with a note instead.
    assert len(trained.axes[1].get_images()) == 2 and len(untrained.axes[1].get_images()) == 1
    shown = texts(untrained)
    assert "infection head untrained" in shown
    for finding in ("infected right lung", "Brixia-like total", "grade"):
        assert finding in texts(trained) and finding not in shown
    assert "brixia" in shown  # the learned head was trained: its score stays


def test_a_flagged_map_kept_with_keep_untrained_is_not_drawn_either() -> None:
    pred = prediction()
    pred.untrained = frozenset({"infection_map", "severity.from_maps"})  # maps kept, but flagged
    fig = overlay_figure(np.full((64, 56), 0.5, np.float32), pred)
    assert len(fig.axes[1].get_images()) == 1 and "infected right lung" not in texts(fig)


def test_untrained_learned_targets_and_classifier_say_so() -> None:
    pred = prediction(
        untrained=frozenset({"severity.learned.geographic_extent", "probabilities", "explanation"})
    )
    pred.probabilities, pred.label, pred.explanation = {}, None, None
    shown = texts(overlay_figure(np.full((64, 56), 0.5, np.float32), pred))
    assert "classifier untrained" in shown and "Predicted: n/a" in shown
    assert "geographic extent" in shown and "untrained" in shown
    assert "explanation untrained" in shown


def test_caveats_are_printed(tmp_path: Path) -> None:
    fig = overlay_figure(np.full((64, 56), 0.5, np.float32), prediction(caveats=(SYNTHETIC_CAVEAT,)))
    assert SYNTHETIC_CAVEAT in texts(fig)
    assert SYNTHETIC_CAVEAT not in texts(overlay_figure(np.full((64, 56), 0.5, np.float32), prediction()))


@pytest.mark.parametrize(
    ("shape", "lungs"),
    [
        ((1, 1), "all"),
        ((1, 1), "none"),
        ((2, 2), "all"),
        ((2, 3), "two"),
        ((1, 300), "all"),
        ((512, 1), "two"),
    ],
)
def test_tiny_and_extreme_images_draw(tmp_path: Path, shape: tuple[int, int], lungs: str) -> None:
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    path = render_overlay(image, prediction(*shape, lungs=lungs), tmp_path / "o.png")
    assert imread(path).shape[0] > 300


def test_a_strip_fills_its_panels() -> None:
    fig = overlay_figure(np.random.default_rng(0).random((512, 16)).astype(np.float32), prediction(512, 16))
    fig.canvas.draw()  # applies the aspect: an "equal" one would shrink the panel to a sliver
    width, height = fig.axes[0].get_position().size
    assert width > 0.5 * height * fig.get_figheight() / fig.get_figwidth()  # not a 1-pixel sliver
    assert "shown stretched" in texts(fig)


def test_an_empty_image_is_refused_with_its_shape() -> None:
    with pytest.raises(ValueError, match=r"non-empty HxW.*\(0, 5\)"):
        overlay_figure(np.zeros((0, 5), np.float32), prediction())
