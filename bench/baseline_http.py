"""The HTTP baseline: a bare Quart-Trio app on the daemon's own Hypercorn config.

- ``GET /events/<topic>`` answers a pre-built JSON body of ``--size`` bytes
  (the poll baseline: same stack, same response size, no hub, no parsing).
- ``GET /wait`` parks until ``POST /fire`` (the fan-out baseline); every
  parked request is answered with ``{"t_ns": <fire time>}``.
- ``GET /waiting`` says how many requests are parked.

Served with ``bezant_trio.http.server.serve_http``, the daemon's own
Hypercorn settings; prints ``serving on http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson
import trio
from quart import Response
from quart_trio import QuartTrio

from bezant_trio.http.server import serve_http


def build_app(size: int) -> QuartTrio:
    app = QuartTrio("bench_baseline")
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    filler = max(0, size - len(b'{"events":[],"pad":""}'))
    body = b'{"events":[],"pad":"' + b"x" * filler + b'"}'
    state = {"fired": trio.Event(), "t_ns": 0, "waiting": 0}

    @app.get("/events/<topic>")
    async def events(topic: str) -> Response:
        return Response(body, content_type="application/json", headers={"x-bezant-cursor": "1"})

    @app.get("/wait")
    async def wait() -> Response:
        state["waiting"] += 1
        try:
            await state["fired"].wait()
        finally:
            state["waiting"] -= 1
        return Response(orjson.dumps({"t_ns": state["t_ns"]}), content_type="application/json")

    @app.post("/fire")
    async def fire() -> Response:
        state["t_ns"] = time.time_ns()
        state["fired"].set()
        state["fired"] = trio.Event()
        return Response(b"{}", content_type="application/json")

    @app.get("/waiting")
    async def waiting() -> Response:
        return Response(orjson.dumps({"waiting": state["waiting"]}), content_type="application/json")

    return app


async def _main(size: int) -> None:
    app = build_app(size)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve_http(
                app, "127.0.0.1:0", shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        print(f"serving on {binds[0]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=25000, help="bytes of the poll body")
    args = parser.parse_args()
    trio.run(_main, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
