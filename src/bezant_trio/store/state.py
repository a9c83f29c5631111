"""Latest-state views: every order by ``orderId``, every quote by conid, every PnL row.

The gateway sends partial updates: an ``sor`` frame after the first carries
only the fields of an order that changed, an ``smd`` frame only the market-data
fields that changed (IBKR's WebSocket document; docs/gateway.md). A bot that
starts, restarts or falls behind would have to replay everything to know an
order's status. These views merge the updates as events become visible, so
one call answers "what is true now", together with the topic cursor the
answer reflects: take the state, then follow ``GET /events/{topic}?since=C``,
and nothing is lost or applied twice (docs/api.md, "State views").

Resync events (``{"reason": "resync", "source", "data"}``, published by the
connector after every gap) merge the gateway's REST truth in the same way.

Memory is bounded: a finished order (filled, cancelled, rejected, inactive)
is dropped ``finished_ttl`` seconds after it finished, and at most
``MAX_FINISHED_ORDERS`` are kept (the oldest go first); a quote is kept while
its conid is wanted. With the durable log on, the views are saved in its
``meta`` table now and then and at a clean stop, and rebuilt at start from
that snapshot plus the events after it.

Pure memory and JSON: no Trio, no I/O of its own. The hub calls
:meth:`StateViews.observe` for every event it makes visible.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from bezant_trio.model import MARKETDATA, Event, conid_of

__all__ = ["FINISHED_STATUSES", "StateView", "StateViews", "order_key", "orders_in"]

#: Order statuses after which nothing more happens to an order.
FINISHED_STATUSES = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive", "Rejected"})
#: Finished orders kept at most, the oldest dropped first: the TTL alone does
#: not bound memory when orders finish by the thousand.
MAX_FINISHED_ORDERS = 5000
#: Topics (and families) that have a view.
ORDERS, PNL = "orders", "pnl"
#: The ``meta`` key a view's snapshot is saved under.
SNAPSHOT_KEY = "state:{}"
#: Most topics whose view is looked up once (one per wanted conid, plus two).
_MAX_ROUTES = 100_000
#: How an event (and its payload, if already decoded) is applied to a view.
_Apply = Callable[["StateView", Event, Any], None]


class StateView:
    """One topic's merged records, by key, and the cursor of the last event applied."""

    __slots__ = ("cursor", "finished_at", "items", "topic", "updated_at")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        #: The cursor of the newest event of ``topic`` this view reflects.
        self.cursor = 0
        #: key -> merged record.
        self.items: dict[str, dict[str, Any]] = {}
        #: key -> when (epoch seconds) the record reached a finished status.
        self.finished_at: dict[str, float] = {}
        #: When (epoch seconds) an event was last applied.
        self.updated_at = 0.0

    def reset(self) -> None:
        """Forget everything (a snapshot that cannot be read is rebuilt from the events)."""
        self.cursor = 0
        self.items = {}
        self.finished_at = {}

    def merge(self, key: str, update: Mapping[str, Any]) -> dict[str, Any]:
        record = self.items.get(key)
        if record is None:
            record = self.items[key] = {}
        record.update(update)
        return record

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {"cursor": self.cursor, "items": self.items, "finished_at": self.finished_at}
        )

    def restore(self, blob: bytes | str) -> None:
        data = orjson.loads(blob)
        self.cursor = int(data["cursor"])
        self.items = dict(data["items"])
        self.finished_at = {k: float(v) for k, v in data.get("finished_at", {}).items()}


