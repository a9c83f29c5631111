"""Serve an app with Hypercorn on Trio; the bound URLs are what ``start`` reports."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio import serve

from bezant_trio.errors import StartupError

__all__ = ["STALL_TIMEOUT", "BindError", "InFlight", "hypercorn_config", "serve_http"]


class BindError(StartupError):
    """The HTTP socket could not be bound (address in use, no permission)."""


class InFlight:
    """ASGI wrapper counting HTTP requests in progress, so shutdown can wait for them.

    Hypercorn's graceful shutdown also waits for idle keep-alive connections
    until its timeout; the daemon instead waits until no request is in flight.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        while self.count:
            await self._idle.wait()


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
    app: object,
    bind: str,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout: float = 10.0,
    stall_timeout: float | None = STALL_TIMEOUT,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``bind`` until ``shutdown_trigger`` returns.

    Reports the bound URLs (``["http://127.0.0.1:8080"]``) through ``task_status``.
    A client that reads nothing of a response for ``stall_timeout`` seconds is dropped.
    """
    config = hypercorn_config(bind, graceful_timeout=graceful_timeout, stall_timeout=stall_timeout)
    try:
        config.create_sockets().insecure_sockets[0].close()
    except OSError as exc:
        raise BindError(f"http.bind: cannot listen on {bind}: {exc.strerror or exc}") from None
    await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)  # type: ignore[arg-type]
