"""Serve an app with Hypercorn on Trio: the listener, the connection cap, one task per connection.

Hypercorn's own ``serve`` accepts every connection and lets one connection's
failure end the whole server. This module runs Hypercorn's per-connection
server (``TCPServer``) under an accept loop of its own, so that:

- connections are counted, and those beyond ``max_connections`` are served
  by the reserve app (``/health`` only, ``http.limits``) with short timeouts;
  beyond the reserve a connection is closed as soon as it is accepted, so
  the process never holds more descriptors than the caps allow, and the
  listen backlog keeps moving: a health check that connects gets a
  reserve slot as soon as one is free, not after everything queued before it;
- running out of descriptors anyway (``EMFILE``, another part holding many)
  pauses accepting with one warning line, not a traceback per attempt;
- an error inside one connection (Hypercorn's HTTP/2 code raises
  ``KeyError`` for body data on a stream it already answered) closes that
  connection only, with one log line;
- the read timeout runs only while no request is in flight: Hypercorn's
  also ran while a request was being answered, which cut every SSE stream
  after 30 s and a long-poll at the full 30 s ``wait`` before its answer;
- the keep-alive timeout and the close of idle connections at shutdown are
  kept by that same read deadline: Hypercorn starts a task for its idle timer
  every time a connection goes idle, and cancels it at the next request,
  8 % of the daemon's py-spy samples under 5,000 long-polls;
- a connection the client closed while idle is closed at once: Hypercorn
  would keep it, and its descriptor, until its keep-alive timeout (75 s);
  so is one the client closed as its answer was being finished (a bot's
  last long-poll), where Hypercorn would start that timer after the EOF.

Everything else (the protocols, lifespan, graceful shutdown) is Hypercorn's.
"""

from __future__ import annotations

import copy
import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from bezant_trio.errors import StartupError
from bezant_trio.http.limits import RESERVE, RESERVE_IDLE
from bezant_trio.util import describe

__all__ = [
    "STALL_TIMEOUT",
    "BindError",
    "ConnectionSlots",
    "hypercorn_config",
    "serve_http",
]

log = logging.getLogger(__name__)

#: Accept errors that mean "out of descriptors or memory": wait and try again.
_CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
#: Seconds accepting pauses after one of those; the warning is logged once per this many.
_CAPACITY_PAUSE = 0.1
_CAPACITY_WARN_EVERY = 30.0


class BindError(StartupError):
    """The HTTP socket could not be bound (address in use, no permission)."""


class ConnectionSlots:
    """Open connections, the cap and its reserve: who gets served how.

    ``max_connections`` connections are served by the app, the next
    ``reserve`` by the reserve app; any more are closed at once.
    """

    def __init__(self, max_connections: int, reserve: int = RESERVE) -> None:
        self.max_connections = max_connections
        self.reserve = reserve
        #: Connections open right now (closed-at-once ones not included).
        self.open = 0
        #: Connections served by the reserve app (since start).
        self.reserved = 0
        #: Connections closed at once, beyond the reserve (since start).
        self.dropped = 0


class _Config(HypercornConfig):
    """Hypercorn's config, plus a kernel bound on how long a write may stall.

    Hypercorn shields every socket write from cancellation, so a client that
    stops reading (its receive window stays at zero) would hold its task,
    and the daemon's shutdown, forever. ``TCP_USER_TIMEOUT`` makes the kernel
    drop a connection whose sent data stays unacknowledged, or unsent for a
    zero window, for ``stall_timeout`` seconds; the write then fails, the
    server sees the connection closed and the request (an SSE stream) ends.
    Accepted sockets inherit the option from the listening socket.
    """

    stall_timeout: float | None = None

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        if self.stall_timeout is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(
                        socket.IPPROTO_TCP,
                        socket.TCP_USER_TIMEOUT,
                        max(1, int(self.stall_timeout * 1000)),
                    )
        return sockets


#: Seconds a client may leave written data unread before its connection is dropped.
STALL_TIMEOUT = 20.0


def hypercorn_config(
    bind: str, *, graceful_timeout: float = 10.0, stall_timeout: float | None = STALL_TIMEOUT
) -> HypercornConfig:
    """Hypercorn settings: bounded headers, timeouts against slowloris and stalled readers."""
    config = _Config()
    config.stall_timeout = stall_timeout
    config.bind = [bind]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75
    # A client that sends a request slower than this is dropped (slowloris).
    config.read_timeout = 30
    config.h11_max_incomplete_size = 16 * 1024
    config.backlog = 1024
    config.include_server_header = False
    return config


