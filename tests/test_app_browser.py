"""app.py in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver. The real entry (Hydra, Gradio) on 127.0.0.1; a whole photo and a broken file are
uploaded, the verdicts and the heatmap must appear, and the page is saved as a screenshot.

``make test-browser`` runs it (CI too): it installs the browser and sets CRACK_BROWSER_REQUIRED, so
a missing browser fails there instead of skipping. ``CRACK_APP_CKPT`` uses another model (the
README's screenshot is of the demo's); ``CRACK_SCREENSHOT`` is where the picture goes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.test_serve import _free_port

pytestmark = pytest.mark.browser
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# no connection attempts to Google's services from a machine that may be offline
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
         "--window-size=1300,1700"]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_data, request):
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CRACK_BROWSER_REQUIRED"):
            pytest.fail("chromium and chromedriver are not installed: make browser installs Debian's packages")
        pytest.skip("no chromium/chromedriver here (make test-browser installs them)")
    ckpt = os.environ.get("CRACK_APP_CKPT") or str(request.getfixturevalue("trained_run") / "checkpoints" / "best.ckpt")
    tmp = tmp_path_factory.mktemp("browser")
    port = _free_port()
    log = (tmp / "app.log").open("w")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), f"ckpt={ckpt}", f"port={port}", "device=cpu",
                             f"output_dir={tmp / 'run'}", f"flag_dir={tmp / 'flagged'}"], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    if proc.poll() is not None or time.monotonic() >= deadline:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("app.py did not start:\n" + (tmp / "app.log").read_text()[-3000:])
    yield url, tmp
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()


def _wall(tiny_data: Path, path: Path) -> Path:
    """A 681x454 'wall': crack and clean patches of the synthetic set, as a checkerboard."""
    cracks, clean = sorted((tiny_data / "Positive").glob("*.jpg")), sorted((tiny_data / "Negative").glob("*.jpg"))
    wall = Image.new("RGB", (681, 454))
    for k in range(6):
        wall.paste(Image.open((cracks if (k + k // 3) % 2 else clean)[k]), ((k % 3) * 227, (k // 3) * 227))
    wall.save(path, quality=95)
    return path


def test_a_photo_gets_its_verdict_and_heatmap_in_chromium(app_url, tiny_data):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, tmp = app_url
    wall, notes = _wall(tiny_data, tmp / "wall.jpg"), tmp / "notes.txt"
    notes.write_text("site notes, not a photo")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    shot = Path(os.environ.get("CRACK_SCREENSHOT") or tmp / "inspector.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#uploads input[type=file]"))
        upload.send_keys(f"{wall}\n{notes}")  # two files in one selection
        # both uploaded (the list shows a name as stem and extension on two lines when narrow)
        wait.until(lambda d: "notes" in d.find_element(By.ID, "uploads").text)
        driver.find_element(By.ID, "analyse").click()
        wait.until(lambda d: "image(s)" in d.find_element(By.ID, "status").text)
        status = driver.find_element(By.ID, "status").text
        assert "2 image(s)" in status and "1 unreadable" in status and "whole photos" in status, status
        verdicts = driver.find_element(By.ID, "verdicts").text
        assert "wall.jpg" in verdicts and ("CRACK" in verdicts or "no crack" in verdicts), verdicts
        assert "notes.txt" in verdicts and "unreadable" in verdicts
        # the heatmap is shown, and the browser could load it (a broken image has no natural width)
        heatmap = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#gallery img"))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap))
        assert "heatmaps" in heatmap.get_attribute("src") or "wall" in heatmap.get_attribute("src")
        assert "missed crack" in driver.find_element(By.ID, "consequences").text
        # nothing leaves the machine: every request the page made went to this app (no fonts, no CDN)
        asked = {json.loads(entry["message"])["message"]["params"]["request"]["url"]
                 for entry in driver.get_log("performance") if '"Network.requestWillBeSent"' in entry["message"]}
        elsewhere = {u for u in asked if urlparse(u).scheme in ("http", "https", "ws", "wss")
                     and urlparse(u).hostname != "127.0.0.1"}
        assert asked and not elsewhere, sorted(elsewhere)[:5]
        assert driver.save_screenshot(str(shot))
        with Image.open(shot) as png:
            assert png.width >= 1000
    except Exception:
        driver.save_screenshot(str(shot.with_name(shot.stem + "-failed.png")))  # what the page showed instead
        raise
    finally:
        driver.quit()
