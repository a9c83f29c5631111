"""The gateway WebSocket, owned down to its TCP socket.

The connector talks to one small interface, :class:`Transport`, with two
implementations:

``wsproto`` (the default)
    wsproto driven straight on a trio stream. One ``receive_some`` can hold
    hundreds of frames; :meth:`WsprotoTransport.receive_batch` parses them all
    and hands them over as one list, so a frame costs no task switch, no
    memory-channel send and no scheduler pass (bench/ANALYSIS.md). Nothing
    received is ever discarded: when the peer closes or breaks the protocol,
    the messages read before that point are returned first and the close is
    raised on the next call.

``trio-websocket``
    The reference client library, one message per call. Kept as an escape
    hatch (``gateway.websocket_client``) and as the oracle the tests compare
    the default against.

Both own their transport: :func:`open_transport` opens the TCP (and TLS)
stream itself and closes it forcefully on the way out, whatever happened, so
a connection that failed (a protocol violation, say) never lingers half-open
on the gateway, still subscribed.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

if TYPE_CHECKING:
    import trio_websocket

__all__ = [
    "CLIENTS",
    "HandshakeFailed",
    "Transport",
    "TransportClosed",
    "WsprotoTransport",
    "open_transport",
]

log = logging.getLogger(__name__)

#: The ``gateway.websocket_client`` choices.
CLIENTS = ("wsproto", "trio-websocket")
#: Bytes asked of the socket per read: a burst of ~150-byte frames is parsed
#: a few hundred at a time.
RECEIVE_BYTES = 256 * 1024
#: Most seconds spent sending our close frame before the socket is cut.
CLOSE_TIMEOUT = 1.0
#: RFC 6455 close codes used here.
CLOSE_ABNORMAL = 1006
CLOSE_TOO_BIG = 1009
CLOSE_NORMAL = 1000


class HandshakeFailed(Exception):
    """The WebSocket upgrade did not complete (rejected, timed out, closed)."""


class TransportClosed(Exception):
    """The WebSocket ended: the peer closed it, the socket broke, or the peer
    broke the protocol (``local`` is then true: we failed the connection)."""

    def __init__(self, code: int, reason: str = "", *, local: bool = False) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.local = local

    def __str__(self) -> str:
        who = "failed by us" if self.local else "closed"
        detail = f": {self.reason}" if self.reason else ""
        return f"websocket {who} (code {self.code}{detail})"


class Transport(Protocol):
    """What the connector needs of a WebSocket."""

    async def receive_batch(self) -> list[str | bytes]:
        """Every complete message available now (at least one), in order.

        Raises :class:`TransportClosed` once nothing more will come.
        """

    async def send(self, text: str) -> None:
        """Send one text message. Raises :class:`TransportClosed`."""


class WsprotoTransport:
    """wsproto on a trio stream; see the module docstring."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection, *, max_message_size: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max = max_message_size
        self._send_lock = trio.Lock()
        self._parts: list[str | bytes] = []
        self._size = 0
        self._closed: TransportClosed | None = None
        #: Bytes that arrived with the handshake answer (already fed to wsproto).
        self._pending_events = True

    @classmethod
    async def handshake(
        cls,
        stream: trio.abc.Stream,
        host: str,
        resource: str,
        headers: list[tuple[bytes, bytes]],
        *,
        max_message_size: int,
    ) -> WsprotoTransport:
        """Upgrade ``stream`` (the caller bounds the time)."""
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host=host, target=resource, extra_headers=headers)))
        status: int | None = None
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return cls(stream, ws, max_message_size=max_message_size)
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise HandshakeFailed(f"upgrade rejected with HTTP {status}")
                elif isinstance(event, RejectData) and event.body_finished:
                    raise HandshakeFailed(f"upgrade rejected with HTTP {status}")
                elif isinstance(event, CloseConnection):
                    raise HandshakeFailed("connection closed during the upgrade")
            if not data:
                raise HandshakeFailed("connection closed during the upgrade")

    async def receive_batch(self) -> list[str | bytes]:
        out: list[str | bytes] = []
        while not out:
            if self._closed is not None:
                raise self._closed
            if self._pending_events:
                self._pending_events = False  # frames that came with the 101
            else:
                try:
                    data = await self._stream.receive_some(RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    data = b""
                    self._closed = TransportClosed(CLOSE_ABNORMAL, f"socket broke: {exc}")
                if self._closed is None:
                    self._ws.receive_data(data or None)
            await self._collect(out)
        return out

    async def _collect(self, out: list[str | bytes]) -> None:
        ws = self._ws
        for event in ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                if event.message_finished and not self._parts:
                    message: str | bytes = event.data
                    if len(message) > self._max:
                        await self._fail(CLOSE_TOO_BIG, "message too big")
                        return
                    out.append(message)
                    continue
                self._parts.append(event.data)
                self._size += len(event.data)
                if self._size > self._max:
                    await self._fail(CLOSE_TOO_BIG, "message too big")
                    return
                if event.message_finished:
                    joiner: str | bytes = "" if isinstance(event, TextMessage) else b""
                    out.append(joiner.join(self._parts))  # type: ignore[arg-type]
                    self._parts.clear()
                    self._size = 0
            elif isinstance(event, Ping):
                await self._send_bytes(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    # The peer closed: answer it, then we are done.
                    self._closed = TransportClosed(event.code, event.reason or "")
                    await self._send_bytes(ws.send(event.response()))
                elif ws.state is ConnectionState.CLOSED:
                    # The socket ended without a close frame, or answered ours.
                    self._closed = TransportClosed(event.code, event.reason or "")
                else:
                    # wsproto could not parse a frame (RFC 6455 says: fail the
                    # connection with this code); it stays OPEN for us to close.
                    await self._fail(event.code, event.reason or "protocol violation")
                return

    async def _fail(self, code: int, reason: str) -> None:
        self._closed = TransportClosed(code, reason, local=True)
        if self._ws.state is ConnectionState.OPEN:
            await self._send_bytes(self._ws.send(CloseConnection(code=code, reason=reason[:100])))

    async def _send_bytes(self, data: bytes) -> None:
        """Best effort (a pong, a close): a broken socket shows up on the next read,
        which still returns what the kernel had buffered before it broke."""
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("websocket control frame not sent: %s", exc)

    async def send(self, text: str) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            data = self._ws.send(TextMessage(data=text))
        except LocalProtocolError:
            raise TransportClosed(CLOSE_ABNORMAL, "the websocket is closing") from None
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(CLOSE_ABNORMAL, f"socket broke: {exc}") from None

    async def close(self) -> None:
        """Send our close frame if the connection is still open (bounded)."""
        if self._ws.state is ConnectionState.OPEN:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._send_bytes(self._ws.send(CloseConnection(code=CLOSE_NORMAL)))


def _trio_websocket() -> Any:
    """trio-websocket, imported when it is chosen: the default never loads it (~2 MB of RSS)."""
    import trio_websocket

    return trio_websocket


class TrioWebsocketTransport:
    """trio-websocket, one message per call; see the module docstring."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._closed_error = _trio_websocket().ConnectionClosed

    async def receive_batch(self) -> list[str | bytes]:
        try:
            return [await self._ws.get_message()]
        except self._closed_error as exc:
            reason = exc.reason
            raise TransportClosed(reason.code, reason.reason or "") from None

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_message(text)
        except (self._closed_error, trio.BrokenResourceError) as exc:
            raise TransportClosed(CLOSE_ABNORMAL, f"socket broke: {exc}") from None

    async def close(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._ws.aclose()


def _sole(group: BaseExceptionGroup) -> BaseException:
    """The one exception inside ``group`` (nested groups flattened), else the group."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


def _split_url(url: str) -> tuple[bool, str, int, str, str]:
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    default = (secure and port == 443) or (not secure and port == 80)
    host_header = host if default else f"{host}:{port}"
    if ":" in host and not default:  # IPv6 literal
        host_header = f"[{host}]:{port}"
    return secure, host, port, host_header, resource


@asynccontextmanager
async def open_transport(
    url: str,
    *,
    client: str = "wsproto",
    ssl_context: ssl.SSLContext | None,
    headers: list[tuple[bytes, bytes]],
    connect_timeout: float,
    max_message_size: int = 4 * 1024 * 1024,
) -> AsyncIterator[WsprotoTransport | TrioWebsocketTransport]:
    """Connect (TCP, TLS, upgrade) within ``connect_timeout``; always cut the socket on exit.

    Raises :class:`HandshakeFailed` for an upgrade that did not complete, and
    ``OSError`` / ``trio.BrokenResourceError`` for the network.
    """
    if client not in CLIENTS:
        raise ValueError(f"unknown websocket client {client!r}")
    secure, host, port, host_header, resource = _split_url(url)
    stream: trio.abc.Stream | None = None
    try:
        with trio.move_on_after(connect_timeout) as connecting:
            stream = await trio.open_tcp_stream(host, port)
            if secure:
                stream = trio.SSLStream(
                    stream,
                    ssl_context or ssl.create_default_context(),
                    server_hostname=host,
                    https_compatible=True,
                )
                await stream.do_handshake()
            if client == "wsproto":
                transport = await WsprotoTransport.handshake(
                    stream, host_header, resource, headers, max_message_size=max_message_size
                )
        if connecting.cancelled_caught:
            raise HandshakeFailed(f"no websocket within {connect_timeout:g} s")
        assert stream is not None
        if client == "wsproto":
            try:
                yield transport
            finally:
                with trio.CancelScope(shield=True):
                    await transport.close()
            return
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(connect_timeout):
                    ws = await _trio_websocket().wrap_client_stream(
                        nursery,
                        stream,  # type: ignore[arg-type]
                        host_header,
                        resource,
                        extra_headers=headers,
                        message_queue_size=4096,
                        max_message_size=max_message_size,
                        receive_buffer_size=RECEIVE_BYTES,
                    )
                wrapped = TrioWebsocketTransport(ws)
                try:
                    yield wrapped
                finally:
                    with trio.CancelScope(shield=True):
                        await wrapped.close()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The library's reader task lives in this nursery, so its errors and
            # the caller's own come out grouped; hand back the one that ended it.
            exc = _sole(group)
            if isinstance(exc, trio.TooSlowError):
                raise HandshakeFailed(f"no websocket within {connect_timeout:g} s") from None
            if isinstance(exc, _trio_websocket().HandshakeError):
                raise HandshakeFailed(f"upgrade failed: {exc!r}") from None
            raise exc from None
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)