class StateViews:
    """The latest state per key for ``orders``, ``pnl`` and every ``marketdata:<conid>``.

    ``keep_conid`` says whether a conid is still wanted; a quote nobody wants
    is dropped once it has not changed for ``quote_ttl`` seconds (so after a
    restart, quotes rebuilt from the log wait for their readers to ask again);
    ``clock`` gives epoch seconds.
    """

    def __init__(
        self,
        *,
        finished_ttl: float = 86400.0,
        keep_conid: Callable[[int], bool] = lambda conid: True,
        quote_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.finished_ttl = finished_ttl
        self.quote_ttl = quote_ttl
        self._keep_conid = keep_conid
        self._clock = clock
        self.orders = StateView(ORDERS)
        self.pnl = StateView(PNL)
        #: conid -> the quote view of ``marketdata:<conid>``.
        self.quotes: dict[int, StateView] = {}
        #: topic -> (its view, how to apply an event to it); topics without a view are
        #: not cached (they are cheap to reject: no conid to parse).
        self._routes: dict[str, tuple[StateView, _Apply]] = {}
        self._applied = 0

    # ------------------------------------------------------------- applying

    def observe(self, event: Event, decoded: Any = None) -> None:
        """Apply one event that just became visible (called by the hub, in cursor order).

        On the ingest path for every event: the topic's view and how to apply
        to it are looked up once per topic (``_routes``), and a quote delta is
        decoded once and merged as it comes out of the decoder. ``decoded`` is
        the payload already decoded, if the caller has it (the views then own it).
        """
        route = self._routes.get(event.topic)
        if route is None:
            route = self._route(event.topic)
            if route is None:
                return
        view, apply = route
        if event.cursor > view.cursor:
            apply(view, event, decoded)
        view.cursor = event.cursor
        view.updated_at = self._clock()
        self._applied += 1
        if not self._applied & 1023:
            self.prune()

    def _route(self, topic: str) -> tuple[StateView, _Apply] | None:
        """The view of ``topic`` and its apply function (cached), or None: no view."""
        route: tuple[StateView, _Apply] | None = None
        if topic == ORDERS:
            route = (self.orders, self._apply_orders)
        elif topic == PNL:
            route = (self.pnl, self._apply_pnl)
        elif topic.startswith("marketdata:"):
            conid = conid_of(topic, MARKETDATA)
            if conid is None:
                return None
            view = self.quotes.get(conid)
            if view is None:
                view = self.quotes[conid] = StateView(topic)
            route = (view, _apply_quote)
        else:
            return None
        if len(self._routes) < _MAX_ROUTES:
            self._routes[topic] = route
        return route

    def _apply_orders(self, view: StateView, event: Event, decoded: Any) -> None:
        payload = _decode(event) if decoded is None else decoded
        if not isinstance(payload, dict):
            return
        for order in orders_in(payload):
            key = order_key(order)
            if key is None:
                continue
            record = view.merge(key, order)
            status = record.get("status")
            if status in FINISHED_STATUSES:
                view.finished_at.setdefault(key, self._clock())
            else:
                view.finished_at.pop(key, None)

    def _apply_pnl(self, view: StateView, event: Event, decoded: Any) -> None:
        payload = _decode(event) if decoded is None else decoded
        if not isinstance(payload, dict):
            return
        rows = payload.get("args")
        if payload.get("reason") == "resync":
            data = payload.get("data")
            rows = data.get("upnl") if isinstance(data, dict) else None
        if isinstance(rows, dict):
            for key, row in rows.items():
                if isinstance(row, dict):
                    view.merge(str(key), row)

    # --------------------------------------------------------------- bounds

    def prune(self) -> None:
        """Drop orders finished over ``finished_ttl`` ago and quotes of conids nobody wants."""
        now = self._clock()
        view = self.orders
        expired = [k for k, at in view.finished_at.items() if now - at >= self.finished_ttl]
        over = len(view.finished_at) - len(expired) - MAX_FINISHED_ORDERS
        if over > 0:  # finished_at keeps insertion order: the first finished come first
            gone = set(expired)
            kept = (k for k in view.finished_at if k not in gone)
            expired += [k for _, k in zip(range(over), kept, strict=False)]
        for key in expired:
            view.items.pop(key, None)
            del view.finished_at[key]
        stale = [
            conid
            for conid, quote in self.quotes.items()
            if not self._keep_conid(conid) and now - quote.updated_at >= self.quote_ttl
        ]
        for conid in stale:
            self._routes.pop(self.quotes.pop(conid).topic, None)

    # -------------------------------------------------------------- answers

    def answer(self, view: StateView, reset_epoch: int) -> dict[str, Any]:
        """``{"cursor", "reset_epoch", "items"}`` for one view."""
        self.prune()
        return {"cursor": view.cursor, "reset_epoch": reset_epoch, "items": view.items}

    def quote(self, conid: int) -> StateView | None:
        """The quote view of ``conid``, if any event of it was seen."""
        return self.quotes.get(conid)

    # ----------------------------------------------------------- persistence

    def views(self) -> Iterable[StateView]:
        """The order and PnL views: the ones saved in the log (quotes come back with the rings)."""
        return (self.orders, self.pnl)


def _apply_quote(view: StateView, event: Event, decoded: Any) -> None:
    """Merge one ``smd`` delta (the fields that changed) into the conid's quote."""
    fields = decoded
    if fields is None:
        try:
            fields = orjson.loads(event.payload_json)
        except orjson.JSONDecodeError:
            return
    if type(fields) is not dict or "reason" in fields:
        return  # a gap event: the quote stays as last sent
    fields.pop("topic", None)
    record = view.items.get("quote")
    if record is None:
        view.items["quote"] = fields  # a fresh dict, ours alone
    else:
        record.update(fields)


def _decode(event: Event) -> Any:
    try:
        return orjson.loads(event.payload_json)
    except orjson.JSONDecodeError:
        return None


def orders_in(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The order records of an ``sor`` frame or an orders resync event."""
    if payload.get("reason") == "resync":
        data = payload.get("data")
        orders = data.get("orders") if isinstance(data, dict) else data
    else:
        orders = payload.get("args")
    if not isinstance(orders, list):
        return []
    return [order for order in orders if isinstance(order, dict)]


def order_key(order: Mapping[str, Any]) -> str | None:
    """An order record's ``orderId`` as the views key it, or None if it has no usable one."""
    order_id = order.get("orderId")
    if isinstance(order_id, bool) or not isinstance(order_id, int | str) or order_id == "":
        return None
    return str(order_id)
