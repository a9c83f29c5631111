"""The ingest baseline: a bare trio-websocket client that receives and JSON-parses frames.

No hub, no ring, no log, no HTTP: the ceiling of the daemon's own stack
(trio + trio-websocket + wsproto + orjson) on this machine. It tickles the
simulator for a session, connects with the session cookie, waits for the
ready frame, subscribes the given conids and prints ``READY``. It then counts
``smd+`` frames until ``--count`` have arrived and prints one JSON line:
``{"frames", "t_first_ns", "t_last_ns", "rss_before_kib", "rss_after_kib"}``.

With ``--keep`` every frame's text is kept in a list (the memory baseline:
what 100,000 frames cost when nothing but the frames is stored).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.parse

import orjson
import trio
import trio_websocket

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import request_once, rss_kib  # noqa: E402


async def run(base: str, conids: list[int], count: int, keep: bool) -> None:
    tickle = await request_once(base, "POST", "/v1/api/tickle")
    session = tickle.json()["session"]
    cookie = "api=" + urllib.parse.quote(orjson.dumps({"session": session}), safe="")
    ws_url = base.replace("http://", "ws://") + "/v1/api/ws"
    async with trio_websocket.open_websocket_url(ws_url, extra_headers=[("cookie", cookie)]) as ws:
        while True:
            frame = orjson.loads(await ws.get_message())
            if frame.get("topic") == "system" and "success" in frame:
                break
        fields = orjson.dumps({"fields": ["31", "84", "86", "85", "88", "87"]}).decode()
        for conid in conids:
            await ws.send_message(f"smd+{conid}+{fields}")
        kept: list[str] = []
        rss_before = rss_kib(os.getpid())
        print("READY", flush=True)
        seen = 0
        t_first = 0
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
        t_last = time.time_ns()
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
    args = parser.parse_args()
    trio.run(run, args.gateway, args.conid, args.count, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
