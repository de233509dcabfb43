"""A real headless browser for the tests: Debian's chromium driven by its chromedriver (selenium).

``make test`` installs both (``make browser``). Each browser gets a fresh profile directory, and
the flags turn off everything Chromium would fetch on its own (updates, sync, field trials, QUIC):
this machine's network refuses those calls, and a test must see only the pages it opens.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=800,900")


def installed() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The page's console errors so far (a script or style its CSP refused is one)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium with its own throw-away profile; quit and removed afterwards."""
    profile = tempfile.mkdtemp(prefix="postroom-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages: CSP violations
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)
