"""``llmops ui`` in a real browser: the UI server as a user starts it, and headless Chromium driven by
Selenium (Debian's ``chromium`` and ``chromium-driver``; ``make setup`` installs them as root).

Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver, so Selenium Manager never tries
to download a browser or a driver. Without them the browser tests skip, saying why.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops.server_process import ServerError, free_port, started_server
from llmops.settings import child_environment

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium
CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian's chromium-driver


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return (
                f"{path} is missing: apt-get install -y chromium chromium-driver (make setup does, as root)"
            )
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator:
    """One headless Chromium session (a WebDriver), closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", "--disable-extensions"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def ui_server(cwd: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``llmops ui --port P ARGS`` on 127.0.0.1; yields its URL once /healthz answers."""
    port = free_port()
    command = [sys.executable, "-m", "llmops.cli", "ui", "--port", str(port), *args]
    try:
        with started_server(command, port, env=child_environment(env), log=log, ready_s=60, cwd=cwd,
                            ready_path="/healthz", poll_s=0.05) as server:  # fmt: skip
            yield server.url
    except ServerError as exc:
        pytest.fail(f"llmops ui did not start: {exc}")


def wait_for(driver, script: str, timeout: float = 60) -> object:
    """The first truthy value of ``script`` (JavaScript returning a value) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        time.sleep(0.1)
