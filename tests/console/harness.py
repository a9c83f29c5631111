"""Headless Chromium and a simulator-fed daemon, for the console's browser tests.

Chromium is Debian's (``chromium`` and ``chromium-driver``), driven by Selenium
through ``/usr/bin/chromedriver``: nothing is downloaded at run time. The
flags are the ones that work on a machine with no network but the loopback
(no background networking, no component updates, no sync, no QUIC).

``tests/console/make_screenshot.py`` uses the same pieces for the PNG in docs/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.daemon import Daemon, open_daemon
from bezant_trio.simulator import GatewaySimulator

CHROMIUM = os.environ.get("BEZANT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BEZANT_CHROMEDRIVER", "/usr/bin/chromedriver")
#: Every wait on the page is bounded by this (seconds).
PAGE_TIMEOUT = 20.0
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root, Chromium refuses to start sandboxed
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--password-store=basic",
)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found: apt-get install chromium chromium-driver (.ci/run does)"
    return None


@dataclass
class Browser:
    """One headless Chromium; ``profile`` is its own empty user-data directory."""

    driver: Any
    profile: Path

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def start_browser(*, width: int = 1280, height: int = 900) -> Browser:
    """Start headless Chromium with a fresh profile (no state from any earlier run)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="bezant-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    # The page's console messages (CSP violations, script errors) for the tests to read.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    driver.set_script_timeout(PAGE_TIMEOUT)
    return Browser(driver, profile)


class Page:
    """The browser's one tab, driven from Trio: every Selenium call runs in a thread."""

    def __init__(self, browser: Browser, shots: Path) -> None:
        self.driver = browser.driver
        self.shots = shots

    async def open(self, url: str) -> None:
        await trio.to_thread.run_sync(self.driver.get, url)

    async def emulate_width(self, width: int, height: int = 844) -> None:
        """Lay the page out at ``width`` CSS pixels, as a phone would.

        A headless window cannot be narrower than 500 pixels, so this is
        Chromium's device emulation, not a window size.
        """
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True}
        await trio.to_thread.run_sync(
            lambda: self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        )

    async def js(self, script: str, *args: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: self.driver.execute_script(script, *args))

    async def text(self, selector: str) -> str | None:
        """The text of the first element matching ``selector`` (None if there is none)."""
        return await self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
            selector,
        )

    async def wait_for(self, what: str, condition: Callable[[Any], Any]) -> Any:
        """Wait until ``condition(driver)`` is truthy (at most PAGE_TIMEOUT); its value.

        A timeout is a failure that names ``what`` and saves a screenshot first.
        """
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        def wait() -> Any:
            return WebDriverWait(self.driver, PAGE_TIMEOUT, poll_frequency=0.1).until(condition)

        try:
            return await trio.to_thread.run_sync(wait)
        except TimeoutException:
            shot = self.screenshot("timeout")
            raise AssertionError(
                f"the page did not show {what} within {PAGE_TIMEOUT:g} s; screenshot: {shot}"
            ) from None

    async def wait_text(self, selector: str, expected: str) -> None:
        script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : null"
        await self.wait_for(
            f"{expected!r} in {selector}",
            lambda d: d.execute_script(script, selector) == expected,
        )

    async def wait_contains(self, selector: str, expected: str) -> str:
        script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''"
        return await self.wait_for(
            f"{expected!r} within {selector}",
            lambda d: (t := d.execute_script(script, selector)) and expected in t and t,
        )

    async def wait_present(self, selector: str) -> None:
        await self.wait_for(
            f"an element {selector}",
            lambda d: d.execute_script("return !!document.querySelector(arguments[0])", selector),
        )

    def screenshot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"console-{name}.png"
        try:
            self.driver.save_screenshot(str(path))
        except Exception as exc:  # a browser that died cannot take one; say so
            path = self.shots / f"no-screenshot-{name}.txt"
            path.write_text(f"{type(exc).__name__}: {exc}\n")
        print(f"screenshot of the page: {path}")
        return path

    def problems(self) -> list[str]:
        """Script errors and CSP violations the page logged since the last call.

        An API answer that is not 2xx (a 401 without the token, the 503 of
        ``/health/ready`` while the gateway is away) is data the page shows,
        not a problem; a static file that fails to load is one.
        """
        api = ("/events/", "/state/", "/health/")
        return [
            e["message"]
            for e in self.driver.get_log("browser")
            if e["level"] == "SEVERE"
            and not (
                "Failed to load resource" in e["message"] and any(p in e["message"] for p in api)
            )
        ]


@dataclass
class Scene:
    """A simulator and the daemon it feeds, both in this Trio run."""

    sim: GatewaySimulator
    daemon: Daemon

    @property
    def url(self) -> str:
        assert self.daemon.http_url is not None
        return self.daemon.http_url + "/"


@asynccontextmanager
async def scene(
    *,
    token: str | None = None,
    store_path: Path | None = None,
    sinks: list[dict[str, Any]] | None = None,
    conids: tuple[int, ...] = (),
    resync: bool = False,
) -> AsyncIterator[Scene]:
    """Start a simulator and a daemon connected to it; stop both on exit.

    Reconnects are quick (backoff 0.1 to 0.5 s) so a test that drops the
    gateway sees it come back without waiting long. ``resync`` (off unless
    asked for) fetches the simulator's REST truth after every gap and at
    start: a test that sends its own order frames leaves it off, so no resync
    fetched earlier can land after them.
    """
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(GatewaySimulator().run)
        config = config_from_mapping(
            {
                "gateway": {"url": sim.base_url},
                "http": {"bind": "127.0.0.1:0", "token": token},
                "events": {
                    "channels": ["orders", "pnl", "trades"],
                    "backoff": {"min": 0.1, "max": 0.5},
                    "marketdata": {"idle_unsubscribe": 0},
                    "resync": resync,
                },
                "store": {"path": str(store_path) if store_path else None},
                "sinks": sinks or [],
                "shutdown_grace": 3,
            },
            env={},
        )
        try:
            async with open_daemon(config) as daemon:
                for conid in conids:
                    daemon.wants.want(conid)
                for channel in ("orders", "pnl", "trades"):
                    await sim.wait_subscribed(channel, timeout=PAGE_TIMEOUT)
                yield Scene(sim, daemon)
        finally:
            sim.stop()
