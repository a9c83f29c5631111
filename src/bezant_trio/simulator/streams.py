"""The simulator's data streams: sequence channels, emitting, bursts, the background generator.

:class:`StreamsMixin` is the part of
:class:`~bezant_trio.simulator.gateway.GatewaySimulator` that generates the
gateway's data frames (orders, PnL, trades, market data) and keeps the
per-channel ledger of what reached a socket.

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
never reset, not even by a restart, so that ledger stays comparable across
reconnects.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import trio
from wsproto.connection import Connection as WsProtocol
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, TextMessage

from bezant_trio.simulator import frames
from bezant_trio.simulator.connection import Outgoing, WsConnection
from bezant_trio.simulator.core import SimulatorCore
from bezant_trio.simulator.ledger import SeqRanges

__all__ = ["STREAM_CHANNELS", "BurstResult", "StreamsMixin"]

#: Channel names accepted by ``emit``, ``start_stream`` and ``/sim/emit/{channel}``.
STREAM_CHANNELS = ("orders", "pnl", "trades", "marketdata")
_BURST_CHUNK_BYTES = 256 * 1024


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


class StreamsMixin(SimulatorCore):
    """Sequence channels and the frames generated from them (see the module docstring)."""

    def _init_streams(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self._marketdata: dict[int, _MarketdataConid] = {}
        self._dropped_before_ready = 0
        self._rates: dict[str, float] = {}
        self._stream_scope: trio.CancelScope | None = None

    # ----------------------------------------------------------------- channels

    def _record_written(self, channel: str, first: int, last: int) -> None:
        self._channel(channel).written.add(first, last)

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

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
        return channel

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
            "orders", count, lambda seq: frames.order_frame(seq, frames.now_ms())
        )

    async def emit_pnl(self, count: int = 1) -> list[int]:
        """Send ``count`` ``spl`` frames to PnL subscribers; the seqs sent."""
        return await self._emit_many("pnl", count, frames.pnl_frame)

    async def emit_trades(self, count: int = 1) -> list[int]:
        """Send ``count`` ``str`` frames to trade subscribers; the seqs sent."""
        return await self._emit_many(
            "trades", count, lambda seq: frames.trade_frame(seq, frames.now_ms())
        )

    async def emit_marketdata(self, conid: int, count: int = 1) -> list[int]:
        """Send ``count`` ``smd+<conid>`` frames to that conid's subscribers; the seqs sent."""
        entry = self._marketdata.get(conid)
        if entry is None:
            return []

        def build(seq: int) -> dict[str, Any]:
            return frames.marketdata_frame(
                conid, seq, frames.now_ms(), server_id=entry.server_id, fields=entry.fields
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
        now = frames.now_ms()
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
