"""The REST surface on a real Hypercorn socket.

Ports every case of bezant-server's tests/events_routes.rs, then covers
long-poll, validation, auth and abuse.
"""

from __future__ import annotations

import httpx
import orjson
import pytest
import trio

from bezant_trio.http.context import HttpContext
from bezant_trio.model import GapReason
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants
from helpers import SSL_CONTEXT, wait_until


async def _url(serve, hub: Hub | None, **kw) -> str:  # type: ignore[no-untyped-def]
    return await serve(HttpContext(hub=hub, **kw))


# ---- bezant-server's events_routes.rs, case by case ----------------------


async def test_events_disabled_when_no_hub(serve, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        base = await _url(serve, None)
        r = await client.get(f"{base}/events/orders")
    assert r.status_code == 503
    assert r.json()["code"] == "events_disabled"


async def test_status_envelope_has_every_field(serve, client, hub: Hub) -> None:
    with trio.fail_after(10):
        base = await _url(
            serve,
            hub,
            status_extra=lambda: {
                "connected": False,
                "last_message_at": None,
                "reconnect_count": 0,
                "uptime_seconds": 0,
                "topics_subscribed": hub.topics(),
            },
        )
        r = await client.get(f"{base}/events/_status")
    assert r.status_code == 200
    body = r.json()
    for key in ("connected", "reset_epoch", "topics_subscribed", "buffer_sizes", "uptime_seconds"):
        assert key in body


async def test_empty_topic_is_200_with_empty_array(serve, client, hub: Hub) -> None:
    with trio.fail_after(10):
        base = await _url(serve, hub)
        r = await client.get(f"{base}/events/orders?since=0")
    assert r.status_code == 200
    assert r.json()["events"] == [] and r.json()["next_cursor"] == 0


async def test_pushed_events_are_returned(serve, client, hub: Hub) -> None:
    hub.publish("orders", {"orderId": 12345, "status": "Filled"})
    hub.publish("orders", {"orderId": 12346, "status": "Working"})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        body = (await client.get(f"{base}/events/orders?since=0")).json()
    assert [e["payload"]["orderId"] for e in body["events"]] == [12345, 12346]
    assert body["next_cursor"] == 2


async def test_cursor_advances(serve, client, hub: Hub) -> None:
    for i in (1, 2, 3):
        hub.publish("orders", {"id": i})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        body = (await client.get(f"{base}/events/orders?since=1")).json()
    assert [e["cursor"] for e in body["events"]] == [2, 3]
    assert body["next_cursor"] == 3


async def test_caught_up_is_204_with_cursor_header(serve, client, hub: Hub) -> None:
    hub.publish("orders", {"id": 1})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        r = await client.get(f"{base}/events/orders?since=1")
    assert r.status_code == 204
    assert r.headers["x-bezant-cursor"] == "1"


async def test_limit_is_respected(serve, client, hub: Hub) -> None:
    for i in range(10):
        hub.publish("orders", {"id": i})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        body = (await client.get(f"{base}/events/orders?since=0&limit=3")).json()
    assert len(body["events"]) == 3 and body["next_cursor"] == 3


async def test_limit_above_max_is_capped(serve, client, hub: Hub) -> None:
    for i in range(1100):  # the orders ring keeps 1000: cursors 101..1100
        hub.publish("orders", {"id": i})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        body = (await client.get(f"{base}/events/orders?since=100&limit=5000")).json()
    assert len(body["events"]) == 1000
    assert body["next_cursor"] == 1100


async def test_status_topics_grow(serve, client, hub: Hub) -> None:
    hub.publish("orders", {"id": 1})
    hub.publish("pnl", {"upnl": 10.0})
    with trio.fail_after(10):
        base = await _url(serve, hub, status_extra=lambda: {"topics_subscribed": hub.topics()})
        body = (await client.get(f"{base}/events/_status")).json()
    assert {"orders", "pnl"} <= set(body["topics_subscribed"])
    assert body["buffer_sizes"]["orders"] == 1 and body["buffer_sizes"]["pnl"] == 1


async def test_pnl_endpoint(serve, client, hub: Hub) -> None:
    hub.publish("pnl", {"unrealizedUsd": 125.34})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        body = (await client.get(f"{base}/events/pnl?since=0")).json()
    assert body["events"][0]["payload"]["unrealizedUsd"] == 125.34
    assert body["events"][0]["topic"] == "pnl"


async def test_reset_epoch_in_envelope_and_events(serve, client, hub: Hub) -> None:
    for _ in range(6):
        await hub.bump_epoch(GapReason.RECONNECTED_AFTER_DISCONNECT)
    hub.publish("orders", {"id": 1})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        body = (await client.get(f"{base}/events/orders?since=0")).json()
    assert body["reset_epoch"] == 7
    assert body["events"][0]["reset_epoch"] == 7


async def test_history_is_503_without_log(serve, client, hub: Hub) -> None:
    with trio.fail_after(10):
        base = await _url(serve, hub)
        r = await client.get(f"{base}/events/orders/history?since_ts=2026-01-01T00:00:00Z")
    assert r.status_code == 503 and r.json()["code"] == "events_history_disabled"


# ---- long-poll --------------------------------------------------------------


async def test_long_poll_returns_an_event_published_later(serve, client, hub: Hub) -> None:
    base = await _url(serve, hub)
    result: dict[str, object] = {}

    async def poll() -> None:
        r = await client.get(f"{base}/events/orders?since=0&wait=30")
        result["status"] = r.status_code
        result["body"] = r.json()

    # Bounded far below the poll's 30 s wait (the most allowed): only the publish
    # can answer it in time.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            # publish once the request is parked on the hub
            await wait_until(lambda: hub.waiting == 1)
            hub.publish("orders", {"id": 1})
    assert result["status"] == 200
    assert result["body"]["events"][0]["payload"] == {"id": 1}  # type: ignore[index]


async def test_long_poll_times_out_with_204(serve, client, hub: Hub) -> None:
    hub.publish("orders", {"id": 1})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        r = await client.get(f"{base}/events/orders?since=1&wait=0.2")
    assert r.status_code == 204 and r.headers["x-bezant-cursor"] == "1"


async def test_expired_cursor_is_412_with_the_oldest_cursor_still_kept(serve, client) -> None:
    """Memory only, a ring of 3, five orders: cursors 3-5 are kept, 1-2 are gone."""
    from helpers import capacity_of

    hub = Hub(capacity_of(default=3))
    await hub.open()
    for i in range(5):
        hub.publish("orders", {"i": i})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        expired = await client.get(f"{base}/events/orders?since=0")
        # The boundary: since = oldest - 1 gets everything kept, oldest - 2 is too old.
        edge = await client.get(f"{base}/events/orders?since=2")
        past_edge = await client.get(f"{base}/events/orders?since=1")
    assert expired.status_code == 412
    body = expired.json()
    assert body["code"] == "cursor_expired"
    assert body["head_cursor"] == 3 and body["newest_cursor"] == 5
    assert body["reset_epoch"] == 1
    assert "resume with since=2" in body["message"]
    # Following the advice (since = head_cursor - 1) loses only what is gone.
    assert edge.status_code == 200
    assert [e["cursor"] for e in edge.json()["events"]] == [3, 4, 5]
    assert past_edge.status_code == 412 and past_edge.json()["head_cursor"] == 3


async def test_a_cursor_ahead_of_the_newest_is_412_saying_the_daemon_restarted(
    serve, client
) -> None:
    hub = Hub(lambda topic: 100)
    await hub.open()
    for i in range(2):
        hub.publish("orders", {"i": i})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        r = await client.get(f"{base}/events/orders?since=40")
    body = r.json()
    assert r.status_code == 412 and body["code"] == "cursor_expired"
    assert body["head_cursor"] == 1 and body["newest_cursor"] == 2
    assert "ahead of the newest event" in body["message"]
    assert "restarted without a log" in body["message"]


async def test_limit_zero_counts_as_one(serve, client) -> None:
    hub = Hub(lambda topic: 100)
    await hub.open()
    for i in range(3):
        hub.publish("orders", {"i": i})
    with trio.fail_after(10):
        base = await _url(serve, hub)
        r = await client.get(f"{base}/events/orders?since=0&limit=0")
    assert r.status_code == 200 and [e["cursor"] for e in r.json()["events"]] == [1]


# ---- validation and auth -----------------------------------------------------

BAD_QUERIES = [
    ("/events/orders?since=-1", "invalid_query", "since"),
    ("/events/orders?since=abc", "invalid_query", "since"),
    ("/events/orders?since=1.5", "invalid_query", "since"),
    ("/events/orders?limit=-3", "invalid_query", "limit"),
    ("/events/orders?limit=x", "invalid_query", "limit"),
    ("/events/orders?wait=31", "invalid_query", "wait"),
    ("/events/orders?wait=-1", "invalid_query", "wait"),
    ("/events/orders?wait=nan", "invalid_query", "wait"),
    ("/events/orders?wait=soon", "invalid_query", "wait"),
    ("/events/marketdata", "invalid_query", "conid"),
    ("/events/marketdata?conid=0", "invalid_query", "conid"),
    ("/events/marketdata?conid=-5", "invalid_query", "conid"),
    ("/events/marketdata?conid=abc", "invalid_query", "conid"),
    ("/events/Orders", "invalid_topic", "topic"),
    # A trailing newline once slipped past the topic pattern's `$`.
    ("/events/orders%0A", "invalid_topic", "topic"),
    ("/events/orders%0A/history?since_cursor=0", "invalid_topic", "topic"),
    ("/events/orders/history?since_ts=yesterday", None, None),
]


@pytest.mark.parametrize(("path", "code", "names"), BAD_QUERIES)
async def test_bad_input_is_400_naming_the_parameter(serve, client, hub, path, code, names) -> None:
    with trio.fail_after(10):
        base = await _url(serve, hub)
        r = await client.get(f"{base}{path}")
    if code is None:  # history without the log answers 503 before parsing
        assert r.status_code == 503
        return
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == code
    assert names in body["message"]


async def test_unknown_path_is_404_envelope(serve, client, hub) -> None:
    with trio.fail_after(10):
        base = await _url(serve, hub)
        r = await client.get(f"{base}/nope")
        r2 = await client.post(f"{base}/events/orders")  # the fast path's 405
        r3 = await client.delete(f"{base}/events/_status")  # Quart's
        r4 = await client.request("OPTIONS", f"{base}/state/orders/7")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    for answer, method, path in (
        (r2, "POST", "/events/orders"),
        (r3, "DELETE", "/events/_status"),
        (r4, "OPTIONS", "/state/orders/7"),
    ):
        assert answer.status_code == 405, answer.text
        assert answer.json() == {
            "code": "method_not_allowed",
            "message": f"{method} is not allowed on {path}",
        }
        # RFC 9110 15.5.6: a 405 names the methods the target allows.
        assert answer.headers["allow"] == "GET, HEAD"


async def test_too_many_conids_is_429(serve, client) -> None:
    from helpers import capacity_of

    hub = Hub(capacity_of())
    await hub.open()
    wants = Wants(2)
    with trio.fail_after(10):
        base = await _url(serve, hub, wants=wants)
        assert (await client.get(f"{base}/events/marketdata?conid=1")).status_code == 200
        assert (await client.get(f"{base}/events/marketdata:2")).status_code == 200
        r = await client.get(f"{base}/events/marketdata?conid=3")
    assert r.status_code == 429 and r.json()["code"] == "too_many_conids"
    assert wants.wanted() == [1, 2]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "Basic s3cret"},
        {"authorization": "s3cret"},
    ],
)
async def test_token_required_everywhere_but_health(serve, client, hub, headers) -> None:
    hub.publish("orders", {"id": 1})
    # The poll fast path (a plain poll) and Quart (every other route, and a
    # poll the fast path hands over) check the token each on their own.
    paths = [
        "/events/orders",
        "/events/orders?since=0&limit=x",
        "/events/_status",
        "/events/orders/history",
        "/events/orders/stream",
        "/metrics",
        "/openapi.json",
    ]
    with trio.fail_after(10):
        base = await _url(serve, hub, token="s3cret")
        refused: dict[str, tuple[int, bytes]] = {}
        for path in paths:
            # Streamed: a stream let through would never end; its status is enough.
            async with client.stream("GET", f"{base}{path}", headers=headers) as r:
                refused[path] = (r.status_code, await r.aread() if r.status_code == 401 else b"")
        health = await client.get(f"{base}/health")
        ok = await client.get(f"{base}/events/orders", headers={"authorization": "Bearer s3cret"})
    assert {path: status for path, (status, _) in refused.items()} == dict.fromkeys(paths, 401)
    # the same answer whether the header was missing, malformed or wrong
    for _, body in refused.values():
        assert orjson.loads(body) == {
            "code": "unauthorized",
            "message": "send 'Authorization: Bearer <token>' with the token configured as http.token",
        }
        assert b"s3cret" not in body
    assert health.status_code == 200 and ok.status_code == 200


