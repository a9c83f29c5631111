"""The gateway WebSocket clients (``cpapi/transport.py``) over real sockets.

A scripted wsproto server on 127.0.0.1 writes exact bytes (batches, fragments,
pings, close frames, invalid UTF-8, oversize messages), so each case checks
what the client hands over and what it puts back on the wire. Cases shared by
both clients run against both: trio-websocket is the reference the default
``wsproto`` client is held to.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from bezant_trio.cpapi.transport import (
    CLIENTS,
    HandshakeFailed,
    TransportClosed,
    _split_url,
    open_transport,
)

Script = Callable[["Peer"], Awaitable[None]]


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """An unmasked server frame, byte for byte (wsproto cannot write broken ones)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


class Peer:
    """The server side of one connection: what it received, and a way to write."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.received: list[object] = []
        self.eof = trio.Event()
        self.headers: dict[bytes, bytes] = {}
        self._arrived = trio.Event()

    async def wait_for(self, kind: type) -> object:
        """The first received event of ``kind``, once it is there."""
        while True:
            for event in self.received:
                if isinstance(event, kind):
                    return event
            await self._arrived.wait()

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def text(self, text: str) -> bytes:
        return self.ws.send(TextMessage(data=text))

    async def read_until_eof(self) -> None:
        """Record every event the client sends until it closes the socket."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.eof.set()
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                self.received.append(event)
                self._arrived.set()
                self._arrived = trio.Event()
                if isinstance(event, CloseConnection) and self.ws.state.name == "REMOTE_CLOSING":
                    await self.stream.send_all(self.ws.send(event.response()))


async def serve(
    nursery: trio.Nursery, script: Script, *, reject: int | None = None
) -> tuple[int, list[Peer]]:
    """Listen on 127.0.0.1:0; run ``script`` for each upgraded connection."""
    peers: list[Peer] = []

    async def handle(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        request: Request | None = None
        while request is None:
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    request = event
        if reject is not None:
            await stream.send_all(ws.send(RejectConnection(status_code=reject)))
            await stream.aclose()
            return
        peer = Peer(stream, ws)
        peer.headers = {k.lower(): v for k, v in request.extra_headers}
        peers.append(peer)
        await stream.send_all(ws.send(AcceptConnection()))
        async with trio.open_nursery() as inner:
            inner.start_soon(peer.read_until_eof)
            await script(peer)
            await peer.eof.wait()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1], peers


async def collect(transport: object, count: int) -> tuple[list[str | bytes], int]:
    """Read until ``count`` messages arrived; also returns the largest batch seen."""
    got: list[str | bytes] = []
    largest = 0
    while len(got) < count:
        batch = await transport.receive_batch()  # type: ignore[attr-defined]
        largest = max(largest, len(batch))
        got.extend(batch)
    return got, largest


async def read_until_closed(transport: object) -> tuple[list[str | bytes], TransportClosed]:
    """Every message until the transport ends, and how it ended."""
    got: list[str | bytes] = []
    while True:
        try:
            got.extend(await transport.receive_batch())  # type: ignore[attr-defined]
        except TransportClosed as closed:
            return got, closed


