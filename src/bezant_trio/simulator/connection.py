"""One simulated-gateway WebSocket connection: reader, writer, heartbeats, subscriptions.

The connection owns its transport after the HTTP upgrade. Everything it sends
goes through one bounded queue drained by one writer task, so a slow or dead
client can only ever block the code that enqueues for *it*, and only for
``send_timeout`` seconds before the connection is dropped as a slow consumer.
The writer is also the single place where "written to the socket" is recorded,
which is what the loss tests compare against.

Simulator-wide settings (stall, slow mode, heartbeat interval, session id) are
read from the owning :class:`~bezant_trio.simulator.gateway.GatewaySimulator`
through a handful of underscore methods; this module holds no global state.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from wsproto.connection import Connection as WsProtocol
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)

from bezant_trio.simulator import commands, frames
from bezant_trio.simulator.ledger import SeqRanges

if TYPE_CHECKING:
    from bezant_trio.simulator.gateway import GatewaySimulator

__all__ = ["Outgoing", "WsConnection"]

logger = logging.getLogger(__name__)

_RECEIVE_BYTES = 65536
# A writer batch is cut at whichever limit comes first: big enough that a
# stream of small frames costs one send syscall per ~64 KiB, small enough that
# slow-mode and stall checks still apply at a fine grain.
_BATCH_BYTES = 64 * 1024
_BATCH_FRAMES = 512
# Control items bypass the stall gate: a stalled gateway still answers pings
# and can still be told to close.
_CONTROL_KINDS = frozenset({"close", "pong"})


@dataclass(slots=True, eq=False)
class Outgoing:
    """One item in a connection's send queue.

    ``kind`` is ``text`` (``data`` is str), ``bytes`` (a binary message),
    ``raw`` (already-encoded WebSocket frame bytes, e.g. a burst chunk),
    ``close`` or ``pong``. Items with a ``channel`` carry the seqs
    ``first_seq..last_seq`` (``frames`` of them) and are recorded once written.
    """

    kind: str
    data: str | bytes = ""
    channel: str | None = None
    first_seq: int = 0
    last_seq: int = 0
    frames: int = 1
    marks_ready: bool = False
    code: int = 1000
    #: Set once the writer has processed the item (written, or skipped because
    #: the WebSocket was already closing).
    done: trio.Event | None = None
    written: bool = False


class WsConnection:
    """The server side of one client WebSocket (after a successful upgrade)."""

    def __init__(
        self,
        sim: GatewaySimulator,
        conn_id: int,
        stream: trio.abc.Stream,
        ws: WsProtocol,
        *,
        peer: str,
        tls: bool,
        session_ok: bool,
        queue_size: int,
        silent: bool = False,
    ) -> None:
        self.id = conn_id
        self.peer = peer
        self.tls = tls
        self.session_ok = session_ok
        #: True once the system/success frame went out; subscribes before that are dropped.
        self.ready = False
        #: True once the connection must receive nothing new (dropping, closing, closed).
        self.closing = False
        self.opened_at_ms = frames.now_ms()
        self.closed_at_ms: int | None = None
        self.close_reason: str | None = None
        self.drop_mode: str | None = None
        #: Accepted the upgrade and says nothing, ever (the real gateway with its
        #: upstream unreachable; corpus: behaviour.jsonl offline-websocket-silent).
        self.silent = silent
        #: Replaces the simulated gateway for this connection (a recorded
        #: session's player, ``replay.py``): runs instead of the ready sequence.
        self.script: Callable[[WsConnection], Awaitable[None]] | None = None
        self.account_channels: dict[str, bool] = dict.fromkeys(commands.ACCOUNT_CHANNELS, False)
        #: conid -> requested fields
        self.marketdata: dict[int, tuple[str, ...]] = {}
        #: conid -> trio time of the last smd: the gateway ends a market-data
        #: stream 10 minutes after it (corpus: smd-expires-after-10-minutes).
        self.marketdata_since: dict[int, float] = {}
        #: conid -> the field values this connection was last sent, so the next
        #: frame carries only what changed (corpus: smd-deltas-only-changed).
        self.quote_sent: dict[int, dict[str, Any]] = {}
        #: Accounts with an ``ssd`` / ``sld`` subscription.
        self.summary_accounts: set[str] = set()
        self.ledger_accounts: set[str] = set()
        #: Accounts whose summary has had its first (every-key) frame.
        self.summary_started: set[str] = set()
        #: conid -> serverId of its ``smh`` subscription.
        self.bars: dict[int, str] = {}
        #: account -> conid of its ``sbd`` price ladder.
        self.book: dict[str, int] = {}
        self.marketdata_expired = 0
        self.dropped_before_ready = 0
        self.commands_received = 0
        self.frames_written = 0
        self.bytes_written = 0
        self.written: dict[str, SeqRanges] = {}
        self.closed = trio.Event()

        self._sim = sim
        self._stream = stream
        # Abrupt drops close the TCP socket under TLS too, skipping close_notify.
        self._raw_stream: trio.abc.Stream = (
            stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        )
        self._ws = ws
        self._send_channel, self._receive_channel = trio.open_memory_channel[Outgoing](queue_size)
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._close_sent = trio.Event()
        # Fragments of the message being received (all str or all bytes).
        self._message_parts: list[Any] = []

    # ------------------------------------------------------------ subscriptions

    def wants(self, channel: str) -> bool:
        """Whether a frame of sequence ``channel`` should go to this connection now."""
        if self.closing or not self.ready:
            return False
        family, _, key = channel.partition(":")
        if not key:
            return self.account_channels.get(channel, False)
        if family == "marketdata":
            return self._marketdata_live(int(key))
        if family == "account_summary":
            return key in self.summary_accounts
        if family == "ledger":
            return key in self.ledger_accounts
        if family == "bars":
            return int(key) in self.bars
        if family == "book":
            return int(key) in self.book.values()
        return False

    def _marketdata_live(self, conid: int) -> bool:
        if conid not in self.marketdata:
            return False
        expiry = self._sim.marketdata_expiry
        if expiry is not None and trio.current_time() - self.marketdata_since[conid] >= expiry:
            # The gateway drops the stream without a word; the client must
            # send smd again (corpus: behaviour.jsonl smd-expires-after-10-minutes).
            self._drop_marketdata(conid)
            self.marketdata_expired += 1
            return False
        return True

    def _drop_marketdata(self, conid: int) -> bool:
        self.marketdata_since.pop(conid, None)
        self.quote_sent.pop(conid, None)
        return self.marketdata.pop(conid, None) is not None

    def describe(self) -> dict[str, Any]:
        """This connection's entry in ``GET /sim/state``."""
        return {
            "id": self.id,
            "peer": self.peer,
            "tls": self.tls,
            "session_ok": self.session_ok,
            "ready": self.ready,
            "silent": self.silent,
            "closing": self.closing,
            "opened_at_ms": self.opened_at_ms,
            "closed_at_ms": self.closed_at_ms,
            "close_reason": self.close_reason,
            "subscriptions": {
                **self.account_channels,
                "marketdata": sorted(
                    conid for conid in list(self.marketdata) if self._marketdata_live(conid)
                ),
                "account_summary": sorted(self.summary_accounts),
                "ledger": sorted(self.ledger_accounts),
                "bars": {str(conid): server_id for conid, server_id in sorted(self.bars.items())},
                "book": dict(sorted(self.book.items())),
            },
            "marketdata_expired": self.marketdata_expired,
            "marketdata_fields": {
                str(conid): list(fields) for conid, fields in sorted(self.marketdata.items())
            },
            "dropped_before_ready": self.dropped_before_ready,
            "commands_received": self.commands_received,
            "queued": self._send_channel.statistics().current_buffer_used,
            "frames_written": self.frames_written,
            "bytes_written": self.bytes_written,
            "written": {channel: seqs.ranges() for channel, seqs in sorted(self.written.items())},
        }

    # ------------------------------------------------------------------ sending

    async def enqueue(self, item: Outgoing) -> bool:
        """Queue ``item`` for the writer; False if the connection is going away.

        Waits at most ``send_timeout`` for queue space; a client that cannot
        drain its queue in that time is dropped, so it never wedges the caller.
        """
        if self.closing:
            return False
        return await self._put(item)

    async def send_json(self, frame: Any, **item_fields: Any) -> bool:
        """Queue one JSON frame, as text or binary per the simulator's setting."""
        return await self.enqueue(self._sim._json_item(frame, **item_fields))

    async def _put(self, item: Outgoing) -> bool:
        try:
            self._send_channel.send_nowait(item)
            return True
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        timeout = self._sim.send_timeout
        with trio.move_on_after(timeout):
            try:
                await self._send_channel.send(item)
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        self.abort(f"slow consumer: send queue stayed full for {timeout}s")
        return False

    def abort(self, reason: str, *, mode: str = "abrupt") -> None:
        """Close the transport now, without a WebSocket close handshake."""
        if mode not in ("abrupt", "reset"):
            raise ValueError(f"abort mode must be 'abrupt' or 'reset', not {mode!r}")
        if self.drop_mode is None or self.drop_mode == "close":
            self.drop_mode = mode
        self.close_reason = self.close_reason or reason
        self.closing = True
        self._scope.cancel()

    async def close_gracefully(self, code: int = 1001, reason: str = "") -> None:
        """Send a close frame, wait for the client's reply, then close TCP.

        Queued frames go out first (the close frame is queued behind them). If
        the handshake does not finish within ``close_timeout`` (a stalled or
        wedged client), the connection is aborted instead.
        """
        if self.closed.is_set():
            return
        self.drop_mode = self.drop_mode or "close"
        self.close_reason = self.close_reason or f"simulator closed ({code})"
        self.closing = True
        with trio.move_on_after(self._sim.close_timeout):
            await self._put(Outgoing("close", reason, code=code))
            await self.closed.wait()
            return
        self.abort("close handshake timed out")
        await self.closed.wait()

    # ------------------------------------------------------------------ serving

    async def serve(self) -> None:
        """Run the connection until it closes; always closes the transport."""
        self._sim._connection_opened(self)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._run_writer)
                    if self.silent:
                        pass  # not a word, not even "waiting for session"
                    elif self.script is not None:
                        nursery.start_soon(self.script, self)
                    elif self.session_ok:
                        nursery.start_soon(self._become_ready)
                    else:
                        await self.send_json(frames.waiting_for_session_frame())
                    await self._run_reader()
                    nursery.cancel_scope.cancel()
        finally:
            self.closing = True
            self.ready = False
            self.closed_at_ms = frames.now_ms()
            self._send_channel.close()
            with trio.CancelScope(shield=True):
                await self._close_transport()
            self._sim._connection_closed(self)
            self.closed.set()

    async def _close_transport(self) -> None:
        mode = self.drop_mode
        if mode == "reset":
            sock = getattr(self._raw_stream, "socket", None)
            if sock is not None:
                # SO_LINGER with a zero timeout turns close() into a TCP RST.
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError as exc:
                    logger.debug("connection %s: SO_LINGER failed: %r", self.id, exc)
        if mode in ("abrupt", "reset"):
            await trio.aclose_forcefully(self._raw_stream)
            return
        with trio.move_on_after(self._sim.close_timeout):
            try:
                await self._stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        # aclose() closes the transport even when it fails or is cancelled; this
        # only matters if the TLS stream never got that far.
        await trio.aclose_forcefully(self._raw_stream)

    async def _become_ready(self) -> None:
        """Send the ready sequence after ``ready_delay``, then heartbeat forever.

        Greeting, then ``act``, then ``sts`` (corpus: behaviour.jsonl
        ready-sequence). While the brokerage session is down there is no
        greeting, only ``sts`` saying so (corpus: sts-authenticated-false).
        """
        sim = self._sim
        await trio.sleep(sim.ready_delay)
        if not sim.brokerage_up:
            await self.send_json(frames.auth_status_frame(authenticated=False))
        else:
            await self.send_json(frames.system_ready_frame(), marks_ready=True)
            await self.send_json(frames.account_frame(sim.session))
            await self.send_json(
                frames.ready_status_frame(authenticated=True, competing=sim.competing)
            )
        await self._run_heartbeats()

    async def _run_heartbeats(self) -> None:
        sim = self._sim
        while True:
            changed = sim._config_changed
            interval = sim.heartbeat_interval
            if interval <= 0:
                await changed.wait()
                continue
            with trio.move_on_after(interval) as timer:
                # A configure() call restarts the timer with the new interval.
                await changed.wait()
            if timer.cancelled_caught and not sim.stalled:
                await self.send_json(frames.heartbeat_frame(frames.now_ms()))

    async def _run_writer(self) -> None:
        sim = self._sim
        receive = self._receive_channel
        try:
            while True:
                item = await receive.receive()
                if item.kind not in _CONTROL_KINDS:
                    await sim._wait_unstalled()
                delay = sim.slow_delay
                if delay > 0:
                    await trio.sleep(delay)
                batch = [item]
                size = len(item.data)
                # Slow mode sends one frame per delay, so it never batches.
                while delay <= 0 and size < _BATCH_BYTES and len(batch) < _BATCH_FRAMES:
                    try:
                        extra = receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    batch.append(extra)
                    size += len(extra.data)
                payload = self._encode(batch)
                if payload:
                    await self._stream.send_all(payload)
                self._record(batch, len(payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.close_reason = self.close_reason or f"write failed: {exc!r}"
            self._scope.cancel()

    def _encode(self, batch: list[Outgoing]) -> bytes:
        ws = self._ws
        out = bytearray()
        for item in batch:
            kind = item.kind
            if kind == "close":
                if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    out += ws.send(CloseConnection(code=item.code, reason=str(item.data) or None))
                    item.written = True
                continue
            if ws.state is not ConnectionState.OPEN:
                continue
            if kind == "text":
                assert isinstance(item.data, str)
                out += ws.send(TextMessage(data=item.data))
            elif kind == "bytes":
                assert isinstance(item.data, bytes)
                out += ws.send(BytesMessage(data=item.data))
            elif kind == "raw":
                assert isinstance(item.data, bytes)
                out += item.data
            elif kind == "pong":
                assert isinstance(item.data, bytes)
                out += ws.send(Pong(payload=item.data))
            else:
                raise ValueError(f"unknown outgoing kind {kind!r}")
            item.written = True
            if item.marks_ready:
                # Set before the bytes leave: a client answering the ready frame
                # must find the connection ready when its subscribe arrives.
                self.ready = True
        return bytes(out)

    def _record(self, batch: list[Outgoing], nbytes: int) -> None:
        self.bytes_written += nbytes
        for item in batch:
            if item.written:
                self.frames_written += item.frames
                if item.channel is not None:
                    seqs = self.written.get(item.channel)
                    if seqs is None:
                        seqs = self.written[item.channel] = SeqRanges()
                    seqs.add(item.first_seq, item.last_seq)
                    self._sim._record_written(item.channel, item.first_seq, item.last_seq)
                if item.kind == "close" and self._ws.state is ConnectionState.CLOSED:
                    self._close_sent.set()
            if item.done is not None:
                item.done.set()
        self._sim._notify()

    # ---------------------------------------------------------------- receiving

    async def _run_reader(self) -> None:
        try:
            while True:
                for event in self._ws.events():
                    if await self._on_event(event):
                        return
                if self._ws.state is ConnectionState.CLOSED:
                    return
                data = await self._stream.receive_some(_RECEIVE_BYTES)
                if not data:
                    self.close_reason = self.close_reason or "client closed TCP"
                    return
                self._ws.receive_data(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.close_reason = self.close_reason or f"read failed: {exc!r}"

    async def _on_event(self, event: Event) -> bool:
        """Handle one wsproto event; True when the connection is finished."""
        if isinstance(event, TextMessage | BytesMessage):
            self._message_parts.append(event.data)
            if event.message_finished:
                parts, self._message_parts = self._message_parts, []
                if isinstance(event, TextMessage):
                    await self._on_text("".join(parts))
                else:
                    size = sum(len(part) for part in parts)
                    self._sim._record_command(self, f"<binary {size} bytes>", "ignored")
        elif isinstance(event, Ping):
            if not self.silent:
                await self._put(Outgoing("pong", bytes(event.payload)))
        elif isinstance(event, CloseConnection):
            if self.silent:
                # The silent real gateway drops TCP instead of answering the
                # close (corpus: behaviour.jsonl offline-websocket-silent).
                self.close_reason = self.close_reason or "client closed; silent: no close reply"
                self.abort("client closed a silent connection")
                return True
            self.close_reason = self.close_reason or f"client closed WebSocket ({event.code})"
            self.closing = True
            if self._ws.state is ConnectionState.CLOSED:
                # The client answered our close frame: the handshake is done.
                return True
            # Either the client started the close, or wsproto reported a
            # protocol error (state still OPEN): answer with a close frame and
            # give the writer a moment to flush it.
            with trio.move_on_after(self._sim.close_timeout):
                await self._put(Outgoing("close", code=event.code))
                await self._close_sent.wait()
            return True
        return False

    async def _on_text(self, text: str) -> None:
        self.commands_received += 1
        command = commands.parse_command(text)
        result = await self._apply(command)
        self._sim._record_command(self, text, result)

    async def _apply(self, command: commands.Command) -> str:
        """Act on one client command; returns its result for the command log."""
        sim = self._sim
        if self.silent:
            return "ignored_silent"
        if self.script is not None and command.kind not in ("echo", "tic"):
            # A replayed session plays what was recorded, whatever is asked;
            # pings are still answered, so a client's drain barrier works.
            return "ignored_replay"
        if command.kind == "session":
            if self.session_ok:
                return "ignored"
            if command.session != sim.session:
                return "rejected_session"
            self.session_ok = True
            assert self._nursery is not None
            self._nursery.start_soon(self._become_ready)
            return "session"
        if command.kind == "echo":
            if not sim.answer_echo:
                return "ignored_no_echo"
            # The echo is the raw text "ech+hb", whatever the frame mode
            # (corpus: ws_system.jsonl echo-raw-text).
            await self.enqueue(Outgoing("text", frames.ECHO_TEXT))
            return "accepted"
        if command.kind == "tic":
            # Answered four times, identically (corpus: tic-answered-four-times).
            answer = frames.tic_frame(sim.session, frames.now_ms())
            for _ in range(sim.tic_answers):
                await self.send_json(answer)
            return "accepted"
        if command.is_subscription and not self.ready:
            # The gateway quirk the daemon must cope with: silently dropped.
            self.dropped_before_ready += 1
            sim._dropped_before_ready += 1
            return "dropped_before_ready"
        if command.is_subscription:
            assert command.channel is not None
            return await self._apply_subscription(command)
        return "unknown"

    async def _apply_subscription(self, command: commands.Command) -> str:
        sim = self._sim
        subscribe = command.kind == "subscribe"
        channel = command.channel
        if channel == "marketdata":
            conid = command.conid
            assert conid is not None
            if not subscribe:
                # No answer to umd (corpus: behaviour.jsonl umd-no-answer).
                return "accepted" if self._drop_marketdata(conid) else "not_subscribed"
            assert command.fields is not None
            if not self._marketdata_live(conid):
                self.quote_sent.pop(conid, None)  # a new subscription starts with a full frame
            self.marketdata[conid] = command.fields
            self.marketdata_since[conid] = trio.current_time()
            sim._register_marketdata(conid, command.fields)
            return "accepted"
        if channel in ("account_summary", "ledger"):
            account = command.account
            assert account is not None
            accounts = (
                self.summary_accounts if channel == "account_summary" else self.ledger_accounts
            )
            if subscribe:
                accounts.add(account)
                if channel == "account_summary":
                    self.summary_started.discard(account)  # the next frame carries every key
                sim._notify()
                return "accepted"
            if account not in accounts:
                return "not_subscribed"
            accounts.discard(account)
            # Answered once (corpus: unsubscribed-from-summary / -ledger).
            await self.send_json(
                frames.summary_unsubscribed_frame()
                if channel == "account_summary"
                else frames.ledger_unsubscribed_frame()
            )
            return "accepted"
        if channel == "bars":
            if subscribe:
                conid = command.conid
                assert conid is not None
                self.bars[conid] = sim._new_bars_server_id()
                # smh answers once with the history (corpus: smh-answers-once).
                await sim._send_bars_answer(self, conid)
                return "accepted"
            found = [c for c, server_id in self.bars.items() if server_id == command.server_id]
            if not found:
                return "not_subscribed"
            del self.bars[found[0]]
            assert command.server_id is not None
            await self.send_json(frames.unsubscribed_frame(command.server_id))
            return "accepted"
        if channel == "book":
            account = command.account
            assert account is not None
            if subscribe:
                assert command.conid is not None
                self.book[account] = command.conid
                sim._notify()
                return "accepted"
            # No answer to ubd (corpus: IBKR Campus, Cancel Price Ladder Subscription).
            return "accepted" if self.book.pop(account, None) is not None else "not_subscribed"
        self.account_channels[channel] = subscribe
        return "accepted"
