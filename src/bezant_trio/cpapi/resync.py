"""Resync after a gap: the gateway's REST truth, published right after the gap.

The gateway keeps no replay of what it streamed while nobody listened; after
a reconnect or a restart the truth is in its REST API. Once a session is
ready (and subscribed, so nothing that changes from now on is missed), the
connector asks for a resync; :class:`Resyncer` fetches, per captured topic,

- ``orders``: ``GET /iserver/account/orders?force=true`` (the live orders;
  ``force`` also matters because a filtered orders call can silence the
  ``sor`` stream until a forced one). IBKR's OpenAPI says a forced call
  clears the gateway's cache and answers an empty list, while its own example
  shows the orders (corpus: rest.jsonl ``orders-force-empty``,
  ``orders-force-campus``): an empty forced answer is followed by a plain
  call, whose answer is the one published,
- ``trades``: ``GET /iserver/account/trades``,
- ``pnl``: ``GET /iserver/account/pnl/partitioned``,

and publishes each answer as one event in its topic (the orders answer with
the ``sor`` updates captured while it was asked applied: :func:`with_updates`):
``{"reason": "resync", "source", "new_reset_epoch", "data": <the body>}``. A
fetch that fails is retried with backoff; one that cannot be had gives
``{"reason": "resync_failed", "source", "new_reset_epoch", "error"}``
(docs/api.md, "Resync events").

IBKR paces these endpoints (one request per 5 s each, about 10 requests per
second overall; more earns a 429 penalty box): requests wait for their turn,
and a resync asked for while one is waiting or running is coalesced into it,
so a flapping connection does not multiply them.

Imports the hub (to publish) and the session (to fetch); owns no socket.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from bezant_trio.cpapi.session import GatewayError, GatewaySession
from bezant_trio.model import Event
from bezant_trio.store.hub import Hub
from bezant_trio.store.state import order_key, orders_in
from bezant_trio.util import backoff_delay

__all__ = ["RESYNC_SOURCES", "ResyncSource", "Resyncer", "with_updates"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResyncSource:
    """Where the truth of one topic comes from."""

    topic: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    #: Whether an empty answer is asked again without ``params`` (orders after ``force``).
    retry_plain_when_empty: bool = False

    @property
    def source(self) -> str:
        """The path as the event names it (``/iserver/account/orders?force=true``)."""
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{self.path}?{query}" if query else self.path


#: Per captured topic, the REST call that tells its truth.
RESYNC_SOURCES: dict[str, ResyncSource] = {
    "orders": ResyncSource(
        "orders", "/iserver/account/orders", (("force", "true"),), retry_plain_when_empty=True
    ),
    "trades": ResyncSource("trades", "/iserver/account/trades"),
    "pnl": ResyncSource("pnl", "/iserver/account/pnl/partitioned"),
}
#: IBKR's pacing: one request per endpoint every this many seconds...
ENDPOINT_INTERVAL = 5.0
#: ... and at most this many requests per second to the gateway overall.
GLOBAL_RATE = 10.0
#: Attempts per fetch before a ``resync_failed`` event.
ATTEMPTS = 4
#: Backoff between attempts (seconds): exponential, equal jitter.
RETRY_MIN, RETRY_MAX = 1.0, 8.0


class Pacer:
    """Waits so that each endpoint and the gateway as a whole stay within IBKR's limits."""

    def __init__(self, *, interval: float = ENDPOINT_INTERVAL, rate: float = GLOBAL_RATE) -> None:
        self._interval = interval
        self._spacing = 1.0 / rate
        self._last: dict[str, float] = {}
        self._last_any = -float("inf")

    async def wait_turn(self, path: str) -> None:
        """Return when a request to ``path`` may go; records it as sent."""
        now = trio.current_time()
        due = max(
            self._last.get(path, -float("inf")) + self._interval, self._last_any + self._spacing
        )
        if due > now:
            await trio.sleep(due - now)
        now = trio.current_time()
        self._last[path] = now
        self._last_any = now


