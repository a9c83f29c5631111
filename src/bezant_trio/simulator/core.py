"""What every part of the simulator shares: the open connections, change signals, timers.

:class:`SimulatorCore` is the base of :class:`~bezant_trio.simulator.gateway.GatewaySimulator`.
It keeps the registry of WebSocket connections (opened, closed, the command
log), the "something changed" event that every ``wait_*`` parks on, the
simulator's nursery and named one-shot timers. The streams
(:mod:`~bezant_trio.simulator.streams`) and the faults
(:mod:`~bezant_trio.simulator.faults`) build on it; it knows nothing of
either, of HTTP, or of TLS.

This package must not import from ``bezant_trio.cpapi``: the simulator is the
other side of the wire, and sharing code would hide protocol mistakes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
import trio

from bezant_trio.simulator.connection import Outgoing, WsConnection
from bezant_trio.simulator.errors import SimulatorError, SimulatorTimeout
from bezant_trio.simulator.frames import now_ms

__all__ = ["SimulatorCore"]

_CLOSED_HISTORY = 20


class SimulatorCore:
    """Connection registry, change notification, nursery and timers."""

    def __init__(
        self, *, queue_size: int, send_timeout: float, close_timeout: float, command_log_size: int
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        #: Send JSON frames as binary WebSocket messages instead of text.
        self.binary_frames = False
        #: True while stalled (see ``faults.py``): nothing is written, no heartbeats.
        self.stalled = False
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.ws_handshakes = 0
        self._queue_size = queue_size
        self._connections: dict[int, WsConnection] = {}
        self._closed_connections: deque[dict[str, Any]] = deque(maxlen=_CLOSED_HISTORY)
        self._next_connection_id = 1
        self._commands: deque[dict[str, Any]] = deque(maxlen=command_log_size)
        self._nursery: trio.Nursery | None = None
        self._timers: dict[str, trio.CancelScope] = {}
        # Replaced (after being set) on every observable change; wait_for() parks on it.
        self._changed = trio.Event()
        # Replaced on every configure(); heartbeat loops restart their timer on it.
        self._config_changed = trio.Event()

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise SimulatorError("the simulator is not running")
        return self._nursery

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _json_item(self, frame: Any, **item_fields: Any) -> Outgoing:
        if isinstance(frame, bytes | bytearray):
            return Outgoing("bytes", bytes(frame), **item_fields)
        raw = frame.encode() if isinstance(frame, str) else orjson.dumps(frame)
        if self.binary_frames:
            return Outgoing("bytes", raw, **item_fields)
        return Outgoing("text", raw.decode(), **item_fields)

    # ------------------------------------------------------ connection callbacks

    def _connection_opened(self, connection: WsConnection) -> None:
        self._connections[connection.id] = connection
        self.ws_handshakes += 1
        self._notify()

    def _connection_closed(self, connection: WsConnection) -> None:
        self._connections.pop(connection.id, None)
        self._closed_connections.append(connection.describe())
        self._notify()

    def _record_command(self, connection: WsConnection, text: str, result: str) -> None:
        self._commands.append(
            {"connection": connection.id, "at_ms": now_ms(), "text": text[:500], "result": result}
        )
        self._notify()

    # -------------------------------------------------------------- inspection

    @property
    def connections(self) -> list[WsConnection]:
        """Open WebSocket connections, oldest first."""
        return list(self._connections.values())

    def ready_connections(self) -> list[WsConnection]:
        """Open connections that have been sent the ready frame."""
        return [conn for conn in self._connections.values() if conn.ready and not conn.closing]

    def _live_connections(self) -> list[WsConnection]:
        return [conn for conn in self._connections.values() if not conn.closing]

    async def _send_to_all(self, make_item: Callable[[], Outgoing]) -> int:
        count = 0
        for conn in self._live_connections():
            if await conn.enqueue(make_item()):
                count += 1
        return count

    @property
    def commands(self) -> list[dict[str, Any]]:
        """The last ``command_log_size`` client commands, oldest first."""
        return list(self._commands)

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self, predicate: Callable[[Any], bool], *, timeout: float | None = None
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

    # ------------------------------------------------------------------- timers

    def _start_timer(self, name: str, seconds: float, action: Callable[[], None]) -> None:
        """Run ``action`` once after ``seconds``, unless :meth:`_cancel_timer` comes first."""
        self._cancel_timer(name)
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
