"""The web app in a real headless Chromium (Selenium): sample, draw a box, in-paint, and an error message.

Needs the ``[app]`` and ``[browser-test]`` extras and Debian's ``chromium`` + ``chromium-driver``
(``make test-browser`` installs them); skipped with the reason otherwise. ``VAR_UPDATE_SCREENSHOTS=1``
writes the README's screenshots (docs/images/app_sample.png, app_edit.png).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.process]  # a real browser: chromedriver is a process
pytest.importorskip("gradio", reason="the app needs gradio: pip install -e '.[app]' (make test-browser)")
pytest.importorskip("selenium", reason="the browser test needs selenium: pip install -e '.[browser-test]'")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("no headless Chromium: apt-get install chromium chromium-driver (make test-browser does)",
                allow_module_level=True)  # fmt: skip

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from tests.unit.test_webapp import ckpt  # noqa: E402, F401  (the fixture)
from var_lightning.checkpoints.load import load_models  # noqa: E402
from var_lightning.inference.webapp import VarApp  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def model_path(ckpt) -> Path:  # noqa: F811
    """The tiny random model, or (for the README's screenshots) VAR_SCREENSHOT_CKPT, e.g. the demo's."""
    return Path(os.environ.get("VAR_SCREENSHOT_CKPT") or ckpt)


@pytest.fixture()
def served(model_path, tmp_path):
    port = free_port()
    app = VarApp(load_models(model_path), tmp_path / "app")
    demo = app.launch(port=port, block=False)
    yield f"http://127.0.0.1:{port}/", len(app.var.patch_nums)
    demo.close()


@pytest.fixture()
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def wait_for(fn, timeout: float = 120.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def fetch(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=30) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"), dtype=np.float32)


def screenshot(driver, tmp_path: Path, name: str) -> None:
    # close the messages (already checked)
    for close in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-close]"):
        driver.execute_script("arguments[0].click()", close)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("VAR_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / name)


def set_number(driver, elem_id: str, value: float) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def toasts(driver) -> str:
    return " ".join(
        t.text for t in driver.find_elements(By.CSS_SELECTOR, ".toast-body, [data-testid=toast-body]")
    )


def test_sample_draw_a_box_inpaint_and_an_error_in_a_real_browser(served, browser, tmp_path):
    url, scales = served
    browser.get(url)
    wait_for(lambda: browser.find_elements(By.ID, "sample-btn"), what="the Sample tab")
    # ---- sample: the grid arrives, and the progression shows one image per scale
    browser.find_element(By.ID, "sample-btn").click()
    src = wait_for(lambda: next((i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR, "#grid img")
                                 if i.get_attribute("src")), None), what="the sample grid")  # fmt: skip
    grid = fetch(src)
    assert grid.std() > 5, "the grid is blank"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#progression img")) == scales  # one per scale
    assert "same with the command line" in browser.find_element(By.ID, "sample-status").text
    screenshot(browser, tmp_path, "app_sample.png")
    # ---- a bad input shows a message and the app keeps serving
    set_number(browser, "top-p", 1.5)
    browser.find_element(By.ID, "sample-btn").click()
    wait_for(lambda: "top_p=1.5 is outside [0, 1]" in toasts(browser), 30, "the top-p message")
    # ---- edit: no image is a message; then upload, a box, in-paint
    next(
        t for t in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text.strip() == "Edit"
    ).click()
    wait_for(lambda: browser.find_elements(By.ID, "edit-btn"), 30, "the Edit tab")
    browser.find_element(By.ID, "edit-btn").click()
    wait_for(lambda: "upload an image first" in toasts(browser), 30, "the missing-image message")
    photo = tmp_path / "photo.png"
    if os.environ.get("VAR_SCREENSHOT_CKPT"):  # a held-out shape of the demo's data, at 4x
        from var_lightning.inference.edit_images import synthetic_image

        shape, _ = synthetic_image("synthetic:0:4", 32, 10)
        Image.fromarray(((shape[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()).resize(
            (128, 128)
        ).save(photo)
    else:
        rng = np.random.default_rng(0)
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(photo)
    browser.find_element(By.CSS_SELECTOR, "#editor input[type=file]").send_keys(str(photo))
    time.sleep(2)
    for elem_id, v in (("box-x0", 0.2), ("box-y0", 0.2), ("box-x1", 0.8), ("box-y1", 0.8)):
        set_number(browser, elem_id, v)
    set_number(browser, "edit-n", 2)
    browser.find_element(By.ID, "edit-btn").click()
    imgs = wait_for(lambda: [i for i in browser.find_elements(By.CSS_SELECTOR, "#edit-results img") if i.get_attribute("src")]
                    if len(browser.find_elements(By.CSS_SELECTOR, "#edit-results img")) >= 5 else None, what="the edit")  # fmt: skip
    original, reconstruction, mask, result = (fetch(i.get_attribute("src")) for i in imgs[:4])
    assert result.std() > 5 and mask.max() > 200 and mask.min() < 50  # a real result; the mask marks the box
    assert reconstruction.std() > 5  # the tokenizer's reconstruction is shown beside the original
    assert "2 inpaint result(s)" in browser.find_element(By.ID, "edit-status").text
    screenshot(browser, tmp_path, "app_edit.png")
