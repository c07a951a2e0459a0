"""Headless Chromium for the console's browser tests, driven by Selenium.

The browser is Debian's ``chromium`` with its ``chromium-driver`` (``.ci/run`` installs both with
apt-get). Where they are missing the browser tests are skipped, unless ``REQUIRE_BROWSER`` is set
(CI sets it), where they fail: a CI run never passes by skipping them.

A failing test leaves a screenshot and the page's HTML in ``test-artifacts/`` (named after the
test); with ``CONSOLE_SCREENSHOTS=DIR`` the tests that show a page worth seeing also save it there
(the README's screenshots come from that).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_SECONDS = 20.0


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def require_chromium() -> tuple[str, str]:
    found = chromium_paths()
    if found is None:
        message = "headless Chromium not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(message + "; REQUIRE_BROWSER is set")
        pytest.skip(message)
    return found


def start_chromium(width: int = 1280, height: int = 900) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--password-store=basic",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_page_load_timeout(WAIT_SECONDS)
    return chrome


def wait_for(chrome: Any, check: Callable[[Any], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Until ``check(chrome)`` is truthy. A page being replaced while it is read (an element gone,
    or not there yet) is a reason to look again, not a failure."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    waiting = WebDriverWait(
        chrome, timeout, poll_frequency=0.1, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    )
    return waiting.until(check, message=f"waited for {what}")


def click(chrome: Any, by: str, value: str, what: str | None = None) -> None:
    """Click the element once it is there; found on a page being replaced (the next page loading,
    or a page refreshing itself), look for it again."""
    wait_for(chrome, lambda c: c.find_element(by, value).click() or True, what or f"{value} to click")


def keep_evidence(chrome: Any, test_name: str) -> Path:
    """A failing test's screenshot and HTML, named after it."""
    ARTIFACTS.mkdir(exist_ok=True)
    stem = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    chrome.save_screenshot(str(stem.with_suffix(".png")))
    stem.with_suffix(".html").write_text(chrome.page_source, encoding="utf-8")
    return stem.with_suffix(".png")


def screenshot_for_readme(chrome: Any, name: str) -> None:
    """Save the page as ``DIR/NAME.png`` when ``CONSOLE_SCREENSHOTS=DIR`` is set."""
    directory = os.environ.get("CONSOLE_SCREENSHOTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        chrome.save_screenshot(str(Path(directory) / f"{name}.png"))
