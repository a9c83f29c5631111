"""The simulator's faults: drops, stalls, slow writes, restarts, auth flaps, bad frames,
and the states a real gateway is met in: hanging REST calls, a silent WebSocket,
a brokerage session that is down, a competing login.

:class:`FaultsMixin` is the part of
:class:`~bezant_trio.simulator.gateway.GatewaySimulator` that misbehaves on
purpose, the way real gateways and networks do, so the daemon's recovery can
be tested. ``routes.py`` exposes the same operations under ``/sim/...``.

Two logins are modelled apart, as the gateway keeps them: the gateway's own
(``authenticated``; off means tickle 401, a person must log in) and the
brokerage session behind it (``brokerage_up``; off means tickle answers 200
with ``iserver.authStatus.authenticated: false`` until
``POST /iserver/auth/ssodh/init``; corpus: rest.jsonl auth-status-down-captured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import orjson
import trio

from bezant_trio.simulator import frames
from bezant_trio.simulator.connection import Outgoing
from bezant_trio.simulator.core import SimulatorCore

__all__ = ["DROP_MODES", "FaultsMixin"]

DROP_MODES = ("abrupt", "close", "reset")
# The JSON of a truncated order frame: what a gateway cut off mid-write looks like.
_MALFORMED_TEXT = '{"topic":"sor","args":[{"acct":"DU1234","orderId":'
_BINARY_FRAME = {"topic": "ntf", "args": {"id": "sim-binary", "text": "sent as a binary frame"}}
# 0xff and 0xfe can never appear in UTF-8.
_INVALID_UTF8 = b'{"topic":"ntf","args":{"text":"\xff\xfe"}}'


class FaultsMixin(SimulatorCore):
    """Fault controls (see the module docstring)."""

    def _init_faults(self) -> None:
        #: False makes ``/tickle``, ``/iserver/auth/status`` and the WS handshake answer 401.
        self.authenticated = True
        #: True during a restart's downtime: REST and WS answer 503.
        self.down = False
        #: Seconds the writer waits before each frame (slow/trickle mode); 0 = off.
        self.slow_delay = 0.0
        #: The session id ``/tickle`` returns and the WebSocket cookie must carry.
        self.session = frames.new_session_id()
        self.restarts = 0
        #: False: the brokerage session is down (tickle says authenticated:false).
        self.brokerage_up = True
        #: True: another login holds the brokerage session.
        self.competing = False
        #: True: every ``/v1/api`` call is read and never answered, as the real
        #: gateway does when it cannot reach IBKR (corpus: offline-rest-never-answers).
        self.rest_hang = False
        #: True: new WebSockets are accepted and never spoken to (corpus:
        #: behaviour.jsonl offline-websocket-silent).
        self.ws_silent = False
        #: False: ``ech+hb`` is never answered, as the real gateway offline does
        #: (corpus: behaviour.jsonl offline-websocket-silent), though frames flow.
        self.answer_echo = True
        #: How many times the gateway answers one ``tic`` (corpus: tic-answered-four-times).
        self.tic_answers = 4
        self.ssodh_inits = 0
        self._unstalled = trio.Event()
        self._unstalled.set()
        self._rest_released = trio.Event()
        self._rest_released.set()

    async def _wait_unstalled(self) -> None:
        while self.stalled:
            await self._unstalled.wait()

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

    def hang_rest(self, hang: bool = True) -> None:
        """Read every ``/v1/api`` request and answer none (until ``hang_rest(False)``).

        The real gateway with its upstream unreachable does this: no status
        line, no headers, no body. Requests held when the hang ends are then
        answered. ``/sim`` controls are never held.
        """
        self.rest_hang = hang
        if hang and self._rest_released.is_set():
            self._rest_released = trio.Event()
        elif not hang:
            self._rest_released.set()
        self._notify()

    async def _wait_rest_released(self) -> None:
        while self.rest_hang:
            await self._rest_released.wait()

    def silence_websocket(self, silent: bool = True) -> None:
        """Accept new WebSockets and never send them anything (no greeting, no echo).

        Applies to connections opened from now on; a client's close is
        answered by dropping TCP without a close frame, as the real one does.
        """
        self.ws_silent = silent
        self._notify()

    def set_echo(self, answer: bool = True) -> None:
        """Answer ``ech+hb`` (the default) or leave it unanswered while frames still flow.

        A client that waits for the echo as a drain barrier must then give up
        on its own (its drain timeout).
        """
        self.answer_echo = answer
        self._notify()

    async def set_session_down(self, down: bool = True) -> int:
        """Take the brokerage session down (or bring it up); open sockets hear ``sts``.

        While down: tickle and ``/iserver/auth/status`` answer 200 with
        ``authenticated: false``, new sockets get ``sts`` authenticated:false
        instead of the greeting, until ``POST /iserver/auth/ssodh/init``.
        Returns how many sockets were told.
        """
        self.brokerage_up = not down
        self._notify()
        if not down:
            return 0
        return await self.inject(frames.auth_status_frame(authenticated=False))

    async def set_competing(self, competing: bool = True) -> int:
        """Another login takes the brokerage session (``competing: true``).

        The session goes down with it; open sockets hear ``sts`` with
        authenticated:false and competing:true (corpus: ws_system.jsonl
        sts-competing-lost). Only ``ssodh/init`` with ``compete: true`` takes
        it back. Returns how many sockets were told.
        """
        self.competing = competing
        if not competing:
            self._notify()
            return 0
        self.brokerage_up = False
        self._notify()
        return await self.inject(frames.competing_frame())

    def init_brokerage_session(self, *, compete: bool) -> bool:
        """What ``POST /iserver/auth/ssodh/init`` does; whether the session is now up."""
        self.ssodh_inits += 1
        if self.competing and not compete:
            self._notify()
            return False
        self.competing = False
        self.brokerage_up = True
        self._notify()
        return True

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