class Resyncer:
    """Fetches the truth of ``topics`` and publishes it into ``hub`` when asked."""

    def __init__(
        self,
        hub: Hub,
        session: GatewaySession,
        topics: Sequence[str],
        *,
        pacer: Pacer | None = None,
        attempts: int = ATTEMPTS,
        retry: tuple[float, float] = (RETRY_MIN, RETRY_MAX),
        rng: random.Random | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.hub = hub
        self.attempts = attempts
        self.retry = retry
        self.session = session
        self.sources = [RESYNC_SOURCES[t] for t in topics if t in RESYNC_SOURCES]
        self.pacer = pacer or Pacer()
        self._rng = rng or random.Random()
        self._on_failed = on_failed
        self._wanted = trio.Event()
        #: Resync events published (``resync`` and ``resync_failed``), for status and tests.
        self.published: list[Event] = []
        #: Resyncs asked for, and done (a coalesced request is asked, not done, twice).
        self.requested = 0
        self.completed = 0

    def request(self) -> None:
        """Ask for a resync (after a gap, once the session is ready); coalesced."""
        self.requested += 1
        self._wanted.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests until cancelled."""
        task_status.started()
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()  # a request from now on asks for another round
            for source in self.sources:
                await self._resync(source)
            self.completed += 1

    async def _resync(self, source: ResyncSource) -> None:
        error = "not tried"
        for attempt in range(1, self.attempts + 1):
            await self.pacer.wait_turn(source.path)
            asked_after = self.hub.assigned(source.topic)
            try:
                body = await self.session.get_json(source.path, params=dict(source.params))
            except GatewayError as exc:
                error = str(exc)
                log.warning(
                    "resync of %s from %s failed (attempt %d of %d): %s",
                    source.topic,
                    source.source,
                    attempt,
                    self.attempts,
                    error,
                )
                if attempt < self.attempts:
                    await trio.sleep(backoff_delay(attempt, *self.retry, self._rng))
                continue
            if source.retry_plain_when_empty and _is_empty(body):
                plain = ResyncSource(source.topic, source.path)
                await self._resync(plain)
                return
            if source.topic == "orders":
                body = with_updates(body, self.hub.published_since("orders", asked_after))
            self._publish(source, {"reason": "resync", "data": body})
            return
        if self._on_failed is not None:
            self._on_failed(source.topic)
        self._publish(source, {"reason": "resync_failed", "error": error})

    def _publish(self, source: ResyncSource, fields: dict[str, object]) -> None:
        payload = {
            "reason": fields["reason"],
            "source": source.source,
            "new_reset_epoch": self.hub.reset_epoch,
            **{k: v for k, v in fields.items() if k != "reason"},
        }
        self.published.append(self.hub.publish(source.topic, payload))


def with_updates(body: Any, events: Sequence[Event]) -> Any:
    """The orders answer ``body`` with the ``sor`` updates in ``events`` applied to it.

    The gateway answers from what it held when the call arrived; the stream
    may carry newer updates of the same orders while the answer travels, and
    the daemon publishes those first. Published as it came, the answer would
    follow them and take those orders back (a fill undone until the next
    update). Each update captured since the call was sent is applied, in
    cursor order, to the record of its order: snapshot-then-updates, at the
    resync's place in the stream. Orders the answer does not list are left
    alone (the stream has given them already).
    """
    if not events:
        return body
    records: dict[str, dict[str, Any]] = {}
    for record in orders_in({"reason": "resync", "data": body}):
        key = order_key(record)
        if key is not None:
            records[key] = record
    for event in events:
        payload = event.payload
        if not isinstance(payload, dict) or "reason" in payload:
            continue  # the daemon's own events: gaps, resyncs
        for update in orders_in(payload):
            key = order_key(update)
            record = records.get(key) if key is not None else None
            if record is not None:
                record.update(update)
    return body


def _is_empty(body: object) -> bool:
    """An answer with no records: ``[]``, ``{}``, or ``{"orders": []}``."""
    if isinstance(body, dict):
        return not body or body.get("orders") == []
    return body == []
