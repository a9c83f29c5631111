"""What the HTTP surface needs from the rest of the daemon, in one object.

The daemon builds an :class:`HttpContext` and hands it to
:class:`~bezant_trio.http.service.HttpService`; every route, the fast path,
the SSE streams and the metrics read the daemon only through it. It holds
the hub (events), the market-data wants (demand) and plain callables for
status; it never holds the connector or the sink manager themselves, so the
HTTP layer cannot reach into either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bezant_trio.http.hosts import HostPolicy
from bezant_trio.model import BARS, BOOK, MARKETDATA
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants

__all__ = ["HttpContext"]


def _ok() -> tuple[int, dict[str, Any]]:
    return 200, {"status": "ok"}


@dataclass
class HttpContext:
    """The daemon as the HTTP layer sees it (see the module docstring)."""

    #: The event store; ``None`` answers ``503 events_disabled`` on every event route.
    hub: Hub | None
    #: Market-data demand: polls and streams of ``marketdata:<conid>`` record here.
    wants: Wants = field(default_factory=lambda: Wants(100))
    #: Streaming bars and price-ladder demand (``bars:<conid>``, ``book:<conid>``).
    bars: Wants = field(default_factory=lambda: Wants(5, what="streaming-bars", setting=None))
    book: Wants = field(default_factory=lambda: Wants(1, what="price-ladder", setting=None))
    #: The bearer token every route but ``/health*`` needs; ``None``: no authentication.
    token: str | None = None
    #: Without a token: the ``Host`` names (and browser origins) answered (``http.hosts``).
    hosts: HostPolicy = field(default_factory=HostPolicy)
    #: Extra ``_status`` fields (connector, sinks), merged over the hub's.
    status_extra: Callable[[], dict[str, Any]] = dict
    #: ``(status, body)`` for ``/health``.
    health: Callable[[], tuple[int, dict[str, Any]]] = _ok
    #: ``(status, body)`` for ``/health/ready``: 200 once connected, receiving, log writable.
    readiness: Callable[[], tuple[int, dict[str, Any]]] = _ok
    #: The connector's status dict for ``/metrics`` (None when not connecting).
    connector_status: Callable[[], dict[str, Any] | None] = lambda: None
    #: The sink manager's status dict for ``/metrics``.
    sinks_status: Callable[[], dict[str, dict[str, Any]]] = dict
    #: A topic's ring capacity, for ``/metrics``.
    capacity_for: Callable[[str], int] | None = None

    def demand(self, family: str) -> Wants:
        """The wants of a per-instrument family (``marketdata``, ``bars``, ``book``)."""
        return {MARKETDATA: self.wants, BARS: self.bars, BOOK: self.book}[family]
