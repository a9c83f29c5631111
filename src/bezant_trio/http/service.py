"""The HTTP surface as one service: the app, its fast path, SSE, metrics, the server.

:class:`HttpService` is the only name the daemon imports from ``http``. It
builds the Quart-Trio app from an :class:`~bezant_trio.http.context.HttpContext`,
puts the poll fast path and request metrics in front of it, and the request
gate (``http.gate``: requests in flight, the stream cap, request bodies) in
front of both, and serves it with Hypercorn under the connection cap
(``http.server``; the caps are in ``http.limits``). Stopping is two steps, so the daemon can
order its shutdown (docs/architecture.md, "Shutdown"): :meth:`stop_accepting`
closes the listener, :meth:`wait_idle` returns once every request in flight
(the long-polls the hub just woke) is answered; cancelling :meth:`run`'s
scope then closes what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import trio

from bezant_trio.fds import connections_within
from bezant_trio.http.app import create_app
from bezant_trio.http.context import HttpContext
from bezant_trio.http.fastpath import FastPolls
from bezant_trio.http.gate import RequestGate
from bezant_trio.http.hosts import HostPolicy
from bezant_trio.http.limits import HttpLimits
from bezant_trio.http.metrics import DaemonMetrics
from bezant_trio.http.server import BindError, ConnectionSlots, serve_http
from bezant_trio.http.sse import SseStreams
from bezant_trio.memory import MemoryTrimmer
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants

__all__ = ["BindError", "HttpService"]


class HttpService:
    """The REST API, SSE and ``/metrics`` on ``bind``; start with ``await nursery.start(svc.run)``.

    Most keyword arguments after ``bind`` are the fields of
    :class:`~bezant_trio.http.context.HttpContext`: what the routes read.
    ``allowed_hosts`` are the ``Host`` names answered without a token beside
    the loopback ones (``http.hosts``); ``limits`` the caps (``http.limits``),
    ``max_connections`` lowered to what the open-files limit leaves.
    ``graceful_timeout`` bounds Hypercorn's own wait for connections at
    shutdown; the daemon normally cancels sooner, under its one deadline.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        bind: str,
        wants: Wants,
        bars: Wants | None = None,
        book: Wants | None = None,
        token: str | None = None,
        status_extra: Callable[[], dict[str, Any]] = dict,
        health: Callable[[], tuple[int, dict[str, Any]]] | None = None,
        readiness: Callable[[], tuple[int, dict[str, Any]]] | None = None,
        connector_status: Callable[[], dict[str, Any] | None] = lambda: None,
        sinks_status: Callable[[], dict[str, dict[str, Any]]] = dict,
        capacity_for: Callable[[str], int] | None = None,
        allowed_hosts: tuple[str, ...] = (),
        limits: HttpLimits | None = None,
        graceful_timeout: float = 10.0,
    ) -> None:
        limits = limits if limits is not None else HttpLimits()
        limits = replace(
            limits, max_connections=connections_within(limits.max_connections, limits.reserve)
        )
        ctx = HttpContext(
            hub,
            wants=wants,
            token=token,
            hosts=HostPolicy.build(allowed_hosts, bind_host=_bind_host(bind)),
            status_extra=status_extra,
            connector_status=connector_status,
            sinks_status=sinks_status,
            capacity_for=capacity_for,
        )
        if bars is not None:
            ctx.bars = bars
        if book is not None:
            ctx.book = book
        if health is not None:
            ctx.health = health
        if readiness is not None:
            ctx.readiness = readiness
        self.ctx = ctx
        self.bind = bind
        self.graceful_timeout = graceful_timeout
        #: Gives the memory of ended streams back to the OS (``bezant_trio.memory``).
        self.trimmer = MemoryTrimmer()
        #: ``GET /events/{topic}/stream``: open streams, slow-client counters.
        self.streams = SseStreams(trimmer=self.trimmer)
        #: The poll fast path's switch and counters (tests switch it off to compare).
        self.fast_polls = FastPolls()
        #: The caps in force (``max_connections`` as fitted to the open-files limit).
        self.limits = limits
        #: Open connections, and those served from the reserve.
        self.connections = ConnectionSlots(limits.max_connections, limits.reserve)
        #: ``/metrics``; built here because it also counts this app's requests.
        self.metrics = DaemonMetrics(
            hub,
            connector_status=connector_status,
            sinks_status=sinks_status,
            capacity_for=capacity_for,
            in_flight=lambda: self._app.count,
            sse_clients=lambda: self.streams.clients,
            wants=wants,
            refused=lambda: self._app.refused,
            connections=lambda: self.connections.open,
            connections_dropped=lambda: self.connections.dropped,
        )
        self._app = RequestGate(
            create_app(ctx, streams=self.streams, fast_polls=self.fast_polls, metrics=self.metrics),
            limits,
        )
        self._stop = trio.Event()
        self._served = trio.Event()
        #: The bound base URL (``http://127.0.0.1:8080``), once :meth:`run` has started.
        self.url: str | None = None

    @property
    def in_flight(self) -> int:
        """HTTP requests being answered right now (long-polls and streams included)."""
        return self._app.count

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the base URL, serve until :meth:`stop_accepting`.

        Raises :class:`BindError` (a :class:`~bezant_trio.errors.StartupError`)
        when the address cannot be bound.
        """

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await serve_http(
                self._app,
                self.bind,
                shutdown_trigger=self._stop.wait,
                graceful_timeout=self.graceful_timeout,
                slots=self.connections,
                reserve_app=self._app.reserve_app,
                task_status=task_status,
            )
            self._served.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(self.trimmer.run)
            binds = await nursery.start(serve)
            self.url = binds[0]
            task_status.started(self.url)
            await self._served.wait()
            nursery.cancel_scope.cancel()  # the trimmer: nothing is left to trim for

    def stop_accepting(self) -> None:
        """Close the listener: no new connections; requests in flight go on."""
        self._stop.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._app.wait_idle()


def _bind_host(bind: str) -> str | None:
    host, sep, _port = bind.rpartition(":")
    if not sep:
        return None
    return host.strip("[]") or None
