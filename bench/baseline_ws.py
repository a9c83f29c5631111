"""The ingest baseline: a bare trio-websocket client that receives and JSON-parses frames.

No hub, no ring, no log, no HTTP: the ceiling of the daemon's own stack
(trio + trio-websocket + wsproto + orjson) on this machine. It tickles the
simulator for a session, connects with the session cookie, waits for the
ready frame, subscribes the given conids and prints ``READY``. It then counts
``smd+`` frames until ``--count`` have arrived and prints one JSON line:
``{"frames", "t_first_ns", "t_last_ns", "rss_before_kib", "rss_after_kib",
"cpu_seconds", "latencies_ms"}`` (latencies with ``--latency``: receipt time
minus the sender's ``t_ns`` stamp, per stamped frame).

With ``--raw`` it skips trio-websocket: wsproto straight on a trio stream,
every frame of one socket read parsed before the next read (the headroom
figure). With ``--keep`` every frame's text is kept in a list (the memory baseline:
what 100,000 frames cost when nothing but the frames is stored).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import orjson
import trio
import trio_websocket

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import request_once, rss_kib
from rawws import RawWs, subscribe_quotes


@contextlib.asynccontextmanager
async def open_ws(base: str, cookie: str, raw: bool) -> AsyncIterator[Any]:
    if raw:
        conn = await RawWs.connect(base, cookie)
        try:
            yield conn
        finally:
            await conn.stream.aclose()
        return
    ws_url = base.replace("http://", "ws://") + "/v1/api/ws"
    async with trio_websocket.open_websocket_url(ws_url, extra_headers=[("cookie", cookie)]) as ws:
        yield ws


async def run(
    base: str, conids: list[int], count: int, keep: bool, latency: bool, raw: bool
) -> None:
    tickle = await request_once(base, "POST", "/v1/api/tickle")
    session = tickle.json()["session"]
    cookie = "api=" + urllib.parse.quote(orjson.dumps({"session": session}), safe="")
    async with open_ws(base, cookie, raw) as ws:
        await subscribe_quotes(ws, conids)
        kept: list[str] = []
        rss_before = rss_kib(os.getpid())
        latencies: list[float] = []
        print("READY", flush=True)
        seen = 0
        t_first = 0
        cpu_started = time.process_time()
        loads = orjson.loads
        while seen < count:
            message = await ws.get_message()
            data = loads(message)
            if data.get("topic", "").startswith("smd+"):
                if not seen:
                    t_first = time.time_ns()
                seen += 1
                if keep:
                    kept.append(message)
                if latency and "t_ns" in data:
                    latencies.append((time.time_ns() - data["t_ns"]) / 1e6)
        t_last = time.time_ns()
        cpu = time.process_time() - cpu_started
        rss_after = rss_kib(os.getpid())
        print(
            orjson.dumps(
                {
                    "frames": seen,
                    "t_first_ns": t_first,
                    "t_last_ns": t_last,
                    "rss_before_kib": rss_before,
                    "rss_after_kib": rss_after,
                    "kept": len(kept),
                    "cpu_seconds": cpu,
                    "latencies_ms": latencies,
                }
            ).decode(),
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--conid", type=int, action="append", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--latency", action="store_true", help="report receipt - t_ns per frame")
    parser.add_argument(
        "--raw", action="store_true", help="wsproto on a trio stream, no trio-websocket"
    )
    args = parser.parse_args()
    trio.run(run, args.gateway, args.conid, args.count, args.keep, args.latency, args.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
