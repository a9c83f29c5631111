"""The gateway connector: one WebSocket, reconnected forever, feeding the hub.

Connect → wait for the ready frame → subscribe → dispatch. Each connection
lives in its own cancel scope and nursery (reader, keepalive, tickle,
heartbeat watchdog, market-data wants); anything that ends the connection
cancels that scope with a reason. The loop then backs off (exponential with
jitter), reconnects, bumps ``reset_epoch`` and injects gap events.

Reads its settings straight from the ``gateway`` and ``events`` config
sections, and the market-data demand from :class:`~bezant_trio.wants.Wants`.
Imports the hub; never imports ``http`` or ``sinks``.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
import trio

from bezant_trio.cpapi.frames import (
    Frame,
    FrameKind,
    classify,
)
from bezant_trio.cpapi.resync import Resyncer
from bezant_trio.cpapi.session import (
    GatewayCompeting,
    GatewayError,
    GatewayNeedsLogin,
    GatewaySession,
    GatewaySessionDown,
    SessionStatus,
)
from bezant_trio.cpapi.subscriptions import BARS_LIMIT, BOOK_LIMIT, Subscriptions
from bezant_trio.cpapi.transport import (
    HandshakeFailed,
    Transport,
    TransportClosed,
    open_transport,
)
from bezant_trio.model import GapReason, format_ts
from bezant_trio.store.hub import Hub
from bezant_trio.util import backoff_delay, describe, wait_any
from bezant_trio.wants import Wants

if TYPE_CHECKING:
    from bezant_trio.config import EventsConfig, GatewayConfig

__all__ = ["Connector"]

log = logging.getLogger(__name__)

#: ``ech+hb`` goes out this often; the gateway wants one at least every 60 s.
KEEPALIVE_INTERVAL = 30.0
#: A drain gives up after this many seconds without a frame from the gateway...
DRAIN_TIMEOUT = 2.0
#: ... or after this many seconds in all, even if frames keep coming.
DRAIN_MAX = 10.0
#: Most seconds for TCP, TLS and the WebSocket upgrade together.
CONNECT_TIMEOUT = 10.0
#: States that say why the last attempt failed; kept (not "connecting") while retrying.
_FAILED_STATES = frozenset(
    {"needs_login", "session_down", "competing", "gateway_unreachable", "gateway_silent"}
)


class _ConnectionEnded(Exception):
    pass


class Connector:
    """Holds the gateway WebSocket open and publishes every frame into ``hub``."""

    def __init__(
        self,
        hub: Hub,
        *,
        gateway: GatewayConfig,
        events: EventsConfig,
        wants: Wants,
        bars: Wants | None = None,
        book: Wants | None = None,
        seed: int | None = None,
    ) -> None:
        self.hub = hub
        self.gateway = gateway
        self.events = events
        #: Market-data demand (``marketdata:<conid>``); ``bars`` and ``book`` likewise.
        self.wants = wants
        self.bars = bars if bars is not None else Wants(BARS_LIMIT, what="streaming-bars")
        self.book = book if book is not None else Wants(BOOK_LIMIT, what="price-ladder")
        self._rng = random.Random(seed)
        #: True once the gateway's ready frame came on the current socket.
        self.connected = False
        self.reconnect_count = 0
        self.connect_count = 0
        self.last_error: str | None = None
        self.state = "starting"
        self.next_retry_in: float | None = None
        self.frames: Counter[str] = Counter()
        #: The channels and per-instrument streams asked of the gateway.
        self.subscriptions = Subscriptions(
            hub,
            events,
            marketdata=self.wants,
            bars=self.bars,
            book=self.book,
            accounts=lambda: self.accounts,
        )
        #: Market-data conids subscribed on the current socket.
        self.subscribed_conids = self.subscriptions.marketdata
        self._last_frame = 0.0  # trio clock
        #: time.time() minus trio.current_time(), to report the last frame's wall time.
        self._wall_offset = 0.0
        self._ready_event = trio.Event()
        self._subscribed_early = False
        self._disconnected_at: str | None = None
        self._end_reason: str | None = None
        self._conn_scope: trio.CancelScope | None = None
        self._conn_nursery: trio.Nursery | None = None
        self._ws: Transport | None = None
        self._barrier: trio.Event | None = None
        self._conn_ended = trio.Event()
        self._stopping = False
        self._ready = False
        #: Whether the current attempt's WebSocket opened (a silent one did).
        self._opened = False
        #: Whether any frame has arrived in this process (``last_message_at``).
        self._frame_seen = False
        #: Connection attempts since start, and the failed ones by reason.
        self.connect_attempts = 0
        self.failures: Counter[str] = Counter()
        #: What the gateway said of itself (``_status.gateway``), None where it has not.
        self.gateway_info: dict[str, Any] = {
            "username": None,
            "is_paper": None,
            "server_name": None,
            "server_version": None,
            "authenticated": None,
            "competing": None,
        }
        #: When and why the last connection that had been ready ended.
        self.last_disconnect: dict[str, str] | None = None
        #: The accounts ``/iserver/accounts`` listed at the last connect.
        self.accounts: list[str] = []
        #: Fetches the REST truth after every gap (built by run() with its session).
        self.resyncer: Resyncer | None = None

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The connector's part of ``/events/_status`` (docs/api.md, "Gateway states")."""
        subscribed: list[str] = []
        if self.connected:  # only what the gateway can have taken: sent after its ready frame
            subscribed = [*self.events.channels, *self.subscriptions.topics()]
        return {
            "connected": self.connected,
            "state": self.state,
            "last_message_at": (
                format_ts(self._wall_offset + self._last_frame) if self._frame_seen else None
            ),
            "reconnect_count": self.reconnect_count,
            "connect_attempts": self.connect_attempts,
            "failed_attempts": dict(sorted(self.failures.items())),
            "last_error": self.last_error,
            "last_disconnect": self.last_disconnect,
            "next_retry_in": self.next_retry_in,
            "frames": {str(kind): count for kind, count in sorted(self.frames.items())},
            "topics_subscribed": sorted(subscribed),
            "gateway": dict(self.gateway_info),
        }

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        if self.connected:
            return f"connected, epoch {self.hub.reset_epoch}, {len(self.hub.topics())} topics"
        if self.next_retry_in is not None:
            return f"{self.state}, retrying in {self.next_retry_in:.0f} s: {self.last_error}"
        return f"{self.state}: {self.last_error or 'connecting'}"

    @property
    def receiving(self) -> bool:
        """Connected, and a frame came within ``events.heartbeat_timeout``."""
        silent_for = trio.current_time() - self._last_frame
        return self.connected and silent_for < self.events.heartbeat_timeout

    # ------------------------------------------------------------------- run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and reconnect until cancelled."""
        session = GatewaySession(
            self.gateway.url,
            verify_tls=self.gateway.verify_tls,
            timeout=self.gateway.request_timeout,
        )
        resyncer = self.resyncer = Resyncer(
            self.hub, session, self.events.channels if self.events.resync else ()
        )
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(resyncer.run)
                await self._connect_forever(session)
                nursery.cancel_scope.cancel()  # stopping: a resync in flight is not needed
        finally:
            self.connected = False
            with trio.CancelScope(shield=True):
                await session.aclose()

    async def _connect_forever(self, session: GatewaySession) -> None:
        attempt = 0
        while True:
            if self.state not in _FAILED_STATES:
                self.state = "connecting"
            healthy = False
            started = trio.current_time()
            self.connect_attempts += 1
            try:
                healthy = await self._connect_once(session)
            except GatewayError as exc:
                self._record_failure(exc.state, exc.reason, str(exc))
            except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
                self._record_failure("gateway_unreachable", "network", f"network: {describe(exc)}")
            except HandshakeFailed as exc:
                self._record_failure(
                    "gateway_unreachable", "handshake", f"websocket handshake failed: {exc}"
                )
            except _ConnectionEnded as exc:
                if self._ready:
                    self.last_error = str(exc)
                    self.last_disconnect = {"at": format_ts(), "reason": str(exc)}
                    self.state = "connecting"
                else:
                    self._record_failure(self._silent_state(), "no_ready", str(exc))
            if self.connected:
                self._mark_disconnected()
            if self._stopping:
                self.state = "stopped"
                return
            lived = trio.current_time() - started
            # A connection that reached ready and stayed up is not flapping.
            attempt = 1 if healthy and lived >= self.events.backoff.max else attempt + 1
            delay = backoff_delay(
                attempt, self.events.backoff.min, self.events.backoff.max, self._rng
            )
            self.next_retry_in = round(delay, 3)
            log.warning("gateway %s (%s); retrying in %.2f s", self.state, self.last_error, delay)
            await trio.sleep(delay)
            self.next_retry_in = None

    def _record_failure(self, state: str, reason: str, message: str) -> None:
        """A failed attempt: the state it implies, a metric label, and the words for a user."""
        self.state = state
        self.failures[reason] += 1
        self.last_error = message

    def _silent_state(self) -> str:
        # A socket that opened but never sent the ready frame is a silent gateway.
        return "gateway_silent" if self._opened else self.state

    def _mark_disconnected(self) -> None:
        self.connected = False
        self._disconnected_at = format_ts()

    def end_connection(self, reason: str) -> None:
        """Cancel the current connection's scope; the loop reconnects."""
        if self._conn_scope is not None and self._end_reason is None:
            self._end_reason = reason
            self._conn_scope.cancel()

    def drain_connection(self, reason: str) -> None:
        """End a connection that still works without dropping what is in flight.

        Cancelling the scope at once would lose the frames the gateway has
        already sent that are still on the wire or in the socket buffers (and,
        with the trio-websocket client, its queue, which it drops on a local
        close). Instead: unsubscribe everything, send an ``ech+hb`` barrier, keep
        reading until its echo comes back (the gateway answers in order, so
        nothing subscribed can follow it), while frames keep arriving (at most
        ``DRAIN_TIMEOUT`` of silence, ``DRAIN_MAX`` in all); then end.
        """
        if self._conn_nursery is None or self._ws is None or self._barrier is not None:
            return
        if self._conn_scope is None or self._conn_scope.cancel_called:
            return  # already ending: nothing left to drain
        self._barrier = trio.Event()
        try:
            self._conn_nursery.start_soon(self._drain, self._ws, reason)
        except RuntimeError:  # the connection's tasks have all ended meanwhile
            self.end_connection(reason)

    async def _drain(self, ws: Transport, reason: str) -> None:
        assert self._barrier is not None
        with trio.move_on_after(DRAIN_MAX):
            await self.subscriptions.unsubscribe_all(partial(self._send, ws))
            await self._send(ws, "ech+hb")
            # A burst already on its way may take longer than DRAIN_TIMEOUT to
            # read: wait while it still makes progress.
            started = trio.current_time()
            while trio.current_time() < max(started, self._last_frame) + DRAIN_TIMEOUT:
                with trio.move_on_at(max(started, self._last_frame) + DRAIN_TIMEOUT):
                    await self._barrier.wait()
                    break
        self.end_connection(reason)

    async def stop(self, timeout: float = DRAIN_MAX) -> None:
        """Drain the current connection and do not reconnect (graceful shutdown)."""
        self._stopping = True
        if self._conn_scope is None:
            return
        self.drain_connection("daemon stopping")
        with trio.move_on_after(timeout + 1):
            await self._conn_ended.wait()

    async def _connect_once(self, session: GatewaySession) -> bool:
        """One connection, from tickle to its end. Returns whether it got ready."""
        self._opened = False
        self._ready = False
        session_id = await self._ready_session(session)
        self._end_reason = None
        self._barrier = None
        self._conn_ended = trio.Event()
        try:
            async with open_transport(
                session.ws_url,
                client=self.gateway.websocket_client,
                ssl_context=session.ssl_context(),
                headers=[GatewaySession.cookie_header(session_id)],
                connect_timeout=CONNECT_TIMEOUT,
            ) as ws:
                await self._on_open()
                with trio.CancelScope() as scope:
                    self._conn_scope = scope
                    async with trio.open_nursery() as nursery:
                        self._conn_nursery = nursery
                        self._ws = ws
                        nursery.start_soon(self._read_loop, ws, session_id)
                        nursery.start_soon(self._watchdog)
                        await self._wait_ready()
                        await self._subscribe_all(ws)
                        if self._ready:
                            self._request_resync()
                        nursery.start_soon(self._keepalive, ws)
                        nursery.start_soon(self._tickle_loop, session)
                        nursery.start_soon(self._wants_loop, ws)
                        nursery.start_soon(self._idle_reaper)
                self._conn_scope = None
                # The scope is only ever cancelled with a reason.
                raise _ConnectionEnded(self._end_reason or "connection ended")
        except TransportClosed as exc:
            raise _ConnectionEnded(str(exc)) from None
        finally:
            self._conn_scope = None
            self._conn_nursery = None
            self._ws = None
            self.subscriptions.forget()
            self._conn_ended.set()
        return self._ready

    async def _ready_session(self, session: GatewaySession) -> str:
        """Tickle, recover the brokerage session if it is down, list the accounts.

        Returns the session id for the WebSocket cookie. The gateway keeps a
        brokerage session of its own behind the login: when it is down
        (``authenticated: false``) ``ssodh/init`` asks for it again, taking it
        from a competing login only with ``gateway.compete: true``. The orders
        stream stays silent until ``/iserver/accounts`` has been called.
        """
        status = await session.tickle()
        self._note_session(status)
        if status.competing and not self.gateway.compete:
            raise GatewayCompeting(
                "another login (TWS, the mobile app, another gateway) holds the brokerage "
                "session; log out there, or set gateway.compete: true to take it"
            )
        if not status.authenticated or status.competing:
            self.state = "session_down"
            log.info("the brokerage session is down; asking the gateway to open it (ssodh/init)")
            self._note_session(await session.init_brokerage_session(compete=self.gateway.compete))
            status = await session.tickle()
            self._note_session(status)
            if not status.authenticated:
                detail = f" ({status.message})" if status.message else ""
                raise GatewaySessionDown(
                    "the gateway is logged in but its brokerage session is not authenticated"
                    f"{detail}; retrying ssodh/init (is the account logged in elsewhere?)"
                )
        assert status.session is not None  # tickle always has one
        self.accounts = await session.accounts()
        self.gateway_info["accounts"] = list(self.accounts)
        return status.session

    def _note_session(self, status: SessionStatus) -> None:
        info = self.gateway_info
        for key, value in (
            ("authenticated", status.authenticated),
            ("competing", status.competing),
            ("server_name", status.server_name),
            ("server_version", status.server_version),
        ):
            if value is not None:
                info[key] = value

    async def _on_open(self) -> None:
        self._opened = True
        self.connect_count += 1
        self._last_frame = trio.current_time()
        self._wall_offset = time.time() - self._last_frame
        self._ready_event = trio.Event()
        if self.connect_count > 1:
            # Everything the gateway sent while we were away is gone upstream.
            self.reconnect_count += 1
            await self.hub.bump_epoch(
                GapReason.RECONNECTED_AFTER_DISCONNECT,
                disconnected_at=self._disconnected_at,
                reconnected_at=format_ts(),
            )
        log.info(
            "gateway websocket open (epoch %d); waiting for its ready frame", self.hub.reset_epoch
        )

    # ------------------------------------------------------------ conn tasks

    async def _read_loop(self, ws: Transport, session_id: str) -> None:
        hub = self.hub
        frames = self.frames
        capture_other = self.events.capture_other
        # Several accounts: account_summary:<acct> and ledger:<acct> (docs/api.md).
        per_account = len(self.accounts) > 1
        publish = hub.publish_json
        clock = trio.current_time
        event_kind = FrameKind.EVENT
        while True:
            try:
                batch = await ws.receive_batch()
            except TransportClosed as exc:
                if exc.local:
                    self.end_connection(f"protocol violation by the gateway, {exc}")
                else:
                    self.end_connection(f"socket closed by the gateway (code {exc.code})")
                return
            self._last_frame = clock()
            self._frame_seen = True
            for message in batch:
                if isinstance(message, bytes):
                    frames["binary"] += 1
                frame = classify(message, capture_other=capture_other, per_account=per_account)
                kind = frame.kind
                frames[kind] += 1
                # Every frame with a topic is captured, control frames too (the
                # greeting, Unsubscribed notices, sts) so a consumer sees them in
                # order with the rest; then the connector acts on its kind.
                topic = frame.topic
                if topic is not None:
                    publish(topic, frame.payload_json)  # type: ignore[arg-type]
                    if hub.backpressure:
                        await hub.wait_writable()
                if kind is not event_kind:
                    await self._on_control(ws, frame, message, session_id)

    async def _on_control(
        self, ws: Transport, frame: Frame, message: str | bytes, session_id: str
    ) -> None:
        """Everything but a data event: ready, the echo, sts, session, errors."""
        kind = frame.kind
        if kind is FrameKind.READY:
            self._on_ready(frame.data)
            if self._subscribed_early:
                # Our subscriptions went out before ready and were dropped.
                await self._subscribe_all(ws)
                self._request_resync()
        elif kind is FrameKind.ECHO:
            # The gateway answers ech+hb with the raw text "ech+hb", in order
            # with everything else: once it is back, nothing subscribed before
            # the drain's unsubscribes can follow.
            barrier = self._barrier
            if barrier is not None:
                barrier.set()
        elif kind is FrameKind.AUTH_LOST:
            self.drain_connection("sts: the gateway reports authenticated=false")
        elif kind is FrameKind.COMPETING:
            # Reconnecting runs the session recovery, which takes the session
            # back only with gateway.compete: true.
            self.state = "competing"
            self.drain_connection("sts: another login competes for the brokerage session")
        elif kind is FrameKind.WAITING_SESSION:
            await self._send(ws, orjson.dumps({"session": session_id}).decode())
        elif kind is FrameKind.ERROR:
            log.warning("gateway error frame: %.200s", message)

    def _request_resync(self) -> None:
        # Subscribed first, so nothing that changes from now on is missed.
        if self.resyncer is not None:
            self.resyncer.request()

    def _on_ready(self, greeting: dict[str, Any] | None) -> None:
        """The gateway's ``system`` greeting: subscriptions are honoured from now on."""
        self._ready = True
        self._ready_event.set()
        self.connected = True
        self.state = "connected"
        self.last_error = None  # a healthy connection clears what failed before
        if greeting:
            username = greeting.get("success")
            if isinstance(username, str):
                self.gateway_info["username"] = username
            is_paper = greeting.get("isPaper")
            if isinstance(is_paper, bool):
                self.gateway_info["is_paper"] = is_paper
        log.info("gateway ready (epoch %d)", self.hub.reset_epoch)

    async def _wait_ready(self) -> None:
        self._subscribed_early = False
        if self._ready:
            return
        with trio.move_on_after(self.events.ready_timeout):
            await self._ready_event.wait()
            return
        self._subscribed_early = True
        self.state = "gateway_silent"
        self.last_error = (
            f"the gateway's WebSocket opened but sent no ready frame within "
            f"{self.events.ready_timeout:g} s (is its brokerage session up?); still waiting"
        )
        log.warning("%s; subscribing anyway (and again when it arrives)", self.last_error)

    async def _subscribe_all(self, ws: Transport) -> None:
        await self.subscriptions.subscribe_all(partial(self._send, ws))
        if self._ready:
            self._subscribed_early = False

    async def _wants_loop(self, ws: Transport) -> None:
        send = partial(self._send, ws)
        interval = self.events.marketdata.resubscribe_interval
        deadline = trio.current_time() + interval
        while True:
            # Take the events before syncing, so a want recorded while we send
            # is never missed.
            changed = self.subscriptions.changed()
            await self.subscriptions.sync(send)
            with trio.move_on_at(deadline):
                await wait_any(changed)
            if trio.current_time() >= deadline:
                # The gateway ends market-data streams after about 10 minutes
                # without a re-subscribe (corpus: smd-expires-after-10-minutes).
                await self.subscriptions.resubscribe(send)
                deadline = trio.current_time() + interval

    async def _idle_reaper(self) -> None:
        idle = self.events.marketdata.idle_unsubscribe
        if idle <= 0:
            return
        while True:
            await trio.sleep(max(idle / 4, 0.01))
            self.subscriptions.expire_idle(idle)

    async def _keepalive(self, ws: Transport) -> None:
        while True:
            await trio.sleep(KEEPALIVE_INTERVAL)
            await self._send(ws, "ech+hb")

    async def _send(self, ws: Transport, text: str) -> None:
        """Send a command; a closed socket ends the connection instead of raising."""
        try:
            await ws.send(text)
        except TransportClosed:
            self.end_connection("socket closed while sending a command")
            await trio.sleep_forever()  # cancelled at once: the scope is cancelled

    async def _tickle_loop(self, session: GatewaySession) -> None:
        while True:
            await trio.sleep(self.gateway.tickle_interval)
            try:
                status = await session.tickle()
            except GatewayNeedsLogin as exc:
                # The login is gone: the socket will only heartbeat from now on.
                self._record_failure(exc.state, exc.reason, str(exc))
                self.drain_connection(f"keepalive failed: {exc}")
                return
            except GatewayError as exc:
                # A network hiccup is judged by the heartbeat watchdog instead.
                log.warning("keepalive tickle failed: %s", exc)
                continue
            self._note_session(status)
            if status.authenticated is False or status.competing:
                # Reconnecting runs the brokerage-session recovery first.
                self.state = "competing" if status.competing else "session_down"
                self.drain_connection(f"keepalive: the brokerage session is {self.state}")
                return

    async def _watchdog(self) -> None:
        # One check per interval instead of a timeout around every read: a
        # cancel scope per frame costs more than the frame (PERF.md).
        timeout = self.events.heartbeat_timeout
        while True:
            silent_for = trio.current_time() - self._last_frame
            if silent_for >= timeout:
                # Confirm: after a process-wide pause (GC, a loaded host) frames
                # may sit unread in the socket; give the reader a moment first,
                # because ending the connection would discard them.
                last = self._last_frame
                await trio.sleep(min(1.0, timeout / 10))
                if self._last_frame == last:
                    self.end_connection(
                        f"no frame from the gateway for {timeout:g} s (stalled socket)"
                    )
                    return
                continue
            await trio.sleep(timeout - silent_for)
