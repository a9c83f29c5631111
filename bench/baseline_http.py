"""The HTTP baseline: a bare Quart-Trio app on the daemon's own Hypercorn config.

- ``GET /events/<topic>`` answers a pre-built JSON body of ``--size`` bytes
  (the poll baseline: same stack, same response size, no hub, no parsing).
- ``GET /wait`` parks until ``POST /fire`` (the fan-out baseline); every
  parked request is answered with ``{"t_ns": <fire time>}``.
- ``GET /waiting`` says how many requests are parked.

``--raw-asgi`` serves the same routes from a bare ASGI callable (Hypercorn
without Quart): the headroom a hand-written fast path for the hot routes
would have. Served with ``bezant_trio.http.server.serve_http``, the daemon's own
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
        return Response(
            orjson.dumps({"waiting": state["waiting"]}), content_type="application/json"
        )

    return app


def build_raw_asgi(size: int) -> object:
    """The same three routes as a bare ASGI callable: Hypercorn without Quart (headroom)."""
    filler = max(0, size - len(b'{"events":[],"pad":""}'))
    body = b'{"events":[],"pad":"' + b"x" * filler + b'"}'
    state: dict[str, object] = {"fired": trio.Event(), "t_ns": 0, "waiting": 0}

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()  # type: ignore[operator]
                kind = message["type"].rsplit(".", 1)[1]
                await send({"type": f"lifespan.{kind}.complete"})  # type: ignore[operator]
                if kind == "shutdown":
                    return
        path = scope["path"]
        out = body
        if path == "/wait":
            state["waiting"] += 1  # type: ignore[operator]
            try:
                await state["fired"].wait()  # type: ignore[attr-defined]
            finally:
                state["waiting"] -= 1  # type: ignore[operator]
            out = orjson.dumps({"t_ns": state["t_ns"]})
        elif path == "/fire":
            state["t_ns"] = time.time_ns()
            state["fired"].set()  # type: ignore[attr-defined]
            state["fired"] = trio.Event()
            out = b"{}"
        elif path == "/waiting":
            out = orjson.dumps({"waiting": state["waiting"]})
        await send(  # type: ignore[operator]
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(out)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})  # type: ignore[operator]

    return app


async def _main(size: int, raw: bool) -> None:
    app = build_raw_asgi(size) if raw else build_app(size)
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
    parser.add_argument("--raw-asgi", action="store_true", help="a bare ASGI app, no Quart")
    args = parser.parse_args()
    trio.run(_main, args.size, args.raw_asgi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
