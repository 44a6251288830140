"""Files whose numbers are not finite (found by ``tests/fuzz_run.py``): no reader returns an image of NaN.

A DICOM whose rescale or window is NaN or infinite is refused naming the element (it used to come back as an
all-NaN image, which predict then labelled); a float TIFF holding infinities reads as a finite image with
each infinity at the finite extreme it stands for (it used to give NaN pixels).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrnet.data.images import ImageReadError, read_image
from cxrnet.data.raster import min_max

from fixtures import write_dicom

RAMP = (np.arange(40 * 48).reshape(40, 48) % 4096).astype(np.uint16)


@pytest.mark.parametrize(
    ("element", "settings"),
    [
        ("RescaleSlope", {"slope": math.nan}),
        ("RescaleSlope", {"slope": math.inf}),
        ("RescaleIntercept", {"slope": 1.0, "intercept": -math.inf}),
        ("WindowWidth", {"center": 2048.0, "width": math.nan}),
        ("WindowCenter", {"center": math.inf, "width": 4096.0}),
    ],
)
def test_a_dicom_with_a_non_finite_rescale_or_window_is_refused_naming_the_element(
    tmp_path: Path, element: str, settings: dict[str, float]
) -> None:
    path = write_dicom(tmp_path / "scan.dcm", RAMP, **settings)
    with pytest.raises(ImageReadError, match=rf"DICOM {element} is (nan|inf|-inf)") as caught:
        read_image(path)
    assert caught.value.path == str(path)


def test_a_dicom_whose_rescale_overflows_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "scan.dcm", RAMP, slope=1e306)  # 4095 x 1e306 is beyond float64
    with pytest.raises(ImageReadError, match="not finite after rescaling"):
        read_image(path)


def test_a_dicom_with_finite_rescale_and_window_still_reads(tmp_path: Path) -> None:
    image = read_image(write_dicom(tmp_path / "scan.dcm", RAMP, slope=2.0, center=4096.0, width=8192.0))
    assert image.dtype == np.float32 and image.shape == RAMP.shape
    assert np.isfinite(image).all() and 0.0 <= image.min() < image.max() <= 1.0


def test_infinities_in_a_float_tiff_become_its_finite_extremes(tmp_path: Path) -> None:
    pixels = np.linspace(0.5, 2.0, 40 * 48, dtype=np.float32).reshape(
        40, 48
    )  # outside [0, 1]: min-max scaled
    pixels[0, 0], pixels[0, 1] = math.inf, -math.inf
    Image.fromarray(pixels).save(tmp_path / "float.tif")
    image = read_image(tmp_path / "float.tif")
    assert np.isfinite(image).all()
    assert (image[0, 0], image[0, 1]) == (1.0, 0.0)  # +inf is the brightest pixel, -inf the darkest
    finite = pixels[np.isfinite(pixels)]
    assert image[5, 5] == pytest.approx(
        (pixels[5, 5] - finite.min()) / (finite.max() - finite.min()), abs=1e-6
    )


def test_float64_extremes_do_not_overflow_the_scaling() -> None:
    values = np.array([[-1.7e308, 0.0, 1.7e308]])
    assert np.allclose(min_max(values), [[0.0, 0.5, 1.0]])
