"""One headless Chromium per test module, and a page helper whose waits are bounded.

Every test here skips, with the reason, when Chromium, chromium-driver or
Selenium is missing (``.ci/run`` installs them). A failed test leaves a
screenshot of the page in its temporary directory (the path is printed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Browser, Page, browser_missing, start_browser

_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    started = start_browser()
    try:
        yield started
    finally:
        started.quit()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    tab = Page(browser, tmp_path)
    browser.driver.get("about:blank")
    browser.driver.get_log("browser")  # what earlier tests left is theirs
    yield tab
    report = request.node.stash.get(_CALL_REPORT, None)
    if report is not None and report.failed:
        tab.screenshot("failure")
    browser.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.driver.get("about:blank")
