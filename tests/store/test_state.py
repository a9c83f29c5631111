"""Latest-state views: partial updates merged per key, bounded, saved and rebuilt with the log.

The frames are the shapes of IBKR's WebSocket document
(clientportal.gw/doc/RealtimeSubscription.md, "Live Orders" and "Live Order -
Updates", "Profit and Loss", "Market Data"): an order's first ``sor`` record
is full, its updates carry only the changed fields; ``smd`` deltas carry
only the changed fields.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import orjson
import trio

from bezant_trio.model import GapReason
from bezant_trio.store.hub import Hub
from bezant_trio.store.log import EventLog
from bezant_trio.store.state import StateViews
from helpers import capacity_of, wait_until

FULL_ORDER = {
    "acct": "DU1234",
    "conid": 265598,
    "orderId": 352055828,
    "cashCcy": "USD",
    "sizeAndFills": "0/722",
    "orderDesc": "Sell 722 Limit 382.40 GTC",
    "ticker": "AAPL",
    "remainingQuantity": 722.0,
    "filledQuantity": 0.0,
    "status": "Submitted",
    "orderType": "Limit",
    "side": "SELL",
    "price": 382.4,
}
PARTIAL_FILL = {
    "acct": "DU1234",
    "orderId": 352055828,
    "sizeAndFills": "100/622",
    "remainingQuantity": 622.0,
    "filledQuantity": 100.0,
    "avgPrice": "382.45",
}
FILLED = {
    "acct": "DU1234",
    "orderId": 352055828,
    "sizeAndFills": "722",
    "remainingQuantity": 0.0,
    "filledQuantity": 722.0,
    "status": "Filled",
}


def _sor(*orders: dict) -> dict:
    return {"topic": "sor", "args": list(orders)}


async def _hub(**views: object) -> Hub:
    hub = Hub(capacity_of(), state=StateViews(**views))  # type: ignore[arg-type]
    await hub.open()
    return hub


async def test_order_updates_merge_into_the_full_record() -> None:
    hub = await _hub()
    hub.publish("orders", _sor(FULL_ORDER))
    hub.publish("orders", _sor(PARTIAL_FILL))
    hub.publish("orders", _sor({"acct": "DU1234", "orderId": 7, "status": "PreSubmitted"}))
    answer = hub.state.answer(hub.state.orders, hub.reset_epoch)
    assert answer["cursor"] == 3 and answer["reset_epoch"] == 1
    record = answer["items"]["352055828"]
    assert record["ticker"] == "AAPL" and record["side"] == "SELL"  # kept from the first
    assert record["filledQuantity"] == 100.0 and record["avgPrice"] == "382.45"  # updated
    assert record["status"] == "Submitted"  # not in the update: still what it was
    assert answer["items"]["7"] == {"acct": "DU1234", "orderId": 7, "status": "PreSubmitted"}


async def test_a_finished_order_is_dropped_after_the_ttl(autojump_clock: object) -> None:
    hub = await _hub(finished_ttl=60.0, clock=trio.current_time)
    hub.publish("orders", _sor(FULL_ORDER, {"orderId": 8, "status": "Submitted"}))
    hub.publish("orders", _sor(FILLED))
    await trio.sleep(59)
    assert set(hub.state.answer(hub.state.orders, 1)["items"]) == {"352055828", "8"}
    await trio.sleep(2)
    items = hub.state.answer(hub.state.orders, 1)["items"]
    assert set(items) == {"8"}  # the working order stays, however old


async def test_finished_orders_are_bounded_the_oldest_dropped_first(monkeypatch) -> None:
    from bezant_trio.store import state

    monkeypatch.setattr(state, "MAX_FINISHED_ORDERS", 3)
    hub = await _hub()
    hub.publish("orders", _sor({"orderId": 100, "status": "Submitted"}))
    for order_id in range(1, 6):
        hub.publish("orders", _sor({"orderId": order_id, "status": "Filled"}))
    items = hub.state.answer(hub.state.orders, 1)["items"]
    assert set(items) == {"100", "3", "4", "5"}  # the working order is never dropped


async def test_a_resync_merges_the_gateway_s_orders_after_a_gap() -> None:
    hub = await _hub()
    hub.publish("orders", _sor(FULL_ORDER))
    await hub.bump_epoch(GapReason.RECONNECTED_AFTER_DISCONNECT)
    # What GET /iserver/account/orders?force=true answered after the gap.
    hub.publish(
        "orders",
        {
            "reason": "resync",
            "source": "/iserver/account/orders",
            "new_reset_epoch": 2,
            "data": {"orders": [{**FULL_ORDER, **FILLED}], "snapshot": True},
        },
    )
    answer = hub.state.answer(hub.state.orders, hub.reset_epoch)
    assert answer["cursor"] == 3 and answer["reset_epoch"] == 2  # order, gap, resync
    assert answer["items"]["352055828"]["status"] == "Filled"
    assert answer["items"]["352055828"]["ticker"] == "AAPL"


async def test_quotes_merge_deltas_per_conid_and_pnl_rows_per_key() -> None:
    hub = await _hub()
    first = {"topic": "smd+265598", "31": "382.89", "84": "382.80", "conid": 265598}
    hub.publish("marketdata:265598", {**first, "_updated": 1, "server_id": "q6"})
    hub.publish("marketdata:265598", {"topic": "smd+265598", "31": "383.01", "_updated": 2})
    hub.publish("pnl", {"topic": "spl", "args": {"DU1234.Core": {"rowType": 1, "dpl": -5.0}}})
    hub.publish("pnl", {"topic": "spl", "args": {"DU1234.Core": {"upl": 12.5}}})
    quote = hub.state.quote(265598)
    assert quote is not None and quote.cursor == 2
    assert quote.items["quote"] == {
        "31": "383.01",
        "84": "382.80",
        "conid": 265598,
        "_updated": 2,
        "server_id": "q6",
    }
    pnl = hub.state.answer(hub.state.pnl, 1)
    assert pnl["items"] == {"DU1234.Core": {"rowType": 1, "dpl": -5.0, "upl": 12.5}}


async def test_a_payload_the_publisher_decoded_merges_as_the_bytes_do() -> None:
    """The connector hands its decoded frame along (memory-only capture skips a decode)."""
    frames = [
        ("orders", _sor(FULL_ORDER)),
        ("orders", _sor(PARTIAL_FILL)),
        ("marketdata:265598", {"topic": "smd+265598", "31": "382.89", "84": "382.80"}),
        ("marketdata:265598", {"topic": "smd+265598", "31": "383.01", "_updated": 2}),
        ("pnl", {"topic": "spl", "args": {"DU1234.Core": {"rowType": 1, "dpl": -5.0}}}),
        ("pnl", {"topic": "spl", "args": {"DU1234.Core": {"upl": 12.5}}}),
    ]
    from_bytes, from_decoded = await _hub(), await _hub()
    for topic, frame in frames:
        raw = orjson.dumps(frame)
        from_bytes.publish_json(topic, raw)
        from_decoded.publish_json(topic, raw, orjson.loads(raw))
    for hub in (from_bytes, from_decoded):
        assert hub.head("orders") == 2
    a, b = from_bytes.state, from_decoded.state
    assert a.answer(a.orders, 1) == b.answer(b.orders, 1)
    assert a.answer(a.pnl, 1) == b.answer(b.pnl, 1)
    quote_a, quote_b = a.quote(265598), b.quote(265598)
    assert quote_a is not None and quote_b is not None
    assert (
        quote_a.items == quote_b.items == {"quote": {"31": "383.01", "84": "382.80", "_updated": 2}}
    )


async def test_quotes_of_conids_nobody_wants_are_dropped_once_stale(
    autojump_clock: object,
) -> None:
    wanted = {1}
    hub = await _hub(keep_conid=wanted.__contains__, quote_ttl=60.0, clock=trio.current_time)
    hub.publish("marketdata:1", {"31": "1"})
    hub.publish("marketdata:2", {"31": "2"})
    hub.state.prune()
    assert sorted(hub.state.quotes) == [1, 2]  # 2 changed just now: its readers may come back
    await trio.sleep(61)
    hub.state.prune()
    assert sorted(hub.state.quotes) == [1]


async def test_the_views_survive_a_restart_from_the_snapshot_and_the_events_after_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"

    async def run_until(stop: trio.Event, started: list[Hub], *, clean: bool) -> None:
        elog = await trio.to_thread.run_sync(EventLog.open, path)
        hub = Hub(capacity_of(), event_log=elog, state=StateViews())
        await hub.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run_writer)
            started.append(hub)
            await stop.wait()
            if clean:
                await hub.close()
            nursery.cancel_scope.cancel()
        await trio.to_thread.run_sync(elog.close)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            stop, hubs = trio.Event(), []
            nursery.start_soon(partial(run_until, stop, hubs, clean=True))
            await wait_until(lambda: bool(hubs))
            hub = hubs[0]
            hub.publish("orders", _sor(FULL_ORDER))
            hub.publish("orders", _sor(PARTIAL_FILL))
            hub.publish("marketdata:265598", {"31": "1.5", "conid": 265598})
            await wait_until(lambda: hub.state.orders.cursor == 2)
            stop.set()
        # A clean stop saved the views; the next start reads the snapshot...
        async with trio.open_nursery() as nursery:
            stop, hubs = trio.Event(), []
            nursery.start_soon(partial(run_until, stop, hubs, clean=False))
            await wait_until(lambda: bool(hubs))
            hub = hubs[0]
            assert hub.state.orders.items["352055828"]["filledQuantity"] == 100.0
            assert hub.state.quote(265598).items["quote"]["31"] == "1.5"  # from the warm ring
            # ... and goes on; this run ends without a clean stop (no new snapshot).
            hub.publish("orders", _sor(FILLED))
            await wait_until(lambda: hub.state.orders.items["352055828"]["status"] == "Filled")
            stop.set()
        # The snapshot is from before FILLED: the events after it are applied again.
        async with trio.open_nursery() as nursery:
            stop, hubs = trio.Event(), []
            nursery.start_soon(partial(run_until, stop, hubs, clean=True))
            await wait_until(lambda: bool(hubs))
            hub = hubs[0]
            record = hub.state.orders.items["352055828"]
            view_cursor = hub.state.orders.cursor
            stop.set()
    assert record["status"] == "Filled" and record["ticker"] == "AAPL"
    # order, fill, restart gap, filled (cursors jumped past the unclean stop's last ones)
    assert view_cursor >= 4
