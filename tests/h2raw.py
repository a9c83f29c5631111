"""A raw HTTP/2 client (prior knowledge, over plain TCP) that can misbehave on purpose.

httpx speaks HTTP/2 politely; an attacker does not: it streams a body nobody
asked for, for as long as the server grants flow-control window, or opens
streams and never reads them. This client sends what a test tells it to and
records what comes back per stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio


@dataclass
class H2Response:
    """What one stream got back."""

    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: trio.Event = field(default_factory=trio.Event)
    #: The server reset the stream (or the connection ended before the stream did).
    reset: bool = False


class RawH2:
    """One HTTP/2 connection; use ``async with RawH2.connect(host, port) as conn``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self._send_lock = trio.Lock()
        self._window_opened = trio.Event()
        self.responses: dict[int, H2Response] = {}
        #: The server closed the connection (EOF, GOAWAY or a reset socket).
        self.closed = trio.Event()

    @classmethod
    @asynccontextmanager
    async def connect(cls, host: str, port: int) -> AsyncIterator[RawH2]:
        """Open a connection (HTTP/2 prior knowledge); closed on leaving the block."""
        stream = await trio.open_tcp_stream(host, port)
        conn = cls(stream)
        async with stream, trio.open_nursery() as nursery:
            await conn._start(nursery)
            try:
                yield conn
            finally:
                nursery.cancel_scope.cancel()

    async def _start(self, nursery: trio.Nursery) -> None:
        self._h2.initiate_connection()
        # Take whatever the server sends (an SSE stream) without stalling it.
        self._h2.increment_flow_control_window(2**30)
        await self._flush()
        nursery.start_soon(self._read)

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._h2.data_to_send()
            if data:
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._end()

    def _end(self) -> None:
        for response in self.responses.values():
            if not response.ended.is_set():
                response.reset = True
                response.ended.set()
        self.closed.set()
        self._window_opened.set()

    async def _read(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    break
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._handle(event)
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self._end()

    def _handle(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        response = self.responses.get(sid) if sid else None
        if isinstance(event, h2.events.ResponseReceived) and response is not None:
            response.headers = dict(event.headers)
            response.status = int(response.headers[b":status"])
        elif isinstance(event, h2.events.DataReceived) and response is not None:
            response.body += event.data
            self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded) and response is not None:
            response.ended.set()
        elif isinstance(event, h2.events.StreamReset) and response is not None:
            response.reset = True
            response.ended.set()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window_opened.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._end()

    async def request(
        self,
        path: str,
        *,
        host: str = "localhost",
        headers: list[tuple[str, str]] | None = None,
        end_stream: bool = True,
    ) -> int:
        """Send a GET's headers; returns the stream id. ``end_stream=False`` leaves room for a body."""
        sid = self._h2.get_next_available_stream_id()
        self.responses[sid] = H2Response()
        self._h2.send_headers(
            sid,
            [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", host)]
            + (headers or []),
            end_stream=end_stream,
        )
        await self._flush()
        return sid

    async def stream_body(self, sid: int, limit: int, *, chunk: int = 16384) -> int:
        """Send body bytes on ``sid`` as fast as flow control allows, up to ``limit``.

        Returns the bytes sent; stops early when the stream or connection ends.
        """
        sent = 0
        payload = b"x" * chunk
        while sent < limit and not self.closed.is_set():
            response = self.responses[sid]
            if response.ended.is_set():
                break
            try:
                window = min(
                    self._h2.local_flow_control_window(sid), self._h2.max_outbound_frame_size
                )
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                break
            if window <= 0:
                self._window_opened = trio.Event()
                await self._window_opened.wait()
                continue
            size = min(window, chunk, limit - sent)
            try:
                self._h2.send_data(sid, payload[:size])
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                break
            sent += size
            await self._flush()
        return sent

    async def aclose(self) -> None:
        await self._stream.aclose()
