"""The HTTP surface as one service: the app, its fast path, SSE, metrics, the server.

:class:`HttpService` is the only name the daemon imports from ``http``. It
builds the Quart-Trio app from an :class:`~bezant_trio.http.context.HttpContext`,
puts the poll fast path and request metrics in front of it, counts requests in
flight, and serves it with Hypercorn. Stopping is two steps, so the daemon can
order its shutdown (docs/architecture.md, "Shutdown"): :meth:`stop_accepting`
closes the listener, :meth:`wait_idle` returns once every request in flight
(the long-polls the hub just woke) is answered; cancelling :meth:`run`'s
scope then closes what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from bezant_trio.http.app import create_app
from bezant_trio.http.context import HttpContext
from bezant_trio.http.fastpath import FastPolls
from bezant_trio.http.metrics import DaemonMetrics
from bezant_trio.http.server import BindError, InFlight, serve_http
from bezant_trio.http.sse import SseStreams
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants

__all__ = ["BindError", "HttpService"]


class HttpService:
    """The REST API, SSE and ``/metrics`` on ``bind``; start with ``await nursery.start(svc.run)``.

    The keyword arguments after ``bind`` are the fields of
    :class:`~bezant_trio.http.context.HttpContext`: what the routes read.
    ``graceful_timeout`` bounds Hypercorn's own wait for connections at
    shutdown; the daemon normally cancels sooner, under its one deadline.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        bind: str,
        wants: Wants,
        token: str | None = None,
        status_extra: Callable[[], dict[str, Any]] = dict,
        health: Callable[[], tuple[int, dict[str, Any]]] | None = None,
        readiness: Callable[[], tuple[int, dict[str, Any]]] | None = None,
        connector_status: Callable[[], dict[str, Any] | None] = lambda: None,
        sinks_status: Callable[[], dict[str, dict[str, Any]]] = dict,
        capacity_for: Callable[[str], int] | None = None,
        graceful_timeout: float = 10.0,
    ) -> None:
        ctx = HttpContext(
            hub,
            wants=wants,
            token=token,
            status_extra=status_extra,
            connector_status=connector_status,
            sinks_status=sinks_status,
            capacity_for=capacity_for,
        )
        if health is not None:
            ctx.health = health
        if readiness is not None:
            ctx.readiness = readiness
        self.ctx = ctx
        self.bind = bind
        self.graceful_timeout = graceful_timeout
        #: ``GET /events/{topic}/stream``: open streams, slow-client counters.
        self.streams = SseStreams()
        #: The poll fast path's switch and counters (tests switch it off to compare).
        self.fast_polls = FastPolls()
        #: ``/metrics``; built here because it also counts this app's requests.
        self.metrics = DaemonMetrics(
            hub,
            connector_status=connector_status,
            sinks_status=sinks_status,
            capacity_for=capacity_for,
            in_flight=lambda: self._app.count,
            sse_clients=lambda: self.streams.clients,
            wants=wants,
        )
        self._app = InFlight(
            create_app(ctx, streams=self.streams, fast_polls=self.fast_polls, metrics=self.metrics)
        )
        self._stop = trio.Event()
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
                task_status=task_status,
            )

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve)
            self.url = binds[0]
            task_status.started(self.url)

    def stop_accepting(self) -> None:
        """Close the listener: no new connections; requests in flight go on."""
        self._stop.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._app.wait_idle()
