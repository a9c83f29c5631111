"""The simulator's data streams: sequence channels, emitting, bursts, the background generator.

:class:`StreamsMixin` is the part of
:class:`~bezant_trio.simulator.gateway.GatewaySimulator` that generates the
gateway's data frames (orders, PnL, trades, market data, account summary,
ledger, bars, price ladder), keeps the per-channel ledger of what reached a
socket, and records every generated frame in the account's truth
(``truth.py``) that the REST API answers from.

Market data goes out as the real gateway sends it: a subscription's first
frame carries every subscribed field, later ones only the fields that changed
since that connection's previous frame (corpus: behaviour.jsonl
smd-deltas-only-changed), so the bytes of one seq can differ per connection.

Sequence numbers (the loss-accounting contract)
-----------------------------------------------
Every frame generated from a stream carries ``seq``: inside each order dict,
inside the PnL row, inside each trade dict, top-level in the others. Seqs are
per channel (``orders``, ``pnl``, ``trades``, ``marketdata:<conid>``,
``account_summary:<acct>``, ``ledger:<acct>``, ``bars:<conid>``,
``book:<conid>``) and
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
from bezant_trio.simulator.truth import AccountTruth
from bezant_trio.util import wait_any

__all__ = ["STREAM_CHANNELS", "BurstResult", "StreamsMixin"]

#: Channel names accepted by ``emit``, ``start_stream`` and ``/sim/emit/{channel}``.
STREAM_CHANNELS = (
    "orders",
    "pnl",
    "trades",
    "marketdata",
    "account_summary",
    "ledger",
    "bars",
    "book",
)
#: Channels whose frames are per instrument (``conid``) or per account.
_PER_CONID = ("marketdata", "bars", "book")
_PER_ACCOUNT = ("account_summary", "ledger")
#: Bars in the single answer to ``smh`` (corpus: ws_marketdata.jsonl smh-doc has 23).
_BARS_IN_ANSWER = 24
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


@dataclass(frozen=True, slots=True)
class _Twice:
    """A frame to send twice (the second copy carries no seq accounting)."""

    frame: dict[str, Any]


class _Channel:
    __slots__ = ("last_assigned", "lock", "written")

    def __init__(self) -> None:
        self.last_assigned = 0
        self.written = SeqRanges()
        # Held from seq assignment until the frame is queued on every target,
        # so concurrent emitters (HTTP, stream generator) cannot reorder seqs.
        self.lock = trio.Lock()


class StreamsMixin(SimulatorCore):
    """Sequence channels and the frames generated from them (see the module docstring)."""

    def _init_streams(
        self, *, marketdata_expiry: float | None, duplicate_first_quote: bool
    ) -> None:
        self._channels: dict[str, _Channel] = {}
        self._marketdata: dict[int, _MarketdataConid] = {}
        self._dropped_before_ready = 0
        self._rates: dict[str, float] = {}
        self._stream_scope: trio.CancelScope | None = None
        self._bars_server_ids = 0
        #: Every order, fill, PnL row and quote generated so far (the REST answers).
        self.truth = AccountTruth()
        #: Seconds after an ``smd`` that the gateway ends the stream; None: never.
        self.marketdata_expiry = marketdata_expiry
        #: Send a subscription's first quote twice, as real gateways were seen
        #: doing (corpus: behaviour.jsonl smd-first-frame-twice); off by default
        #: because every per-conid count in the tests would be off by one.
        self.duplicate_first_quote = duplicate_first_quote

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

    def _new_bars_server_id(self) -> str:
        # smh answers carry a numeric serverId (corpus: ws_marketdata.jsonl smh-doc).
        self._bars_server_ids += 1
        return str(341114 + self._bars_server_ids)

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

    async def _emit(
        self,
        channel_name: str,
        build: Callable[[int], Any],
        per_connection: Callable[[WsConnection, int], Any] | None = None,
    ) -> int | None:
        """Generate one frame of a sequence channel; its seq, or None if nobody listens.

        ``build(seq)`` is the frame (and what the account's truth records);
        ``per_connection(conn, seq)``, when given, is what each connection is
        sent instead (market-data deltas, a first summary frame).
        """
        channel = self._channel(channel_name)
        async with channel.lock:
            targets = self.subscribers(channel_name)
            if not targets:
                return None
            channel.last_assigned += 1
            seq = channel.last_assigned
            frame = build(seq)
            self.truth.record_frame(frame)
            if per_connection is None:
                raw = orjson.dumps(frame)
                kind, data = ("bytes", raw) if self.binary_frames else ("text", raw.decode())
                for conn in targets:
                    await conn.enqueue(Outgoing(kind, data, channel_name, seq, seq))
                return seq
            for conn in targets:
                sent = per_connection(conn, seq)
                copies = 1
                if isinstance(sent, _Twice):
                    sent, copies = sent.frame, 2
                item = self._json_item(sent, channel=channel_name, first_seq=seq, last_seq=seq)
                await conn.enqueue(item)
                if copies == 2:
                    await conn.enqueue(self._json_item(sent))
            return seq

    async def _emit_many(
        self,
        channel_name: str,
        count: int,
        build: Callable[[int], Any],
        per_connection: Callable[[WsConnection, int], Any] | None = None,
    ) -> list[int]:
        seqs = []
        for _ in range(count):
            seq = await self._emit(channel_name, build, per_connection)
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
        """Send ``count`` ``smd+<conid>`` frames to that conid's subscribers; the seqs sent.

        Each connection gets a full first frame, then only what changed for it.
        """
        entry = self._marketdata.get(conid)
        if entry is None:
            return []
        state: dict[str, Any] = {}

        def build(seq: int) -> dict[str, Any]:
            # The full frame: what the account's truth records for the conid.
            state["now"] = now = frames.now_ms()
            state["values"] = values = frames.marketdata_values(seq)
            full = {field: values.get(field, "0") for field in entry.fields}
            full.setdefault("6509", values["6509"])
            return frames.quote_frame(conid, seq, now, server_id=entry.server_id, values=full)

        def per_connection(conn: WsConnection, seq: int) -> dict[str, Any]:
            values = state["values"]
            wanted = conn.marketdata.get(conid, entry.fields)
            current = {field: values.get(field, "0") for field in wanted}
            current.setdefault("6509", values["6509"])
            sent = conn.quote_sent.get(conid)
            if sent is None:
                conn.quote_sent[conid] = changed = dict(current)
                if self.duplicate_first_quote:
                    return _Twice(
                        frames.quote_frame(
                            conid, seq, state["now"], server_id=entry.server_id, values=changed
                        )
                    )
            else:
                changed = {
                    field: value for field, value in current.items() if sent.get(field) != value
                }
                sent.update(changed)
            return frames.quote_frame(
                conid, seq, state["now"], server_id=entry.server_id, values=changed
            )

        return await self._emit_many(frames.marketdata_channel(conid), count, build, per_connection)

    async def emit_account_summary(
        self, count: int = 1, *, account: str = frames.ACCOUNT
    ) -> list[int]:
        """Send ``count`` ``ssd+<account>`` frames; a subscription's first carries every key."""
        now = frames.now_ms

        def per_connection(conn: WsConnection, seq: int) -> dict[str, Any]:
            first = account not in conn.summary_started
            conn.summary_started.add(account)
            return frames.summary_frame(account, seq, now(), first=first)

        return await self._emit_many(
            frames.summary_channel(account),
            count,
            lambda seq: frames.summary_frame(account, seq, now(), first=True),
            per_connection,
        )

    async def emit_ledger(self, count: int = 1, *, account: str = frames.ACCOUNT) -> list[int]:
        """Send ``count`` ``sld+<account>`` frames (unchanged currencies are blank)."""
        return await self._emit_many(
            frames.ledger_channel(account),
            count,
            lambda seq: frames.ledger_frame(account, seq, frames.now_ms()),
        )

    async def emit_bars(self, conid: int, count: int = 1) -> list[int]:
        """Send ``count`` ``smh+<conid>`` frames with the newest bar to its subscribers."""

        def build(seq: int) -> dict[str, Any]:
            return frames.bars_frame(conid, seq, frames.now_ms(), server_id="", bars=1)

        def per_connection(conn: WsConnection, seq: int) -> dict[str, Any]:
            return frames.bars_frame(
                conid, seq, frames.now_ms(), server_id=conn.bars.get(conid, ""), bars=1
            )

        return await self._emit_many(frames.bars_channel(conid), count, build, per_connection)

    async def _send_bars_answer(self, conn: WsConnection, conid: int) -> None:
        """The one answer to ``smh``: the history, to the subscribing connection only."""
        channel_name = frames.bars_channel(conid)
        channel = self._channel(channel_name)
        async with channel.lock:
            channel.last_assigned += 1
            seq = channel.last_assigned
            frame = frames.bars_frame(
                conid, seq, frames.now_ms(), server_id=conn.bars[conid], bars=_BARS_IN_ANSWER
            )
            await conn.enqueue(
                self._json_item(frame, channel=channel_name, first_seq=seq, last_seq=seq)
            )

    async def emit_book(self, conid: int, count: int = 1) -> list[int]:
        """Send ``count`` ``sbd+<acct>+<conid>`` price ladders to its subscribers."""

        def per_connection(conn: WsConnection, seq: int) -> dict[str, Any]:
            account = next((a for a, c in conn.book.items() if c == conid), frames.ACCOUNT)
            return frames.book_frame(account, conid, seq)

        return await self._emit_many(
            frames.book_channel(conid),
            count,
            lambda seq: frames.book_frame(frames.ACCOUNT, conid, seq),
            per_connection,
        )

    async def emit(
        self,
        channel: str,
        count: int = 1,
        *,
        conid: int | None = None,
        account: str | None = None,
    ) -> list[int]:
        """Dispatch to ``emit_<channel>``; per-instrument channels need a ``conid``."""
        if channel in _PER_CONID and conid is None:
            raise ValueError(f"emit({channel!r}) needs a conid")
        if channel == "orders":
            return await self.emit_orders(count)
        if channel == "pnl":
            return await self.emit_pnl(count)
        if channel == "trades":
            return await self.emit_trades(count)
        if channel == "marketdata":
            assert conid is not None
            return await self.emit_marketdata(conid, count)
        if channel == "bars":
            assert conid is not None
            return await self.emit_bars(conid, count)
        if channel == "book":
            assert conid is not None
            return await self.emit_book(conid, count)
        if channel == "account_summary":
            return await self.emit_account_summary(count, account=account or frames.ACCOUNT)
        if channel == "ledger":
            return await self.emit_ledger(count, account=account or frames.ACCOUNT)
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
            # Later deltas to these connections are relative to the burst's
            # last values; the account's truth holds them too.
            last = frames.marketdata_frame(
                conid,
                first + count - 1,
                frames.now_ms(),
                server_id=entry.server_id,
                fields=entry.fields,
            )
            self.truth.record_frame(last)
            final = {field: last[field] for field in (*entry.fields, "6509")}
            for conn in targets:
                conn.quote_sent[conid] = dict(final)
        for conn, items in pending:
            done = items[-1].done
            assert done is not None
            await wait_any((done, conn.closed))
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
        # The burst's first frame is full (a valid frame whatever a connection
        # was sent before), the rest carry what changed since the previous one.
        encoder = WsProtocol(ConnectionType.SERVER)
        headers: dict[int, bytes] = {}
        binary = self.binary_frames
        now = frames.now_ms()
        chunks: list[tuple[bytes, int, int]] = []
        buffer = bytearray()
        chunk_first = first
        fields = (*entry.fields, "6509") if "6509" not in entry.fields else entry.fields
        previous: dict[str, Any] = {}
        for seq in range(first, first + count):
            values = frames.marketdata_values(seq)
            current = {field: values.get(field, "0") for field in fields}
            changed = {k: v for k, v in current.items() if previous.get(k) != v}
            previous = current
            raw = orjson.dumps(
                frames.quote_frame(conid, seq, now, server_id=entry.server_id, values=changed)
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

        Keys are the :data:`STREAM_CHANNELS`; the rate of a per-instrument or
        per-account channel (``marketdata``, ``bars``, ``book``,
        ``account_summary``, ``ledger``) applies to *each* conid or account
        some ready client has subscribed. Replaces any running generator; an
        empty mapping stops it.
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
        ready = self.ready_connections()
        if channel == "marketdata":
            for conid in sorted({c for conn in ready for c in conn.marketdata}):
                await self.emit_marketdata(conid, 1)
        elif channel == "bars":
            for conid in sorted({c for conn in ready for c in conn.bars}):
                await self.emit_bars(conid, 1)
        elif channel == "book":
            for conid in sorted({c for conn in ready for c in conn.book.values()}):
                await self.emit_book(conid, 1)
        elif channel == "account_summary":
            for account in sorted({a for conn in ready for a in conn.summary_accounts}):
                await self.emit_account_summary(1, account=account)
        elif channel == "ledger":
            for account in sorted({a for conn in ready for a in conn.ledger_accounts}):
                await self.emit_ledger(1, account=account)
        else:
            await self.emit(channel, 1)
