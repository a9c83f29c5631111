"""The fake CPAPI gateway: one loopback port serving REST, the WebSocket and /sim controls.

:class:`GatewaySimulator` owns the listener, every connection task, the
background stream generator and the fault timers, all inside one nursery:
nothing it starts outlives :meth:`GatewaySimulator.run`. Faults and event
emission are plain async methods for in-process tests; ``routes.py`` exposes
the same operations over HTTP under ``/sim/...`` for out-of-process users.

Sequence numbers (the loss-accounting contract)
-----------------------------------------------
Every frame generated from a stream carries ``seq``: inside each order dict,
inside the PnL row, inside each trade dict, top-level in market data. Seqs
are per channel (``orders``, ``pnl``, ``trades``, ``marketdata:<conid>``) and
a frame takes the next one only when at least one ready, subscribed, unstalled
connection exists to send it to. A frame generated when nobody would receive
it is not generated at all, so it consumes no seq: with one connection that
never drops, the seqs on the wire are exactly 1, 2, 3, ... A frame that was
queued for a connection which died before writing it did consume its seq, and
shows up as a hole; the per-channel ``written`` ranges record only what reached
``send_all``, which is the set a capturing client can be held to. Seqs are
never reset, not even by :meth:`GatewaySimulator.restart`, so that ledger stays
comparable across reconnects.

This module must not import from ``bezant_trio.cpapi``: the simulator is the
other side of the wire, and sharing code would hide protocol mistakes.
"""

from __future__ import annotations

import logging
import math
import ssl
import tempfile
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import trio
import trustme
from wsproto.connection import Connection as WsProtocol
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, TextMessage

from bezant_trio.simulator import frames
from bezant_trio.simulator.connection import Outgoing, WsConnection
from bezant_trio.simulator.errors import SimulatorError, SimulatorTimeout
from bezant_trio.simulator.httpserver import Request, Response, serve_http_connection
from bezant_trio.simulator.ledger import SeqRanges
from bezant_trio.simulator.routes import dispatch

__all__ = [
    "STREAM_CHANNELS",
    "BurstResult",
    "GatewaySimulator",
    "SimulatorError",
    "SimulatorTimeout",
    "open_simulator",
]

logger = logging.getLogger(__name__)

