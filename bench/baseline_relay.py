"""The relay baseline: frames from a bare client handed to a waiting HTTP reader, no store.

The floor of send → reader latency on the daemon's own stack: the bare
wsproto client of ``baseline_ws.py --raw`` (every frame of one socket read
parsed with orjson) receives the simulator's frames, and a bare ASGI app on
the daemon's Hypercorn config (``bezant_trio.http.server.serve_http``) hands
them to the reader that waits for them through one ``trio.Event``, set once
per socket read. No hub, no ring, no log, no cursor bookkeeping beyond a
sequence number: the only frames kept are the last few thousand, so a poll
can be answered at all.

- ``GET /events/<topic>?since=N&limit=L&wait=W`` answers
  ``{"events": [{"cursor", "payload"}...], "next_cursor"}`` with the frames
  after ``N`` (waiting up to ``W`` s for one), like the daemon's long-poll.
- ``GET /events/<topic>/stream`` (``Last-Event-ID: N``) is the same as an
  SSE stream: one chunk per wake-up.
- ``GET /head`` says how many frames arrived.

Prints ``serving on http://127.0.0.1:PORT`` once subscribed.
"""

from __future__ import annotations

import argparse
import collections
import sys
import urllib.parse

import orjson
import trio
from wsproto.events import TextMessage

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from rawws import RawWs, session_cookie, subscribe_quotes


def _load_serve_http():  # type: ignore[no-untyped-def]
    """``bezant_trio.http.server.serve_http`` without the package's ``__init__`` (which
    imports Quart): the relay's memory is then the bare stack's."""
    import importlib.util
    import types

    import bezant_trio

    package = types.ModuleType("bezant_trio.http")
    package.__path__ = [bezant_trio.__path__[0] + "/http"]
    sys.modules.setdefault("bezant_trio.http", package)
    spec = importlib.util.spec_from_file_location(
        "bezant_trio.http.server", package.__path__[0] + "/server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.serve_http


serve_http = _load_serve_http()

KEEP = 5000


class Relay:
    def __init__(self) -> None:
        self.frames: collections.deque[bytes] = collections.deque(maxlen=KEEP)
        self.head = 0
        self.arrived = trio.Event()

    def after(self, since: int, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        first = self.head - len(self.frames) + 1
        start = max(since + 1, first)
        upto = min(self.head, start + limit - 1)
        frames = self.frames
        return [(c, frames[c - first]) for c in range(start, upto + 1)], max(since, upto)

    async def wait(self, since: int, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while self.head <= since:
                await self.arrived.wait()

    async def read_gateway(self, ws: RawWs) -> None:
        loads = orjson.loads
        while True:
            data = await ws.stream.receive_some(262144)
            if not data:
                return
            ws.ws.receive_data(data)
            got = False
            for event in ws.ws.events():
                if isinstance(event, TextMessage):
                    ws.parts.append(event.data)
                    if event.message_finished:
                        text = "".join(ws.parts)
                        ws.parts.clear()
                        frame = loads(text)
                        if frame.get("topic", "").startswith("smd+"):
                            self.frames.append(text.encode())
                            self.head += 1
                            got = True
            if got:
                self.arrived.set()
                self.arrived = trio.Event()


def _query(raw: bytes) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(raw.decode()))


def build_app(relay: Relay) -> object:
    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()  # type: ignore[operator]
                kind = message["type"].rsplit(".", 1)[1]
                await send({"type": f"lifespan.{kind}.complete"})  # type: ignore[operator]
                if kind == "shutdown":
                    return
        path: str = scope["path"]
        if path.endswith("/stream"):
            await _stream(relay, scope, send)
            return
        if path == "/head":
            body = orjson.dumps({"head": relay.head})
        else:
            query = _query(scope["query_string"])
            since = int(query.get("since", 0))
            limit = int(query.get("limit", 100))
            if relay.head <= since:
                await relay.wait(since, float(query.get("wait", 0)))
            frames, next_cursor = relay.after(since, limit)
            body = b"".join(
                (
                    b'{"events":[',
                    b",".join(b'{"cursor":%d,"payload":%s}' % (c, f) for c, f in frames),
                    b'],"next_cursor":%d}' % next_cursor,
                )
            )
        await send(  # type: ignore[operator]
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    return app


async def _stream(relay: Relay, scope: dict, send: object) -> None:  # type: ignore[type-arg]
    since = 0
    for name, value in scope["headers"]:
        if name == b"last-event-id":
            since = int(value)
    await send(  # type: ignore[operator]
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})  # type: ignore[operator]
    while True:
        await relay.wait(since, 15.0)
        frames, since = relay.after(since, 500)
        chunk = b"".join(
            b'id: %d\nevent: t\ndata: {"cursor":%d,"payload":%s}\n\n' % (c, c, f) for c, f in frames
        )
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})  # type: ignore[operator]


async def run(gateway: str, conids: list[int]) -> None:
    ws = await RawWs.connect(gateway, await session_cookie(gateway))
    await subscribe_quotes(ws, conids)
    relay = Relay()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.read_gateway, ws)
        binds = await nursery.start(
            lambda task_status: serve_http(
                build_app(relay), "127.0.0.1:0", shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        print(f"serving on {binds[0]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--conid", type=int, action="append", required=True)
    args = parser.parse_args()
    trio.run(run, args.gateway, args.conid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
