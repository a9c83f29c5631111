"""HTTP/1.1 and WebSocket upgrade on one stream, with h11 and wsproto.

h11 parses every request, keep-alive included. A ``GET`` carrying
``Upgrade: websocket`` is answered with ``101`` by h11 itself (the way
hypercorn does it), and the bytes h11 received past the request head are fed
to a post-handshake ``wsproto.connection.Connection``: one HTTP parser for the
whole port, and no request bytes re-serialised for a second one.

This module knows nothing about the gateway: it calls an :class:`HttpApp`
for every request and hands upgraded streams to it.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol

import h11
import orjson
import trio
from wsproto.connection import Connection as WsProtocol
from wsproto.connection import ConnectionType
from wsproto.utilities import generate_accept_token

__all__ = ["HttpApp", "Request", "Response", "serve_http_connection"]

logger = logging.getLogger(__name__)

_RECEIVE_BYTES = 65536
_MAX_BODY = 1024 * 1024
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request (headers lower-cased, body fully read)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    peer: str = ""

    @property
    def is_websocket_upgrade(self) -> bool:
        """True for ``GET`` with ``Upgrade: websocket``."""
        return self.method == "GET" and "websocket" in self.headers.get("upgrade", "").lower()


@dataclass(frozen=True, slots=True)
class Response:
    """A JSON response; ``body`` is any orjson-serialisable value."""

    status: int
    body: Any = None
    headers: list[tuple[str, str]] = field(default_factory=list)


class HttpApp(Protocol):
    """What :func:`serve_http_connection` needs from the application."""

    async def handle_request(self, request: Request) -> Response:
        """Answer one plain HTTP request."""
        ...

    def websocket_rejection(self, request: Request) -> Response | None:
        """None to accept this upgrade request, else the response that refuses it."""
        ...

    async def handle_websocket(
        self, request: Request, stream: trio.abc.Stream, ws: WsProtocol
    ) -> None:
        """Own an upgraded stream until the WebSocket ends; must close ``stream``."""
        ...


def _peer_name(stream: trio.abc.Stream) -> str:
    raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    sock = getattr(raw, "socket", None)
    if sock is None:
        return ""
    try:
        host, port, *_ = sock.getpeername()
    except OSError:
        return ""
    return f"{host}:{port}"


async def _next_event(stream: trio.abc.Stream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(_RECEIVE_BYTES)
        conn.receive_data(data)


async def _read_request(stream: trio.abc.Stream, conn: h11.Connection, peer: str) -> Request | None:
    """The next request with its body, or None when the client closed."""
    event = await _next_event(stream, conn)
    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
        return None
    if not isinstance(event, h11.Request):
        raise h11.RemoteProtocolError(f"expected a request, got {event!r}")
    body = bytearray()
    while True:
        part = await _next_event(stream, conn)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > _MAX_BODY:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            raise h11.RemoteProtocolError(f"unexpected {part!r} in request body")
    target = event.target.decode("ascii", "replace")
    split = urllib.parse.urlsplit(target)
    return Request(
        method=event.method.decode("ascii").upper(),
        path=split.path,
        query=dict(urllib.parse.parse_qsl(split.query)),
        headers={name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers},
        body=bytes(body),
        peer=peer,
    )


async def _send_response(
    stream: trio.abc.Stream, conn: h11.Connection, response: Response, *, close: bool = False
) -> None:
    body = b"" if response.body is None else orjson.dumps(response.body)
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("server", "bezant-trio-simulator"),
        *response.headers,
    ]
    if close:
        headers.append(("connection", "close"))
    data = conn.send(h11.Response(status_code=response.status, headers=headers))
    assert data is not None
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def _accept_websocket(
    app: HttpApp, stream: trio.abc.Stream, conn: h11.Connection, request: Request
) -> WsProtocol | None:
    """Answer an upgrade request: the WebSocket protocol object, or None if refused."""
    rejection = app.websocket_rejection(request)
    key = request.headers.get("sec-websocket-key")
    if rejection is None and (not key or request.headers.get("sec-websocket-version") != "13"):
        rejection = Response(400, {"error": "bad WebSocket handshake (key/version 13)"})
    if rejection is not None:
        await _send_response(stream, conn, rejection, close=True)
        return None
    assert key is not None
    # No subprotocol and no extension is negotiated, so server frames are plain
    # RFC 6455 frames: burst mode relies on that to pre-encode them.
    handshake = h11.InformationalResponse(
        status_code=101,
        reason=b"Switching Protocols",
        headers=[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", generate_accept_token(key.encode("ascii")).decode()),
        ],
    )
    await stream.send_all(conn.send(handshake) or b"")
    trailing, _closed = conn.trailing_data
    return WsProtocol(ConnectionType.SERVER, trailing_data=trailing)


async def serve_http_connection(app: HttpApp, stream: trio.abc.Stream) -> None:
    """Serve requests on ``stream`` until the client closes or upgrades it.

    Closes ``stream`` on return unless a WebSocket took it over. Transport
    errors (client vanished, failed TLS handshake) end the connection quietly;
    a malformed request gets a 400 and a close.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
    peer = _peer_name(stream)
    handed_off = False
    try:
        while True:
            try:
                request = await _read_request(stream, conn, peer)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    await _send_response(
                        stream, conn, Response(status, {"error": str(exc)}), close=True
                    )
                return
            if request is None:
                return
            if request.is_websocket_upgrade:
                ws = await _accept_websocket(app, stream, conn, request)
                if ws is not None:
                    # From here the WebSocket owns (and closes) the stream.
                    handed_off = True
                    await app.handle_websocket(request, stream, ws)
                return
            response = await app.handle_request(request)
            await _send_response(stream, conn, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        logger.debug("http connection from %s ended: %r", peer or "?", exc)
    finally:
        if not handed_off:
            await trio.aclose_forcefully(stream)
