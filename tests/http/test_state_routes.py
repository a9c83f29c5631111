"""``GET /state/...``: the latest state per key, and taking it then following the stream."""

from __future__ import annotations

import httpx
import trio

from bezant_trio.http.context import HttpContext
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants
from helpers import capacity_of


def _order(order_id: int, **fields: object) -> dict:
    return {"topic": "sor", "args": [{"acct": "DU1234", "orderId": order_id, **fields}]}


def _apply(items: dict, event: dict) -> None:
    """What a bot does with an orders event: merge each record by orderId."""
    for record in event["payload"].get("args", []):
        items.setdefault(str(record["orderId"]), {}).update(record)


async def test_take_the_state_then_follow_loses_nothing_and_applies_nothing_twice(
    serve, client: httpx.AsyncClient
) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    hub.publish("orders", _order(1, ticker="AAPL", status="Submitted", filledQuantity=0.0))
    hub.publish("orders", _order(2, ticker="MSFT", status="PreSubmitted"))
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        state = (await client.get(f"{base}/state/orders")).json()
        hub.publish("orders", _order(1, filledQuantity=50.0))
        hub.publish("orders", _order(2, status="Submitted"))
        hub.publish("orders", _order(1, status="Filled", filledQuantity=100.0))
        follow = (
            await client.get(f"{base}/events/orders", params={"since": state["cursor"]})
        ).json()
        final = (await client.get(f"{base}/state/orders")).json()
        one = await client.get(f"{base}/state/orders/1")
        missing = await client.get(f"{base}/state/orders/999")
    assert state["cursor"] == 2 and state["reset_epoch"] == 1
    assert [e["cursor"] for e in follow["events"]] == [3, 4, 5]
    items = state["items"]
    for event in follow["events"]:
        _apply(items, event)
    assert items == final["items"] and final["cursor"] == 5
    assert final["items"]["1"]["ticker"] == "AAPL" and final["items"]["1"]["status"] == "Filled"
    assert one.status_code == 200 and one.json()["item"]["filledQuantity"] == 100.0
    assert one.json()["cursor"] == 5
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_order"


async def test_state_of_a_quote_wants_its_conid_and_merges_deltas(
    serve, client: httpx.AsyncClient
) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    wants = Wants(1)
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub, wants=wants))
        empty = (await client.get(f"{base}/state/marketdata", params={"conid": 265598})).json()
        assert wants.wanted() == [265598]  # asking for a quote subscribes it, as a poll does
        hub.publish("marketdata:265598", {"topic": "smd+265598", "31": "1.0", "84": "0.9"})
        hub.publish("marketdata:265598", {"topic": "smd+265598", "31": "1.1"})
        one = (await client.get(f"{base}/state/marketdata", params={"conid": 265598})).json()
        every = (await client.get(f"{base}/state/marketdata")).json()
        too_many = await client.get(f"{base}/state/marketdata", params={"conid": 8314})
        pnl = (await client.get(f"{base}/state/pnl")).json()
    assert empty == {"cursor": 0, "reset_epoch": 1, "conid": 265598, "item": {}}
    assert one["cursor"] == 2 and one["item"] == {"31": "1.1", "84": "0.9"}
    assert every["items"] == {"265598": {"31": "1.1", "84": "0.9"}}
    assert every["cursors"] == {"265598": 2}
    assert too_many.status_code == 429 and too_many.json()["code"] == "too_many_conids"
    assert pnl == {"cursor": 0, "reset_epoch": 1, "items": {}}


async def test_state_needs_the_token(serve, client: httpx.AsyncClient) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub, token="s3cret-token"))
        denied = await client.get(f"{base}/state/orders")
        allowed = await client.get(
            f"{base}/state/orders", headers={"authorization": "Bearer s3cret-token"}
        )
    assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
    assert allowed.status_code == 200