#: Channel names accepted by ``emit``, ``start_stream`` and ``/sim/emit/{channel}``.
STREAM_CHANNELS = ("orders", "pnl", "trades", "marketdata")
DROP_MODES = ("abrupt", "close", "reset")
WS_PATH = "/v1/api/ws"
_BURST_CHUNK_BYTES = 256 * 1024
_CLOSED_HISTORY = 20
# The JSON of a truncated order frame: what a gateway cut off mid-write looks like.
_MALFORMED_TEXT = '{"topic":"sor","args":[{"acct":"DU1234","orderId":'
_BINARY_FRAME = {"topic": "ntf", "args": {"id": "sim-binary", "text": "sent as a binary frame"}}
# 0xff and 0xfe can never appear in UTF-8.
_INVALID_UTF8 = b'{"topic":"ntf","args":{"text":"\xff\xfe"}}'


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class BurstResult:
    """What :meth:`GatewaySimulator.burst_marketdata` sent.

    ``frames`` and ``bytes`` are per connection; ``complete`` is True when every
    target connection wrote every chunk. ``send_seconds`` spans first enqueue to
    last write, so ``frames_per_second`` is what the sockets accepted.
    """

    conid: int
    channel: str
    connections: int
    frames: int
    bytes: int
    first_seq: int | None
    last_seq: int | None
    encode_seconds: float
    send_seconds: float
    frames_per_second: float
    complete: bool

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of ``POST /sim/burst``."""
        return asdict(self)


@dataclass(slots=True)
class _MarketdataConid:
    server_id: str
    fields: tuple[str, ...]


class _Channel:
    __slots__ = ("last_assigned", "lock", "written")

    def __init__(self) -> None:
        self.last_assigned = 0
        self.written = SeqRanges()
        # Held from seq assignment until the frame is queued on every target,
        # so concurrent emitters (HTTP, stream generator) cannot reorder seqs.
        self.lock = trio.Lock()


async def _wait_any(*events: trio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    async with trio.open_nursery() as nursery:

        async def wait_one(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait_one, event)


class GatewaySimulator:
    """A fake Client Portal gateway on one loopback port.

    Start it with ``await nursery.start(sim.run)`` (or :func:`open_simulator`);
    ``started`` hands back the simulator once it is listening. All fault and
    emit methods must be called from the same Trio run.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        ready_delay: float = 0.05,
        heartbeat_interval: float = 10.0,
        rates: Mapping[str, float] | None = None,
        binary_frames: bool = False,
        queue_size: int = 1024,
        send_timeout: float = 5.0,
        close_timeout: float = 2.0,
        command_log_size: int = 200,
        ca_pem_path: str | Path | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.host = host
        self.tls = tls
        #: The bound port, set once :meth:`run` is listening.
        self.port: int | None = None
        #: PEM of the CA that signed the TLS certificate (TLS only).
        self.ca_pem: bytes | None = None
        #: Where that PEM was written (TLS only); a temp file unless ``ca_pem_path`` given.
        self.ca_pem_path: str | None = None
        #: The session id ``/tickle`` returns and the WebSocket cookie must carry.
        self.session = frames.new_session_id()
        #: False makes ``/tickle``, ``/iserver/auth/status`` and the WS handshake answer 401.
        self.authenticated = True
        #: True during a restart's downtime: REST and WS answer 503.
        self.down = False
        #: True while stalled: nothing is written to any WebSocket, no heartbeats.
        self.stalled = False
        #: Seconds the writer waits before each frame (slow/trickle mode); 0 = off.
        self.slow_delay = 0.0
        self.ready_delay = ready_delay
        self.heartbeat_interval = heartbeat_interval
        #: Send JSON frames as binary WebSocket messages instead of text.
        self.binary_frames = binary_frames
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.tickle_count = 0
        self.ws_handshakes = 0
        self.restarts = 0

        self._requested_port = port
        self._initial_rates = dict(rates or {})
        self._ca_pem_out = Path(ca_pem_path) if ca_pem_path is not None else None
        self._ca: trustme.CA | None = None
        self._queue_size = queue_size
        self._connections: dict[int, WsConnection] = {}
        self._closed_connections: deque[dict[str, Any]] = deque(maxlen=_CLOSED_HISTORY)
        self._next_connection_id = 1
        self._channels: dict[str, _Channel] = {}
        self._marketdata: dict[int, _MarketdataConid] = {}
        self._commands: deque[dict[str, Any]] = deque(maxlen=command_log_size)
        self._dropped_before_ready = 0
        self._rates: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None
        self._timers: dict[str, trio.CancelScope] = {}
        self._stream_scope: trio.CancelScope | None = None
        # Replaced (after being set) on every observable change; wait_for() parks on it.
        self._changed = trio.Event()
        # Replaced on every configure(); heartbeat loops restart their timer on it.
        self._config_changed = trio.Event()
        self._unstalled = trio.Event()
        self._unstalled.set()

    # ------------------------------------------------------------------ addresses

    @property
    def _url_host(self) -> str:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    def _require_port(self) -> int:
        if self.port is None:
            raise SimulatorError("the simulator is not listening yet: start run() first")
        return self.port

    @property
    def base_url(self) -> str:
        """REST base, e.g. ``https://127.0.0.1:5000/v1/api``."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._url_host}:{self._require_port()}/v1/api"

    @property
    def ws_url(self) -> str:
        """The WebSocket URL, e.g. ``wss://127.0.0.1:5000/v1/api/ws``."""
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{self._url_host}:{self._require_port()}{WS_PATH}"

    @property
    def control_url(self) -> str:
        """Base of the HTTP control API, e.g. ``http://127.0.0.1:5000/sim``."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._url_host}:{self._require_port()}/sim"

    def cookie_header(self, session: str | None = None) -> tuple[bytes, bytes]:
        """The ``Cookie`` header a client sends on the WebSocket handshake."""
        body = orjson.dumps({"session": self.session if session is None else session})
        return (b"cookie", b"api=" + urllib.parse.quote(body, safe="").encode("ascii"))

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this simulator's CA (TLS only)."""
        if self._ca is None:
            raise SimulatorError("TLS is off or the simulator has not started")
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self, *, task_status: trio.TaskStatus[GatewaySimulator] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled or :meth:`stop` is called."""
        if self._nursery is not None:
            raise SimulatorError("this simulator is already running")
        with tempfile.TemporaryDirectory(prefix="bezant-sim-") as tmp:
            ssl_context = self._setup_tls(Path(tmp)) if self.tls else None
            tcp_listeners = await trio.open_tcp_listeners(self._requested_port, host=self.host)
            listeners: list[trio.abc.Listener[Any]] = list(tcp_listeners)
            self.port = tcp_listeners[0].socket.getsockname()[1]
            if ssl_context is not None:
                # https_compatible: HTTP clients routinely skip close_notify.
                listeners = [
                    trio.SSLListener(listener, ssl_context, https_compatible=True)
                    for listener in tcp_listeners
                ]
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(
                        partial(
                            trio.serve_listeners,
                            self._serve_stream,
                            listeners,
                            handler_nursery=nursery,
                        )
                    )
                    if self._initial_rates:
                        self.start_stream(self._initial_rates)
                    logger.info("gateway simulator listening on %s", self.base_url)
                    task_status.started(self)
            finally:
                self._nursery = None

    def stop(self) -> None:
        """Stop serving: cancels every connection and task of the simulator."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _setup_tls(self, tmp: Path) -> ssl.SSLContext:
        self._ca = trustme.CA()
        names = {"127.0.0.1", "localhost", "::1"}
        if self.host not in ("", "0.0.0.0", "::"):
            names.add(self.host)
        cert = self._ca.issue_cert(*sorted(names))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.ca_pem = self._ca.cert_pem.bytes()
        path = self._ca_pem_out or tmp / "simulator-ca.pem"
        self._ca.cert_pem.write_to_path(str(path))
        self.ca_pem_path = str(path)
        return context

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise SimulatorError("the simulator is not running")
        return self._nursery

    # ------------------------------------------------------------- HttpApp hooks

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        await serve_http_connection(self, stream)

    async def handle_request(self, request: Request) -> Response:
        """Answer one REST or ``/sim`` request (see ``routes.py``)."""
        return await dispatch(self, request)

    def websocket_rejection(self, request: Request) -> Response | None:
        """Refuse the upgrade when the path is wrong, the gateway is down or unauthenticated."""
        if request.path != WS_PATH:
            return Response(404, {"error": "not found", "path": request.path})
        if self.down:
            return Response(503, {"error": "gateway restarting"})
        if not self.authenticated:
            return Response(401, {"error": "not authenticated"})
        return None

    async def handle_websocket(
        self, request: Request, stream: trio.abc.Stream, ws: WsProtocol
    ) -> None:
        """Serve one upgraded WebSocket until it closes."""
        session = frames.parse_session_cookie(request.headers.get("cookie", ""))
        conn_id = self._next_connection_id
        self._next_connection_id += 1
        connection = WsConnection(
            self,
            conn_id,
            stream,
            ws,
            peer=request.peer,
            tls=self.tls,
            session_ok=session == self.session,
            queue_size=self._queue_size,
        )
        await connection.serve()

    # ------------------------------------------------------ connection callbacks

    def _connection_opened(self, connection: WsConnection) -> None:
        self._connections[connection.id] = connection
        self.ws_handshakes += 1
        self._notify()

    def _connection_closed(self, connection: WsConnection) -> None:
        self._connections.pop(connection.id, None)
        self._closed_connections.append(connection.describe())
        self._notify()

    def _record_written(self, channel: str, first: int, last: int) -> None:
        self._channel(channel).written.add(first, last)

    def _record_command(self, connection: WsConnection, text: str, result: str) -> None:
        self._commands.append(
            {"connection": connection.id, "at_ms": _now_ms(), "text": text[:500], "result": result}
        )
        self._notify()

    def _register_marketdata(self, conid: int, fields: tuple[str, ...]) -> None:
        entry = self._marketdata.get(conid)
        if entry is None:
            # The gateway names each market-data stream by a short server id.
            self._marketdata[conid] = _MarketdataConid(f"q{len(self._marketdata)}", fields)
        else:
            entry.fields = fields
        self._notify()

    def _marketdata_server_id(self, conid: int) -> str:
        entry = self._marketdata.get(conid)
        return entry.server_id if entry is not None else "q?"

    async def _wait_unstalled(self) -> None:
        while self.stalled:
            await self._unstalled.wait()

    def _json_item(self, frame: Any, **item_fields: Any) -> Outgoing:
        if isinstance(frame, bytes | bytearray):
            return Outgoing("bytes", bytes(frame), **item_fields)
        raw = frame.encode() if isinstance(frame, str) else orjson.dumps(frame)
        if self.binary_frames:
            return Outgoing("bytes", raw, **item_fields)
        return Outgoing("text", raw.decode(), **item_fields)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
        return channel

    # -------------------------------------------------------------- inspection

    @property
    def connections(self) -> list[WsConnection]:
        """Open WebSocket connections, oldest first."""
        return list(self._connections.values())

    def ready_connections(self) -> list[WsConnection]:
        """Open connections that have been sent the ready frame."""
        return [conn for conn in self._connections.values() if conn.ready and not conn.closing]

    def subscribers(self, channel: str) -> list[WsConnection]:
        """Connections a frame of ``channel`` (``orders``, ``marketdata:265598``, ...) would go to."""
        if self.stalled:
            return []
        return [conn for conn in self._connections.values() if conn.wants(channel)]

    def written(self, channel: str) -> SeqRanges:
        """The seqs of ``channel`` written to any socket so far."""
        return self._channel(channel).written

    @property
    def dropped_before_ready(self) -> int:
        """Subscribe/unsubscribe commands dropped because they came before the ready frame."""
        return self._dropped_before_ready

    @property
    def commands(self) -> list[dict[str, Any]]:
        """The last ``command_log_size`` client commands, oldest first."""
        return list(self._commands)

    def state(self) -> dict[str, Any]:
        """Everything ``GET /sim/state`` returns."""
        return {
            "session": self.session,
            "authenticated": self.authenticated,
            "down": self.down,
            "stalled": self.stalled,
            "slow_delay": self.slow_delay,
            "binary_frames": self.binary_frames,
            "ready_delay": self.ready_delay,
            "heartbeat_interval": self.heartbeat_interval,
            "send_timeout": self.send_timeout,
            "close_timeout": self.close_timeout,
            "queue_size": self._queue_size,
            "tickle_count": self.tickle_count,
            "ws_handshakes": self.ws_handshakes,
            "restarts": self.restarts,
            "dropped_before_ready": self._dropped_before_ready,
            "connections": [conn.describe() for conn in self._connections.values()],
            "closed_connections": list(self._closed_connections),
            "channels": {
                name: {
                    "last_seq": channel.last_assigned,
                    "written_count": channel.written.count,
                    "last_written": channel.written.last,
                    "written": channel.written.ranges(),
                }
                for name, channel in sorted(self._channels.items())
            },
            "marketdata": {
                str(conid): {"server_id": entry.server_id, "fields": list(entry.fields)}
                for conid, entry in sorted(self._marketdata.items())
            },
            "commands": list(self._commands),
            "stream": {"running": self._stream_scope is not None, "rates": dict(self._rates)},
        }

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self, predicate: Callable[[GatewaySimulator], bool], *, timeout: float | None = None
    ) -> None:
        """Return once ``predicate(self)`` holds; re-checked on every state change.

        Raises :class:`SimulatorTimeout` after ``timeout`` seconds (None: no limit).
        """
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                while not predicate(self):
                    await self._changed.wait()
        except trio.TooSlowError:
            raise SimulatorTimeout(f"simulator condition not met within {timeout}s") from None

    async def wait_connections(self, count: int = 1, *, timeout: float | None = None) -> None:
        """Wait until exactly ``count`` WebSockets are open (``0``: all closed)."""
        await self.wait_for(lambda sim: len(sim._connections) == count, timeout=timeout)

    async def wait_ready(self, count: int = 1, *, timeout: float | None = None) -> None:
        """Wait until at least ``count`` connections have been sent the ready frame."""
        await self.wait_for(lambda sim: len(sim.ready_connections()) >= count, timeout=timeout)

    async def wait_subscribed(
        self, channel: str, count: int = 1, *, timeout: float | None = None
    ) -> None:
        """Wait until ``count`` connections subscribe ``channel`` (e.g. ``marketdata:265598``)."""
        await self.wait_for(
            lambda sim: sum(conn.wants(channel) for conn in sim._connections.values()) >= count,
            timeout=timeout,
        )

    async def wait_written(self, channel: str, seq: int, *, timeout: float | None = None) -> None:
        """Wait until ``seq`` of ``channel`` has been written to some socket."""
        await self.wait_for(lambda sim: seq in sim.written(channel), timeout=timeout)

    # ---------------------------------------------------------------- emitting

    async def _emit(self, channel_name: str, build: Callable[[int], Any]) -> int | None:
        """Generate one frame of a sequence channel; its seq, or None if nobody listens."""
        channel = self._channel(channel_name)
        async with channel.lock:
            targets = self.subscribers(channel_name)
            if not targets:
                return None
            channel.last_assigned += 1
            seq = channel.last_assigned
            raw = orjson.dumps(build(seq))
            kind, data = ("bytes", raw) if self.binary_frames else ("text", raw.decode())
            for conn in targets:
                await conn.enqueue(Outgoing(kind, data, channel_name, seq, seq))
            return seq

    async def _emit_many(
        self, channel_name: str, count: int, build: Callable[[int], Any]
    ) -> list[int]:
        seqs = []
        for _ in range(count):
            seq = await self._emit(channel_name, build)
            if seq is not None:
                seqs.append(seq)
        return seqs

    async def emit_orders(self, count: int = 1) -> list[int]:
        """Send ``count`` ``sor`` frames to order subscribers; the seqs sent."""
        return await self._emit_many(
            "orders", count, lambda seq: frames.order_frame(seq, _now_ms())
        )

    async def emit_pnl(self, count: int = 1) -> list[int]:
        """Send ``count`` ``spl`` frames to PnL subscribers; the seqs sent."""
        return await self._emit_many("pnl", count, frames.pnl_frame)

    async def emit_trades(self, count: int = 1) -> list[int]:
        """Send ``count`` ``str`` frames to trade subscribers; the seqs sent."""
        return await self._emit_many(
            "trades", count, lambda seq: frames.trade_frame(seq, _now_ms())
        )

    async def emit_marketdata(self, conid: int, count: int = 1) -> list[int]:
        """Send ``count`` ``smd+<conid>`` frames to that conid's subscribers; the seqs sent."""
        entry = self._marketdata.get(conid)
        if entry is None:
            return []

        def build(seq: int) -> dict[str, Any]:
            return frames.marketdata_frame(
                conid, seq, _now_ms(), server_id=entry.server_id, fields=entry.fields
            )

        return await self._emit_many(frames.marketdata_channel(conid), count, build)

    async def emit(self, channel: str, count: int = 1, *, conid: int | None = None) -> list[int]:
        """Dispatch to ``emit_<channel>``; ``conid`` is required for ``marketdata``."""
        if channel == "orders":
            return await self.emit_orders(count)
        if channel == "pnl":
            return await self.emit_pnl(count)
        if channel == "trades":
            return await self.emit_trades(count)
        if channel == "marketdata":
            if conid is None:
                raise ValueError("emit('marketdata') needs a conid")
            return await self.emit_marketdata(conid, count)
        raise ValueError(f"unknown channel {channel!r}; expected one of {STREAM_CHANNELS}")

    async def burst_marketdata(
        self, conid: int, count: int, *, chunk_bytes: int = _BURST_CHUNK_BYTES
    ) -> BurstResult:
        """Send ``count`` market-data frames for ``conid`` as fast as the sockets take them.

        All frames are encoded with wsproto into ``chunk_bytes``-sized buffers
        before the first byte is sent, so the send phase is pure ``send_all``.
        Returns once every target connection has written (or lost) the burst.
        Connections that have not subscribed ``conid`` get nothing.
        """
        channel_name = frames.marketdata_channel(conid)
        channel = self._channel(channel_name)
        entry = self._marketdata.get(conid)
        async with channel.lock:
            targets = self.subscribers(channel_name)
            if entry is None or not targets or count <= 0:
                return BurstResult(conid, channel_name, 0, 0, 0, None, None, 0.0, 0.0, 0.0, True)
            first = channel.last_assigned + 1
            channel.last_assigned += count
            started = time.perf_counter()
            chunks = self._encode_burst(conid, entry, first, count, chunk_bytes)
            encode_seconds = time.perf_counter() - started
            started = time.perf_counter()
            pending: list[tuple[WsConnection, list[Outgoing]]] = []
            for conn in targets:
                items = [
                    Outgoing(
                        "raw",
                        data,
                        channel_name,
                        chunk_first,
                        chunk_last,
                        chunk_last - chunk_first + 1,
                    )
                    for data, chunk_first, chunk_last in chunks
                ]
                items[-1].done = trio.Event()
                for item in items:
                    await conn.enqueue(item)
                pending.append((conn, items))
        for conn, items in pending:
            done = items[-1].done
            assert done is not None
            await _wait_any(done, conn.closed)
        send_seconds = time.perf_counter() - started
        total_bytes = sum(len(data) for data, _, _ in chunks)
        complete = all(item.written for _, items in pending for item in items)
        return BurstResult(
            conid=conid,
            channel=channel_name,
            connections=len(targets),
            frames=count,
            bytes=total_bytes,
            first_seq=first,
            last_seq=first + count - 1,
            encode_seconds=encode_seconds,
            send_seconds=send_seconds,
            frames_per_second=count * len(targets) / send_seconds if send_seconds > 0 else math.inf,
            complete=complete,
        )

    def _encode_burst(
        self, conid: int, entry: _MarketdataConid, first: int, count: int, chunk_bytes: int
    ) -> list[tuple[bytes, int, int]]:
        # No extension is ever negotiated (see httpserver.py), so a throwaway
        # server-side wsproto encoder produces exactly the bytes each
        # connection's own encoder would. An unmasked frame's header depends
        # only on opcode and payload length, so wsproto encodes one frame per
        # distinct length and its header is reused: ~1 µs a frame instead of ~6.
        encoder = WsProtocol(ConnectionType.SERVER)
        headers: dict[int, bytes] = {}
        binary = self.binary_frames
        now = _now_ms()
        chunks: list[tuple[bytes, int, int]] = []
        buffer = bytearray()
        chunk_first = first
        for seq in range(first, first + count):
            raw = orjson.dumps(
                frames.marketdata_frame(
                    conid, seq, now, server_id=entry.server_id, fields=entry.fields
                )
            )
            header = headers.get(len(raw))
            if header is None:
                message = BytesMessage(data=raw) if binary else TextMessage(data=raw.decode())
                encoded = encoder.send(message)
                header = headers[len(raw)] = encoded[: len(encoded) - len(raw)]
            buffer += header
            buffer += raw
            if len(buffer) >= chunk_bytes:
                chunks.append((bytes(buffer), chunk_first, seq))
                buffer.clear()
                chunk_first = seq + 1
        if buffer:
            chunks.append((bytes(buffer), chunk_first, first + count - 1))
        return chunks

    # ---------------------------------------------------------------- streaming

    def start_stream(self, rates: Mapping[str, float]) -> None:
        """Generate frames in the background at ``rates`` events/s per channel.

        Keys are ``orders``, ``pnl``, ``trades``, ``marketdata``; the
        ``marketdata`` rate applies to *each* conid some ready client has
        subscribed. Replaces any running generator; an empty mapping stops it.
        """
        clean: dict[str, float] = {}
        for channel, rate in rates.items():
            if channel not in STREAM_CHANNELS:
                raise ValueError(f"unknown channel {channel!r}; expected one of {STREAM_CHANNELS}")
            rate = float(rate)
            if not math.isfinite(rate) or rate < 0:
                raise ValueError(f"rate for {channel} must be a finite number >= 0, not {rate}")
            if rate > 0:
                clean[channel] = rate
        nursery = self._require_nursery()
        self.stop_stream()
        if not clean:
            return
        self._rates = clean
        scope = self._stream_scope = trio.CancelScope()
        nursery.start_soon(self._run_stream, clean, scope)
        self._notify()

    def stop_stream(self) -> None:
        """Stop the background generator (no-op if none is running)."""
        if self._stream_scope is not None:
            self._stream_scope.cancel()
            self._stream_scope = None
            self._rates = {}
            self._notify()

    async def _run_stream(self, rates: dict[str, float], scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for channel, rate in rates.items():
                    nursery.start_soon(self._stream_channel, channel, rate)

    async def _stream_channel(self, channel: str, rate: float) -> None:
        # Paced against an absolute schedule so sleep jitter does not lower the
        # rate; at high rates several frames go out per wake-up.
        start = trio.current_time()
        produced = 0
        most_at_once = max(1, math.ceil(rate))
        while True:
            due = int((trio.current_time() - start) * rate) - produced
            if due <= 0:
                await trio.sleep_until(start + (produced + 1) / rate)
                continue
            # More than a second behind (e.g. blocked by a slow client): skip
            # the backlog instead of bursting it out.
            produced += due
            for _ in range(min(due, most_at_once)):
                await self._stream_one(channel)

    async def _stream_one(self, channel: str) -> None:
        if channel != "marketdata":
            await self.emit(channel, 1)
            return
        conids = sorted({conid for conn in self.ready_connections() for conid in conn.marketdata})
        for conid in conids:
            await self.emit_marketdata(conid, 1)

    # ------------------------------------------------------------------ faults

    def _live_connections(self) -> list[WsConnection]:
        return [conn for conn in self._connections.values() if not conn.closing]

    async def _send_to_all(self, make_item: Callable[[], Outgoing]) -> int:
        count = 0
        for conn in self._live_connections():
            if await conn.enqueue(make_item()):
                count += 1
        return count

    async def inject(
        self, frame: Mapping[str, Any] | list[Any] | str | bytes, *, binary: bool = False
    ) -> int:
        """Send ``frame`` to every open WebSocket, ready or not; how many got it.

        A mapping/list is JSON-encoded; ``str`` is sent as text as-is; ``bytes``
        as a binary message. ``binary=True`` sends a mapping/str as binary too.
        Injected frames carry no seq and are not recorded in the ledger.
        """
        if isinstance(frame, bytes | bytearray):
            raw: bytes = bytes(frame)
            binary = True
        elif isinstance(frame, str):
            raw = frame.encode()
        else:
            raw = orjson.dumps(frame)
        if binary:
            return await self._send_to_all(lambda: Outgoing("bytes", raw))
        text = raw.decode()
        return await self._send_to_all(lambda: Outgoing("text", text))

    async def send_malformed(self) -> int:
        """Send a text frame that is not valid JSON (a truncated order frame)."""
        return await self._send_to_all(lambda: Outgoing("text", _MALFORMED_TEXT))

    async def send_binary(self, data: bytes | None = None) -> int:
        """Send a binary frame; by default a valid JSON ``ntf`` frame in a binary message."""
        payload = orjson.dumps(_BINARY_FRAME) if data is None else data
        return await self._send_to_all(lambda: Outgoing("bytes", payload))

    async def send_invalid_utf8(self, *, as_text: bool = False) -> int:
        """Send bytes that are not UTF-8.

        By default in a binary frame (legal WebSocket, undecodable payload). With
        ``as_text=True`` in a *text* frame, which breaks RFC 6455: a conforming
        client fails the connection with close code 1007.
        """
        if not as_text:
            return await self._send_to_all(lambda: Outgoing("bytes", _INVALID_UTF8))
        # wsproto refuses to build an invalid text frame, so build it by hand:
        # FIN + opcode 1, unmasked (server to client), 7-bit length.
        frame = bytes([0x81, len(_INVALID_UTF8)]) + _INVALID_UTF8
        return await self._send_to_all(lambda: Outgoing("raw", frame))

    async def send_auth_status(self, *, authenticated: bool) -> int:
        """Send an ``sts`` frame (``authenticated: false`` is the auth flap)."""
        return await self.inject(frames.auth_status_frame(authenticated=authenticated))

    async def drop_connections(
        self, mode: str = "abrupt", *, code: int = 1001, reason: str = ""
    ) -> int:
        """Drop every WebSocket; returns once all are closed.

        ``abrupt``: close TCP with no WebSocket close frame. ``reset``: the same,
        with a TCP RST instead of FIN. ``close``: a proper close handshake with
        ``code``/``reason`` (bounded by ``close_timeout``, then abrupt).
        """
        if mode not in DROP_MODES:
            raise ValueError(f"drop mode must be one of {DROP_MODES}, not {mode!r}")
        targets = list(self._connections.values())
        if mode == "close":
            async with trio.open_nursery() as nursery:
                for conn in targets:
                    nursery.start_soon(partial(conn.close_gracefully, code, reason))
        else:
            for conn in targets:
                conn.abort(f"dropped by simulator ({mode})", mode=mode)
            for conn in targets:
                await conn.closed.wait()
        return len(targets)

    def stall(self, seconds: float | None = None) -> None:
        """Keep sockets open but write nothing (no frames, no heartbeats).

        Lasts until :meth:`unstall`, or ``seconds`` if given. Frames already
        queued are written after the stall; new stream frames are not generated
        while stalled (no eligible receiver, so no seq is consumed).
        """
        self.stalled = True
        if self._unstalled.is_set():
            self._unstalled = trio.Event()
        self._cancel_timer("stall")
        if seconds is not None:
            self._start_timer("stall", seconds, self.unstall)
        self._notify()

    def unstall(self) -> None:
        """End a stall; queued frames and heartbeats resume."""
        self._cancel_timer("stall")
        self.stalled = False
        self._unstalled.set()
        self._notify()

    def set_authenticated(self, authenticated: bool) -> None:
        """Turn REST auth on/off: off makes tickle, auth/status and WS handshakes answer 401."""
        self.authenticated = authenticated
        self._notify()

    def set_slow(self, delay: float) -> None:
        """Trickle mode: wait ``delay`` seconds before each frame on every socket (0: off)."""
        if delay < 0 or not math.isfinite(delay):
            raise ValueError("slow delay must be a finite number >= 0")
        self.slow_delay = delay
        self._notify()

    def configure(
        self,
        *,
        heartbeat_interval: float | None = None,
        ready_delay: float | None = None,
        binary_frames: bool | None = None,
        send_timeout: float | None = None,
    ) -> None:
        """Change settings at run time; a new heartbeat interval applies at once."""
        for name, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("ready_delay", ready_delay),
            ("send_timeout", send_timeout),
        ):
            if value is not None and (value < 0 or not math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0")
        if heartbeat_interval is not None:
            self.heartbeat_interval = heartbeat_interval
        if ready_delay is not None:
            self.ready_delay = ready_delay
        if binary_frames is not None:
            self.binary_frames = binary_frames
        if send_timeout is not None:
            self.send_timeout = send_timeout
        self._config_changed.set()
        self._config_changed = trio.Event()
        self._notify()

    async def restart(self, *, down_for: float = 0.0) -> str:
        """Simulate a gateway restart: new session id, every socket dropped abruptly.

        For ``down_for`` seconds afterwards REST and WebSocket answer 503. A
        stall is cleared (a restarted gateway is not stalled); slow mode, auth
        and seq counters are kept. Returns the new session id.
        """
        self.session = frames.new_session_id()
        self.restarts += 1
        self.unstall()
        self._cancel_timer("down")
        if down_for > 0:
            self.down = True
            self._start_timer("down", down_for, self._come_up)
        else:
            self.down = False
        await self.drop_connections("abrupt")
        self._notify()
        return self.session

    def _come_up(self) -> None:
        self.down = False
        self._notify()

    def _start_timer(self, name: str, seconds: float, action: Callable[[], None]) -> None:
        scope = self._timers[name] = trio.CancelScope()

        async def fire() -> None:
            with scope:
                await trio.sleep(seconds)
                # Forget the scope first: the action may cancel this timer by name.
                self._timers.pop(name, None)
                action()

        self._require_nursery().start_soon(fire)

    def _cancel_timer(self, name: str) -> None:
        scope = self._timers.pop(name, None)
        if scope is not None:
            scope.cancel()


@asynccontextmanager
async def open_simulator(**options: Any) -> AsyncIterator[GatewaySimulator]:
    """Run a :class:`GatewaySimulator` for the body of an ``async with``.

    ``options`` are the constructor's keyword arguments. The simulator is
    listening when the body starts and fully stopped when the block exits.
    """
    sim = GatewaySimulator(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        try:
            yield sim
        finally:
            sim.stop()