async def test_huge_query_string_is_rejected_and_daemon_keeps_serving(serve, hub) -> None:
    base = await _url(serve, hub)
    host, port = base.removeprefix("http://").split(":")
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream(host, int(port))
        request = (
            b"GET /events/orders?since="
            + b"1" * (10 * 1024 * 1024)
            + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        reply = b""
        try:
            await stream.send_all(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server hung up on the oversized request line
        try:
            reply = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            reply = b""
        await stream.aclose()
        assert reply == b"" or reply.split(b" ")[1].startswith(b"4")
        async with httpx.AsyncClient(verify=SSL_CONTEXT) as c:
            assert (await c.get(f"{base}/events/orders")).status_code == 200


async def test_bars_and_book_are_wanted_by_their_polls_and_bars_are_limited_to_five(
    serve, client
) -> None:
    hub = Hub(lambda topic: 100)
    await hub.open()
    ctx = HttpContext(hub=hub)
    with trio.fail_after(10):
        base = await serve(ctx)
        for conid in range(1, 6):
            assert (await client.get(f"{base}/events/bars?conid={conid}")).status_code == 200
        sixth = await client.get(f"{base}/events/bars:6")
        book = await client.get(f"{base}/events/book?conid=7")
        missing = await client.get(f"{base}/events/book")
    assert ctx.bars.wanted() == [1, 2, 3, 4, 5] and ctx.book.wanted() == [7]
    assert sixth.status_code == 429 and sixth.json()["code"] == "too_many_conids"
    assert "the gateway allows 5 at once" in sixth.json()["message"]
    assert book.status_code == 200
    assert missing.status_code == 400 and "conid is required" in missing.json()["message"]
    assert ctx.wants.wanted() == []  # market data is another demand