def opener(port: int, client: str, **kwargs: object):
    return open_transport(
        f"ws://127.0.0.1:{port}/v1/api/ws",
        client=client,
        ssl_context=None,
        headers=[(b"cookie", b"api=x")],
        connect_timeout=kwargs.pop("connect_timeout", 10.0),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------- both clients


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_burst_arrives_whole_in_order_and_the_socket_is_closed_on_exit(
    client: str, nursery: trio.Nursery
) -> None:
    texts = [f'{{"topic":"smd+1","seq":{i},"31":"{i}.5"}}' for i in range(2000)]

    async def script(peer: Peer) -> None:
        await peer.write(b"".join(peer.text(t) for t in texts))

    port, peers = await serve(nursery, script)
    with trio.fail_after(20):
        async with opener(port, client) as transport:
            got, largest = await collect(transport, len(texts))
            assert peers[0].headers[b"cookie"] == b"api=x"
        await peers[0].eof.wait()
    assert got == texts
    if client == "wsproto":
        assert largest > 100, "one socket read should give many frames at once"
    # A normal exit says goodbye with a close frame before the socket goes.
    assert any(isinstance(e, CloseConnection) and e.code == 1000 for e in peers[0].received)


@pytest.mark.parametrize("client", CLIENTS)
async def test_fragmented_text_and_binary_messages_are_joined(
    client: str, nursery: trio.Nursery
) -> None:
    async def script(peer: Peer) -> None:
        await peer.write(frame(0x1, b'{"a":', fin=False))
        await peer.write(frame(0x0, "\u00e9".encode()[:1], fin=False))  # split inside a code point
        await peer.write(frame(0x0, "\u00e9".encode()[1:] + b'"}'))
        await peer.write(frame(0x2, b"\x00\x01", fin=False) + frame(0x0, b"\x02"))
        await peer.write(peer.text("last"))

    port, _ = await serve(nursery, script)
    with trio.fail_after(20):
        async with opener(port, client) as transport:
            got, _ = await collect(transport, 3)
    assert got == ['{"a":\u00e9"}', b"\x00\x01\x02", "last"]


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_ping_is_answered(client: str, nursery: trio.Nursery) -> None:
    async def script(peer: Peer) -> None:
        await peer.write(peer.ws.send(Ping(payload=b"are you there")) + peer.text("after"))

    port, peers = await serve(nursery, script)
    with trio.fail_after(20):
        async with opener(port, client) as transport:
            assert await collect(transport, 1) == (["after"], 1)
            pong = await peers[0].wait_for(Pong)
    assert pong.payload == b"are you there"  # type: ignore[attr-defined]


@pytest.mark.parametrize("client", CLIENTS)
async def test_the_gateway_closing_ends_the_transport_with_its_code(
    client: str, nursery: trio.Nursery
) -> None:
    async def script(peer: Peer) -> None:
        data = peer.text("one") + peer.text("two")
        data += peer.ws.send(CloseConnection(code=1001, reason="going away"))
        await peer.write(data)

    port, _ = await serve(nursery, script)
    with trio.fail_after(20):
        async with opener(port, client) as transport:
            got, _ = await collect(transport, 2)
            with pytest.raises(TransportClosed) as closed:
                await transport.receive_batch()
            # Sending afterwards is a clean TransportClosed too, not a library error.
            with pytest.raises(TransportClosed):
                await transport.send("ech+hb")
    assert got == ["one", "two"]
    assert closed.value.code == 1001
    assert not closed.value.local


@pytest.mark.parametrize("client", CLIENTS)
async def test_invalid_utf8_fails_the_connection_and_closes_the_socket(
    client: str, nursery: trio.Nursery
) -> None:
    async def script(peer: Peer) -> None:
        await peer.write(peer.text("kept") + frame(0x1, b'{"x":"\xff\xfe"}') + peer.text("never"))

    port, peers = await serve(nursery, script)
    with trio.fail_after(20):
        async with opener(port, client) as transport:
            got, closed = await read_until_closed(transport)
        # A connection failed for a protocol violation must not linger open and
        # subscribed on the gateway (tests/reliability/README.md, "Bugs found").
        await peers[0].eof.wait()
    assert got == ["kept"]
    assert closed.code == 1007
    if client == "wsproto":
        # RFC 6455 7.1.7: fail the connection with a close frame saying why
        # (trio-websocket just drops the socket).
        closes = [e for e in peers[0].received if isinstance(e, CloseConnection)]
        assert closes and closes[0].code == 1007


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_socket_cut_without_a_close_frame_is_1006(
    client: str, nursery: trio.Nursery
) -> None:
    async def script(peer: Peer) -> None:
        await peer.write(peer.text("before"))
        await peer.stream.aclose()
        peer.eof.set()

    port, _ = await serve(nursery, script)
    with trio.fail_after(20):
        async with opener(port, client) as transport:
            got, closed = await read_until_closed(transport)
    assert got == ["before"]
    assert closed.code == 1006


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_rejected_upgrade_is_a_handshake_failure(
    client: str, nursery: trio.Nursery
) -> None:
    async def script(peer: Peer) -> None:  # pragma: no cover - never upgraded
        raise AssertionError

    port, _ = await serve(nursery, script, reject=403)
    with trio.fail_after(20), pytest.raises(HandshakeFailed):
        async with opener(port, client):
            pass  # pragma: no cover


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_silent_server_times_out_the_upgrade(client: str, nursery: trio.Nursery) -> None:
    accepted = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        accepted.set()
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(20), pytest.raises(HandshakeFailed, match=r"within 0\.3 s"):
        async with opener(port, client, connect_timeout=0.3):
            pass  # pragma: no cover
    assert accepted.is_set()


# ------------------------------------------------------------- wsproto client


async def test_a_message_over_the_size_limit_fails_with_1009(nursery: trio.Nursery) -> None:
    async def script(peer: Peer) -> None:
        await peer.write(peer.text("small") + peer.text("x" * 5000))

    port, peers = await serve(nursery, script)
    with trio.fail_after(20):
        async with opener(port, "wsproto", max_message_size=4096) as transport:
            assert await transport.receive_batch() == ["small"]
            with pytest.raises(TransportClosed) as closed:
                await transport.receive_batch()
        await peers[0].eof.wait()
    assert (closed.value.code, closed.value.local) == (1009, True)


async def test_a_fragmented_message_over_the_limit_fails_with_1009(nursery: trio.Nursery) -> None:
    async def script(peer: Peer) -> None:
        for _ in range(10):
            await peer.write(frame(0x1 if _ == 0 else 0x0, b"y" * 1000, fin=False))

    port, _ = await serve(nursery, script)
    with trio.fail_after(20):
        async with opener(port, "wsproto", max_message_size=4096) as transport:
            with pytest.raises(TransportClosed) as closed:
                await transport.receive_batch()
    assert closed.value.code == 1009


async def test_frames_that_arrive_with_the_upgrade_answer_are_not_lost(
    nursery: trio.Nursery,
) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            ws.receive_data(await stream.receive_some(65536))
            if any(isinstance(e, Request) for e in ws.events()):
                break
        # The 101 and the first frames in one write, as a busy gateway may do.
        await stream.send_all(ws.send(AcceptConnection()) + ws.send(TextMessage(data="early")))
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(20):
        async with opener(port, "wsproto") as transport:
            assert await transport.receive_batch() == ["early"]


def test_urls_split_into_host_port_header_and_resource() -> None:
    assert _split_url("wss://localhost:5000/v1/api/ws") == (
        True,
        "localhost",
        5000,
        "localhost:5000",
        "/v1/api/ws",
    )
    assert _split_url("ws://gw/v1/api/ws?x=1") == (False, "gw", 80, "gw", "/v1/api/ws?x=1")
    assert _split_url("wss://gw/ws")[2:4] == (443, "gw")
    assert _split_url("ws://[::1]:5000/ws")[1:4] == ("::1", 5000, "[::1]:5000")


async def test_an_unknown_client_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown websocket client"):
        async with opener(1, "websockets"):
            pass  # pragma: no cover
