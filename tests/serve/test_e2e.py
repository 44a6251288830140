"""The viewer in a real browser: headless Chromium (selenium, the local chromedriver) on the real server.

Screenshots go to ``tmp_path``, or to ``$CXRNET_SCREENSHOT_DIR`` when set (``experiments/viewer/`` holds the
ones made so); ``$CXRNET_VIEWER_CHECKPOINT`` swaps the tiny random model for a trained one, for screenshots
worth looking at. Either way every assertion compares the page with the model's own prediction.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cxrnet.inference import load_model
from cxrnet.predictor import Predictor
from cxrnet.serve.app import create_app
from cxrnet.serve.browse import PredictionsTable
from cxrnet.serve.settings import ServeSettings

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MAX_SCREENSHOT_BYTES = 200_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
        reason=f"needs Chromium at {CHROMIUM} and chromedriver at {CHROMEDRIVER}",
    ),
]

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
uvicorn = pytest.importorskip("uvicorn", reason="needs uvicorn")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The app on uvicorn in a thread, on a free local port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def model(predictor: Predictor) -> Predictor:
    checkpoint = os.environ.get("CXRNET_VIEWER_CHECKPOINT")
    return load_model(checkpoint) if checkpoint else predictor


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,1250",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CXRNET_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver: Any, path: Path) -> Path:
    """The page as a small PNG (adaptive palette; shrunk until it is under 200 kB)."""
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    while True:
        buffer = io.BytesIO()
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
        if buffer.tell() < MAX_SCREENSHOT_BYTES or image.width < 400:
            break
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
    path.write_bytes(buffer.getvalue())
    assert path.stat().st_size < MAX_SCREENSHOT_BYTES
    return path


def wait_for(driver: Any, condition: Any, timeout: float = 120) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def text_of(driver: Any, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_upload_view_layers_and_browse_in_a_browser(
    browser: Any,
    model: Predictor,
    images: dict[str, Path],
    make_predict_folder: Any,
    write_phantom: Any,
    shots: Path,
    tmp_path: Path,
) -> None:
    folder = make_predict_folder(model.checkpoint)
    app = create_app(model, settings=ServeSettings(), predictions=PredictionsTable(folder))
    photo = write_phantom(tmp_path / "phantom.png", size=320)
    expected = model.predict(photo)
    maps = expected.severity["from_maps"]
    with LiveServer(app) as server:
        browser.get(server.url + "/")
        wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        assert "Research software, not a medical device." in text_of(browser, "notice")
        picker = browser.find_element(By.ID, "file-input")
        picker.send_keys(f"{photo}\n{images['dicom']}")
        wait_for(browser, lambda d: text_of(d, "progress-text") == "2 of 2 done")
        wait_for(browser, lambda d: text_of(d, "label").startswith("Predicted:"))
        assert text_of(browser, "result-title").startswith("phantom.png (320×320 px)")
        assert text_of(browser, "label") == f"Predicted: {expected.label}"
        summary = (
            f"Grade {maps['grade']}: Brixia-like total {maps['brixia_total']}/18, "
            f"geographic extent {maps['geographic_extent']}/8"
        )
        assert text_of(browser, "severity-summary") == summary
        bars = browser.find_elements(By.CSS_SELECTOR, "#probabilities .bar span")
        assert len(bars) == len(model.classes)
        scores = {
            s.get_attribute("data-zone"): int(s.get_attribute("data-score"))
            for s in browser.find_elements(By.CSS_SELECTOR, "#zone-scores text")
        }
        assert scores and all(score == maps[f"zone_score_{zone}"] for zone, score in scores.items())
        layer = browser.find_element(By.ID, "layer-lung")
        wait_for(
            browser,
            lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", layer),
        )
        assert layer.is_displayed()
        assert not browser.find_element(By.ID, "layer-explanation").is_displayed()
        screenshot(browser, shots / "upload_result.png")

        browser.find_element(By.ID, "toggle-lung").click()
        browser.find_element(By.ID, "toggle-explanation").click()
        assert not layer.is_displayed()
        assert browser.find_element(By.ID, "layer-explanation").is_displayed()
        slider = browser.find_element(By.ID, "opacity")
        browser.execute_script(
            "arguments[0].value = 90; arguments[0].dispatchEvent(new Event('input'))", slider
        )
        opacity = browser.execute_script("return document.getElementById('layer-infection').style.opacity")
        assert opacity == "0.9"
        screenshot(browser, shots / "layers_toggled.png")

        browser.find_element(By.ID, "browse-tab").click()
        rows = browser.find_elements(By.CSS_SELECTOR, "#browse-table tbody tr")
        assert len(rows) == 3

        def statuses() -> list[str]:
            return [
                r.find_elements(By.TAG_NAME, "td")[2].text
                for r in browser.find_elements(By.CSS_SELECTOR, "#browse-table tbody tr")
            ]

        header = '#browse-table th[data-key="status"]'
        browser.find_element(By.CSS_SELECTOR, f"{header} button").click()
        assert statuses() == ["error", "ok", "ok"]
        assert browser.find_element(By.CSS_SELECTOR, header).get_attribute("aria-sort") == "ascending"
        browser.find_element(By.CSS_SELECTOR, f"{header} button").click()
        assert statuses() == ["ok", "ok", "error"]
        screenshot(browser, shots / "browse_table.png")
        browser.find_element(By.ID, "filter").send_keys("phantom2")
        rows = browser.find_elements(By.CSS_SELECTOR, "#browse-table tbody tr")
        assert [r.get_attribute("data-row") for r in rows] == ["1"]
        assert text_of(browser, "browse-count") == "1 of 3 rows"
        rows[0].click()
        wait_for(browser, lambda d: text_of(d, "result-title").startswith("phantom2.png"))
        links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")]
        assert "stored record (JSON)" in links and "lung mask (PNG)" in links

        browser.find_element(By.CSS_SELECTOR, '.tab[data-view="card"]').click()
        card = text_of(browser, "card")
        assert "NOT A MEDICAL DEVICE." in card and "Intended use" in card
        assert all(name in card for name in model.classes)
        screenshot(browser, shots / "model_card.png")

        store = app.state.store
        assert len(store) == 1
        browser.get("about:blank")  # pagehide: the page's close beacon ends the session
        deadline = time.monotonic() + 10
        while (len(store) or any(store.root.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(store) == 0
        assert not list(store.root.iterdir())  # the session's folder, uploads and results, is gone


def test_bad_files_show_a_clear_message_and_the_server_keeps_working(
    browser: Any, model: Predictor, images: dict[str, Path], shots: Path
) -> None:
    app = create_app(model, settings=ServeSettings(max_files=3))
    with LiveServer(app) as server:
        browser.get(server.url + "/")
        wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        browser.find_element(By.ID, "file-input").send_keys(f"{images['truncated']}\n{images['bomb']}")
        wait_for(browser, lambda d: text_of(d, "progress-text") == "2 of 2 done")
        wait_for(browser, lambda d: "bomb.png" in text_of(d, "message"))
        message = text_of(browser, "message")
        assert message.startswith("Refused:")
        assert "cannot read truncated.png: " in message
        assert "cannot read bomb.png: image is 30000x30000" in message and "above the limit" in message
        screenshot(browser, shots / "error_message.png")

        # a file dropped on the zone, with bytes that are no image
        browser.execute_script(
            """const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array([1, 2, 3, 4, 5])], 'scan.png', {type: 'image/png'}));
            document.getElementById('dropzone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));"""
        )
        wait_for(browser, lambda d: "scan.png: not a PNG, JPEG or DICOM file" in text_of(d, "message"))
        # too many files at once is refused in the page before anything is sent
        paths = "\n".join(str(images["phantom"]) for _ in range(4))
        browser.find_element(By.ID, "file-input").send_keys(paths)
        wait_for(browser, lambda d: text_of(d, "message").startswith("Too many files at once: 4 chosen"))

        assert server.get_json("/api/info")["notice"] == "Research software, not a medical device."
        browser.find_element(By.ID, "file-input").send_keys(str(images["phantom"]))
        wait_for(browser, lambda d: text_of(d, "progress-text") == "1 of 1 done")
        wait_for(browser, lambda d: text_of(d, "label").startswith("Predicted: "))
