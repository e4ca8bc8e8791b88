"""The web page in a real headless browser (Debian's chromium + chromium-driver, driven by
Selenium) against the real service process: upload a query, wait for the result grid, check k
results with their images, click a result to search by it, add an image, save a screenshot."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image
from test_serve_process import KEY, serving

import quantrieve as qr

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1280,860",
)
# Where to copy the screenshot as well, and optionally another index and query image to show
# (docs/serve-page.png was made this way, on a small Fashion-MNIST index).
SCREENSHOT_ENV = "QUANTRIEVE_SCREENSHOT"
INDEX_ENV = "QUANTRIEVE_BROWSER_INDEX"
QUERY_ENV = "QUANTRIEVE_BROWSER_QUERY"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium and chromium-driver are not installed (`make browser` installs them as "
    "root: apt-get install chromium chromium-driver)",
)


def _query(path: Path) -> Path:
    image = np.random.default_rng(3).integers(0, 60, (TINY.size, TINY.size)).astype(np.uint8)
    image[5:7] = 230
    Image.fromarray(image).resize((96, 96), Image.Resampling.NEAREST).save(path)
    return path


@pytest.mark.slow
def test_the_page_searches_clicks_and_adds(tiny_index: Path, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    source = Path(os.environ.get(INDEX_ENV) or tiny_index)
    index_dir = Path(shutil.copytree(source, tmp_path / "index"))
    items = len(qr.PQIndex.load(index_dir))
    query = Path(os.environ.get(QUERY_ENV) or _query(tmp_path / "query.png"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    with serving(index_dir, tmp_path / "server.log") as server:
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        try:
            wait = WebDriverWait(driver, 60)
            driver.get(f"{server.url}/")
            wait.until(lambda d: f"{items:,} items" in d.find_element(By.ID, "stats").text)
            k = driver.find_element(By.ID, "k")
            k.clear()
            k.send_keys("8")
            driver.find_element(By.ID, "query-file").send_keys(str(query))
            wait.until(
                lambda d: d.find_element(By.ID, "results").get_attribute("data-count") == "8"
            )
            hits = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
            assert len(hits) == 8
            assert f"8 results for {query.name}" in driver.find_element(By.ID, "status").text
            wait.until(
                lambda d: d.execute_script(
                    "return [...document.querySelectorAll('#results img')]"
                    ".every(i => i.complete && i.naturalWidth > 0)"
                )
            )
            assert "d = " in hits[0].text
            shot = tmp_path / "page.png"
            driver.save_screenshot(str(shot))
            assert Image.open(shot).size[0] > 0
            if os.environ.get(SCREENSHOT_ENV):
                shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])

            item = hits[2].get_attribute("data-item")
            hits[2].click()
            wait.until(lambda d: f"results for item {item}" in d.find_element(By.ID, "status").text)
            assert len(driver.find_elements(By.CSS_SELECTOR, "#results .hit")) == 8

            # Filters: only one label and one id prefix.
            shown = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
            label = shown[0].find_element(By.CLASS_NAME, "labels").text.split(", ")[0]
            driver.find_element(By.ID, "filter-labels").send_keys(label)
            driver.find_element(By.ID, "filter-prefix").send_keys("train:1")
            shown[0].click()
            wait.until(staleness_of(shown[0]))
            wait.until(lambda d: "results for item" in d.find_element(By.ID, "status").text)
            filtered = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
            assert filtered
            for card in filtered:
                assert card.get_attribute("data-id").startswith("train:1")
                assert label in card.find_element(By.CLASS_NAME, "labels").text.split(", ")
            for field in ("filter-labels", "filter-prefix"):
                driver.find_element(By.ID, field).clear()

            upload = tmp_path / "new.png"
            buffer = io.BytesIO()
            Image.open(query).rotate(90).save(buffer, format="PNG")
            upload.write_bytes(buffer.getvalue())
            driver.find_element(By.ID, "add-files").send_keys(str(upload))
            driver.find_element(By.ID, "add-button").click()
            wait.until(lambda d: "401" in d.find_element(By.ID, "add-status").text)  # no key
            driver.execute_script("document.getElementById('add-files').value = ''")
            driver.find_element(By.ID, "add-files").send_keys(str(upload))
            driver.find_element(By.ID, "api-key").send_keys(KEY)
            driver.find_element(By.ID, "add-button").click()
            wait.until(lambda d: "added item " in d.find_element(By.ID, "add-status").text)
            added = driver.find_element(By.ID, "add-status").text.split()[2]
            assert added == str(items)  # the next item number
            wait.until(lambda d: "1 added" in d.find_element(By.ID, "stats").text)
        finally:
            driver.quit()