async def serve_http(
    app: Any,
    bind: str,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout: float = 10.0,
    stall_timeout: float | None = STALL_TIMEOUT,
    slots: ConnectionSlots | None = None,
    reserve_app: Any = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` on ``bind`` until ``shutdown_trigger`` returns.

    Reports the bound URLs (``["http://127.0.0.1:8080"]``) through ``task_status``.
    A client that reads nothing of a response for ``stall_timeout`` seconds is
    dropped. With ``slots``, connections beyond its cap are served by
    ``reserve_app`` (required then); without, every connection is accepted.
    Raises :class:`BindError` when ``bind`` cannot be listened on.
    """
    if slots is not None and reserve_app is None:
        raise ValueError("serve_http: slots needs a reserve_app")
    config = hypercorn_config(bind, graceful_timeout=graceful_timeout, stall_timeout=stall_timeout)
    try:
        sockets = config.create_sockets()
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
    except OSError as exc:
        raise BindError(f"http.bind: cannot listen on {bind}: {exc.strerror or exc}") from None
    await _serve(app, config, sockets, shutdown_trigger, slots, reserve_app, task_status)


async def _serve(
    app: Any,
    config: HypercornConfig,
    sockets: Sockets,
    shutdown_trigger: Callable[[], Awaitable[None]],
    slots: ConnectionSlots | None,
    reserve_app: Any,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    # hypercorn.trio.run.worker_serve, with our accept loop and connection handler.
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    live: set[_Connection] = set()
    connection = partial(
        _serve_connection,
        wrapped,
        config,
        context,
        ConnectionState(lifespan_state.copy()),
        live,
        slots,
        None if reserve_app is None else wrap_app(reserve_app, config.wsgi_max_body_size, "asgi"),
        _reserve_config(config),
    )
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners = [
                trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                for sock in sockets.insecure_sockets
            ]
            binds = [
                f"http://{repr_socket_addr(sock.family, sock.getsockname())}"
                for sock in sockets.insecure_sockets
            ]
            task_status.started(binds)
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(raise_shutdown, shutdown_trigger)
                    for listener in listeners:
                        accepting.start_soon(
                            _accept_loop, listener, slots, connection, server_nursery
                        )
            except BaseExceptionGroup as error:
                _, other = error.split(ShutdownError)
                if other is not None:
                    raise other from None
            finally:
                # Close the listening sockets now (Hypercorn leaves them to the
                # garbage collector): a client that connects after the stop is
                # refused at once instead of waiting in the backlog.
                for listener in listeners:
                    listener.socket.close()
                await context.terminated.set()
                # Idle connections close now (Hypercorn's idle task did this);
                # the busy ones close as their last answer ends.
                for open_connection in live:
                    open_connection.close_if_idle()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _accept_loop(
    listener: trio.SocketListener,
    slots: ConnectionSlots | None,
    connection: Callable[[trio.SocketStream, bool], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    warned_at = -_CAPACITY_WARN_EVERY
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            now = trio.current_time()
            if now - warned_at >= _CAPACITY_WARN_EVERY:
                warned_at = now
                log.warning(
                    "cannot accept HTTP connections: %s; pausing (raise the open-files limit, "
                    "LimitNOFILE=, or lower http.max_connections)",
                    describe(exc),
                )
            await trio.sleep(_CAPACITY_PAUSE)
            continue
        reserved = False
        if slots is not None:
            # Decided here, not in the connection's task, so that a burst of
            # accepts cannot pass the check before any of them is counted.
            if slots.open >= slots.max_connections + slots.reserve:
                slots.dropped += 1
                stream.socket.close()
                continue
            reserved = slots.open >= slots.max_connections
            slots.reserved += reserved
            slots.open += 1
        nursery.start_soon(connection, stream, reserved)


async def _serve_connection(
    app: Any,
    config: HypercornConfig,
    context: WorkerContext,
    state: ConnectionState,
    live: set[_Connection],
    slots: ConnectionSlots | None,
    reserve_app: Any,
    reserve_config: HypercornConfig,
    stream: trio.SocketStream,
    reserved: bool,
) -> None:
    if reserved:
        app, config = reserve_app, reserve_config
    connection: _Connection | None = None
    try:
        connection = _Connection(app, config, context, state, stream)  # type: ignore[arg-type]
        live.add(connection)
        await connection
    except BaseExceptionGroup as group:
        errors, rest = group.split(Exception)
        _log_connection_error(errors)
        if rest is not None:
            raise rest from None
    except Exception as exc:
        _log_connection_error(exc)
    finally:
        live.discard(connection)  # type: ignore[arg-type]
        if slots is not None:
            slots.open -= 1
        # TCPServer closes the stream itself; this is for when it failed before.
        with trio.CancelScope(shield=True):
            await stream.aclose()


class _NoIdleTask:
    """Stands in for Hypercorn's idle task, which ``_Connection``'s read deadline replaces."""

    async def restart(self, task_group: Any, action: Any) -> None:
        return None

    async def stop(self) -> None:
        return None


_NO_IDLE_TASK = _NoIdleTask()


class _Connection(TCPServer):
    """Hypercorn's connection server, with one deadline on its reads for every timeout.

    Hypercorn times out every read, also while a request is being answered.
    A client waiting for its answer sends nothing, so every SSE stream was
    cut ``read_timeout`` (30 s) after it began, and a long-poll at the most
    ``wait`` allows (30 s) lost its answer half-written. Here the read
    deadline runs only while no request is in flight: between requests and
    in a request head. A request in flight is bounded by its own handler
    (``wait``, the body's ``BODY_TIMEOUT`` in the gate, an SSE stream's
    end when its client leaves or stalls).

    While idle, the deadline is the sooner of the read timeout after the
    last read and the keep-alive timeout after the connection went idle
    (Hypercorn's idle timer: a request head trickled a byte at a time is
    still cut then), and it is now once the server is stopping (Hypercorn's
    idle task closed idle connections at shutdown). Hypercorn's own idle
    task, a task started at every idle and cancelled at every request, is
    not run. When the deadline passes, reading ends and the connection
    closes, as Hypercorn's timers closed it.
    """

    #: A request (HTTP/2: any stream) is in flight: Hypercorn said so with
    #: ``Updated(idle=False)``, and has not said ``Updated(idle=True)`` since.
    _busy = False
    _read_scope: trio.CancelScope | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.idle_task = _NO_IDLE_TASK  # type: ignore[assignment]
        #: When the keep-alive timeout ends this idle spell (a new connection is idle).
        self._idle_until = trio.current_time() + self.config.keep_alive_timeout

    def _read_deadline(self) -> float:
        if self._busy:
            return math.inf
        if self.context.terminated.is_set():
            return -math.inf
        if self.config.read_timeout:
            return min(self._idle_until, trio.current_time() + self.config.read_timeout)
        return self._idle_until

    def close_if_idle(self) -> None:
        """At shutdown: end an idle connection now (a busy one ends after its answer)."""
        if self._read_scope is not None:
            self._read_scope.deadline = self._read_deadline()

    async def _read_data(self) -> None:
        # TCPServer._read_data, but with a deadline that protocol_send moves.
        while True:
            with trio.CancelScope(deadline=self._read_deadline()) as scope:
                self._read_scope = scope
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
            self._read_scope = None
            if scope.cancelled_caught:
                break  # a timeout, or the server stopping
            await self.protocol.handle(RawData(bytes(data)))
            if not data:
                break
        # Reading ends at EOF, a reset, a timeout or the server's close; by
        # then Hypercorn has been told the client is gone (and tells the
        # request, if any). No idle timer holds the connection's task, and its
        # socket, after that: the connection ends with its last request.
        await self.protocol.handle(Closed())

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            # A request began (no read deadline until it is answered) or the
            # connection went idle (the keep-alive and read timeouts start now).
            self._busy = not event.idle
            if event.idle:
                self._idle_until = trio.current_time() + self.config.keep_alive_timeout
            if self._read_scope is not None:
                self._read_scope.deadline = self._read_deadline()
            return
        await super().protocol_send(event)


def _log_connection_error(exc: BaseException | None) -> None:
    if exc is None:
        return
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    log.info("closed an HTTP connection after an error in the server: %s", describe(exc))
    log.debug("the error", exc_info=exc)


def _reserve_config(config: HypercornConfig) -> HypercornConfig:
    """``config`` for a connection in the reserve: closed soon when idle or slow."""
    reserve = copy.copy(config)
    reserve.keep_alive_timeout = RESERVE_IDLE
    reserve.read_timeout = min(config.read_timeout or RESERVE_IDLE, RESERVE_IDLE * 2)
    return reserve
