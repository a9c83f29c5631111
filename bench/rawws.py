"""wsproto straight on a trio stream: the bare client of the ingest baseline and the relay.

Kept apart from ``_common`` so that the relay imports only what it measures
(trio, wsproto, orjson, Hypercorn): its RSS is the bare stack's.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request, TextMessage


class RawWs:
    """wsproto straight on a trio stream: every frame of one socket read is parsed in one go.

    The headroom figure: what trio-websocket's reader task and per-message
    memory channel cost on top of wsproto itself.
    """

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.ready: list[str] = []
        self.parts: list[str] = []

    @classmethod
    async def connect(cls, base: str, cookie: str) -> RawWs:
        host_port = base.split("://", 1)[1]
        host, _, port = host_port.rpartition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(
            ws.send(
                Request(host=host_port, target="/v1/api/ws", extra_headers=[("cookie", cookie)])
            )
        )
        raw = cls(stream, ws)
        while True:
            ws.receive_data(await stream.receive_some(65536))
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return raw
                if isinstance(event, RejectConnection):
                    raise RuntimeError("websocket rejected")

    async def get_message(self) -> str:
        while not self.ready:
            self.ws.receive_data(await self.stream.receive_some(262144))
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.parts.append(event.data)
                    if event.message_finished:
                        self.ready.append("".join(self.parts))
                        self.parts.clear()
            self.ready.reverse()
        return self.ready.pop()

    async def send_message(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))


async def session_cookie(base: str) -> str:
    """POST /v1/api/tickle on the simulator (one plain HTTP/1.1 exchange); the ws cookie."""
    host_port = base.split("://", 1)[1]
    host, _, port = host_port.rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            f"POST /v1/api/tickle HTTP/1.1\r\nhost: {host_port}\r\ncontent-length: 0\r\n"
            "connection: close\r\n\r\n".encode()
        )
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    session = orjson.loads(reply.partition(b"\r\n\r\n")[2])["session"]
    return "api=" + urllib.parse.quote(orjson.dumps({"session": session}), safe="")


async def subscribe_quotes(ws: Any, conids: list[int]) -> None:
    """Wait for the gateway's ready frame (``system`` with ``success``), then ``smd+`` each conid.

    ``ws`` is anything with ``get_message``/``send_message`` (this RawWs, or trio-websocket).
    """
    while True:
        frame = orjson.loads(await ws.get_message())
        if frame.get("topic") == "system" and "success" in frame:
            break
    fields = orjson.dumps({"fields": ["31", "84", "86", "85", "88", "87"]}).decode()
    for conid in conids:
        await ws.send_message(f"smd+{conid}+{fields}")
