"""The predict overlay: honest about untrained heads and training caveats, robust to tiny and odd images."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.text import Text
from PIL import Image

import cxrnet.report.overlay as overlay
from cxrnet.inference import Prediction
from cxrnet.provenance import SYNTHETIC_CAVEAT
from cxrnet.report import drawing
from cxrnet.report.overlay import MAX_CAVEATS, overlay_figure, render_overlay
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
        ((30000, 20), "two"),
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


# --- the PNG of render_overlay ---------------------------------------------------------------------------

GRAY = np.full((64, 56), 0.5, np.float32)  # drawn as 128: any other colour in a panel was drawn over it


def png(
    tmp_path: Path, pred: Prediction, image: np.ndarray = GRAY, size: int = 128, **kwargs: object
) -> np.ndarray:
    """The RGB pixels of the overlay written for ``pred``; no other file is left in ``tmp_path``."""
    path = render_overlay(image, pred, tmp_path / "o.png", display_size=size, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]  # no .tmp left behind
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def panels(pixels: np.ndarray, size: int = 128) -> list[np.ndarray]:
    """The three image panels (the non-white blocks larger than a quarter panel), left to right."""
    drawn = (pixels != 255).any(axis=2).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(drawn, connectivity=4)
    blocks = sorted((left, top, w, h) for left, top, w, h, area in stats[1:] if area > size * size / 4)
    assert len(blocks) == 3, blocks
    return [pixels[top : top + h, left : left + w] for left, top, w, h in blocks]


def green(pixels: np.ndarray) -> np.ndarray:
    r, g, b = np.moveaxis(pixels, -1, 0)
    return (g > r + 60) & (r == b)


def heat_coloured(pixels: np.ndarray) -> np.ndarray:
    """Pixels of a colour map over the gray image; gray, the green contour and the red note all repeat a
    channel."""
    r, g, b = np.moveaxis(pixels, -1, 0)
    return (r != g) & (g != b) & (r != b)


def red_rows(pixels: np.ndarray) -> int:
    r, g, b = np.moveaxis(pixels, -1, 0)
    return int(((r > g + 60) & (g == b)).any(axis=1).sum())


@pytest.mark.parametrize(
    ("shape", "block"), [((64, 56), (128, 112)), ((32, 64), (64, 128)), ((300, 20), (128, 128))]
)
def test_each_panel_shows_the_image_at_the_display_size(
    tmp_path: Path, shape: tuple[int, int], block: tuple[int, int]
) -> None:
    pixels = png(tmp_path, prediction(*shape, lungs="none"), np.full(shape, 0.5, np.float32))
    first, second, third = panels(pixels)
    assert first.shape[:2] == second.shape[:2] == third.shape[:2] == block  # aspect kept, a strip stretched
    assert (first == 128).all() and (second == 128).all()  # no lungs; no infection above MIN_HEAT
    assert heat_coloured(third).mean() > 0.99  # the explanation map, 0.5 everywhere


@pytest.mark.parametrize("lungs", ["two", "left half"])
def test_the_lung_contour_runs_along_the_mask_edge_in_the_first_two_panels(
    tmp_path: Path, lungs: str
) -> None:
    pred = prediction()
    if lungs == "left half":  # touches the image border, where no outline belongs
        pred.lung_mask = np.mgrid[0:64, 0:56][1] < 28
    first, second, third = panels(png(tmp_path, pred))
    mask = np.kron(pred.lung_mask, np.ones((2, 2))).astype(np.uint8)  # at the panel's scale
    off_edge = cv2.distanceTransform(1 - cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, None), cv2.DIST_L2, 3)
    assert green(first).sum() > 200 and off_edge[green(first)].max() <= 3
    assert green(second).sum() > 200 and not green(third).any()


def test_a_mask_too_small_for_a_contour_is_tinted(tmp_path: Path) -> None:
    first, second, _ = panels(png(tmp_path, prediction(1, 1, lungs="all"), np.full((1, 1), 0.5, np.float32)))
    assert green(first).all() and green(second).all()


@pytest.mark.parametrize("withheld", [True, False])
def test_an_untrained_infection_head_leaves_its_panel_without_heat(tmp_path: Path, withheld: bool) -> None:
    untrained = frozenset({"infection_map", "severity.from_maps"})
    pred = prediction(untrained=untrained)  # the map withheld (None)
    if not withheld:
        pred = prediction()
        pred.untrained = untrained  # the map kept, as with keep_untrained=True, but flagged
    _, second, third = panels(png(tmp_path, pred))
    assert not heat_coloured(second).any() and heat_coloured(third).mean() > 0.9
    r, g, b = np.moveaxis(second, -1, 0)
    assert ((r > 150) & (g < 30) & (b < 30)).sum() > 1000  # the note on its red box
    trained = panels(png(tmp_path / "trained", prediction()))[1]
    assert heat_coloured(trained).sum() > 1000  # the lower halves of the lungs


def test_caveats_get_a_red_line_each_up_to_the_limit(tmp_path: Path) -> None:
    drawn = [png(tmp_path / str(n), prediction(caveats=(SYNTHETIC_CAVEAT,) * n)) for n in range(6)]
    heights = [pixels.shape[0] for pixels in drawn]
    line = heights[1] - heights[0]
    assert line > 0 and heights[: MAX_CAVEATS + 1] == [heights[0] + n * line for n in range(MAX_CAVEATS + 1)]
    assert heights[MAX_CAVEATS + 1] == heights[MAX_CAVEATS]  # the rest summed up in the last line
    assert red_rows(drawn[0]) > 0  # the disclaimer
    assert red_rows(drawn[2]) > red_rows(drawn[1]) > red_rows(drawn[0])


def test_a_long_class_name_widens_the_text_column(tmp_path: Path) -> None:
    short = png(tmp_path / "short", prediction())
    pred = prediction()
    pred.probabilities = {"normal": 0.2, "covid19 with a very, very long class name": 0.8}
    assert png(tmp_path / "long", pred).shape[1] > short.shape[1]


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = render_overlay(GRAY, prediction(), tmp_path / "o.png")
    before = path.read_bytes()

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(overlay.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        render_overlay(GRAY, prediction(caveats=(SYNTHETIC_CAVEAT,)), path)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


@pytest.fixture
def no_matplotlib_fonts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    caches = (drawing._font_file, drawing._glyphs, drawing.bar_tile, drawing.note_tile)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:  # nothing drawn in the fallback font outlives the test
        cache.cache_clear()


@pytest.mark.usefixtures("no_matplotlib_fonts")
def test_without_matplotlib_fonts_the_default_font_is_used(tmp_path: Path) -> None:
    assert drawing.font_of(drawing.TITLE_STYLE) is drawing.font_of(drawing.TITLE_STYLE)  # loaded once
    assert panels(png(tmp_path, prediction()))[0].shape[:2] == (128, 112)
