"""Write a screenshot of the console, fed by the simulator, to a PNG (docs/console.png).

    .venv/bin/python tests/console/make_screenshot.py docs/console.png [--seconds 64] [--width 1280]

Runs a simulator streaming orders, PnL, trades and two conids' quotes into a
daemon with a durable log and a file sink, drops the gateway once (a gap and
its reconnect in the timeline), lets the sparklines fill, and captures the
whole page in headless Chromium (Debian's, as the browser tests use it).
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PAGE_TIMEOUT, browser_missing, scene, start_browser

CONIDS = (265598, 8314)


async def capture(out: Path, seconds: float, width: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bezant-shot-") as tmp:
        work = Path(tmp)
        sinks = [
            {
                "name": "audit",
                "type": "file",
                "topics": ["orders", "gap"],
                "path": str(work / "audit.jsonl"),
            }
        ]
        async with scene(
            store_path=work / "events.db", sinks=sinks, conids=CONIDS, resync=True
        ) as s:
            for conid in CONIDS:
                await s.sim.wait_subscribed(f"marketdata:{conid}", timeout=PAGE_TIMEOUT)
            s.sim.start_stream({"orders": 0.35, "pnl": 1.0, "trades": 0.3, "marketdata": 3.0})
            browser = await trio.to_thread.run_sync(lambda: start_browser(width=width, height=1000))
            try:
                if width < 500:  # narrower than a headless window can be: emulate a phone
                    metrics = {
                        "width": width,
                        "height": 844,
                        "deviceScaleFactor": 1,
                        "mobile": True,
                    }
                    await trio.to_thread.run_sync(
                        browser.driver.execute_cdp_cmd,
                        "Emulation.setDeviceMetricsOverride",
                        metrics,
                    )
                await trio.to_thread.run_sync(browser.driver.get, s.url)
                await trio.sleep(seconds / 2)
                await s.sim.drop_connections()
                await trio.sleep(seconds / 2)
                await trio.to_thread.run_sync(_full_page_png, browser.driver, out)
            finally:
                await trio.to_thread.run_sync(browser.quit)
            s.sim.stop_stream()


def _full_page_png(driver: Any, out: Path) -> None:
    # The whole page, not only the window: Chromium's own capture beyond the viewport.
    width, height = driver.execute_script(
        "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=64.0, help="how long the page runs")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    args = parser.parse_args()
    missing = browser_missing()
    if missing:
        print(f"make_screenshot: {missing}", file=sys.stderr)
        return 2
    trio.run(capture, args.out, args.seconds, args.width)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
