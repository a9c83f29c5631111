"""Resync after a gap: the gateway's REST truth in the stream, and in the state views.

The simulator keeps its account's truth (``sim.truth``: every order, fill and
PnL row it ever generated, merged) and answers the three REST endpoints from
it, in the real shapes (corpus: rest.jsonl). A change recorded in the truth
while the daemon is disconnected is one the stream never carried: only a
resync can give it back.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import httpx
import orjson
import pytest
import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.cpapi.resync import Pacer, Resyncer
from bezant_trio.cpapi.session import GatewaySession
from bezant_trio.simulator import GatewaySimulator
from bezant_trio.simulator import frames as sim_frames
from bezant_trio.store.hub import Hub
from helpers import SSL_CONTEXT, capacity_of, serve_daemon, wait_until


@pytest.fixture
async def sim(nursery: trio.Nursery) -> GatewaySimulator:
    return await nursery.start(GatewaySimulator(heartbeat_interval=0.2).run)


def _config(sim: GatewaySimulator, **events: Any) -> Any:
    return config_from_mapping(
        {
            "gateway": {"url": sim.base_url, "request_timeout": 2},
            "http": {"bind": "127.0.0.1:0"},
            "events": {"backoff": {"min": 0.05, "max": 0.2}, **events},
        }
    )


def _resyncs(hub: Hub, topic: str) -> list[dict[str, Any]]:
    ring = hub._rings.get(topic)  # every event is still in the ring in these tests
    events = ring.events() if ring is not None else []
    return [e.payload for e in events if e.payload.get("reason") in ("resync", "resync_failed")]


async def test_a_resync_after_a_drop_gives_back_what_the_stream_missed(
    nursery: trio.Nursery, sim: GatewaySimulator
) -> None:
    with trio.fail_after(60):
        daemon = await nursery.start(serve_daemon, _config(sim))
        hub, connector = daemon.hub, daemon.connector
        assert hub is not None and connector is not None
        await wait_until(lambda: len(_resyncs(hub, "orders")) == 1)  # the first session's
        await sim.emit_orders(4)  # order A: new, submitted, filled; order B: new
        await wait_until(lambda: hub.head("orders") >= 5)
        epoch = hub.reset_epoch
        sim.silence_websocket(True)  # the next socket opens but never speaks
        await sim.drop_connections("abrupt")
        # While nobody listens, order B is submitted: the stream will never say so.
        sim.truth.record_frame(sim_frames.order_frame(5, sim_frames.now_ms()))
        sim.silence_websocket(False)
        await sim.drop_connections("abrupt")
        await wait_until(lambda: hub.reset_epoch > epoch and len(_resyncs(hub, "orders")) == 2)
        await wait_until(lambda: len(_resyncs(hub, "pnl")) == 2)
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            state = (await client.get(f"{daemon.http_url}/state/orders")).json()
            events = (await client.get(f"{daemon.http_url}/events/orders?since=0")).json()
    resync = _resyncs(hub, "orders")[-1]
    assert resync["reason"] == "resync" and resync["source"] == "/iserver/account/orders?force=true"
    assert resync["new_reset_epoch"] == hub.reset_epoch
    truth = sim.truth.orders_body()["orders"]
    assert resync["data"]["orders"] == truth
    # The state views merged the resync: order B is Submitted though no frame said so.
    for order in truth:
        merged = state["items"][str(order["orderId"])]
        assert {k: merged[k] for k in order} == order
    statuses = {o["orderId"]: o["status"] for o in truth}
    assert sorted(statuses.values()) == ["Filled", "Submitted"]
    # In the stream: the gap comes before the resync, the resync after every sor it supersedes.
    payloads = [e["payload"] for e in events["events"]]
    reasons = [p.get("reason") for p in payloads]
    last_gap = max(i for i, r in enumerate(reasons) if r == "reconnected_after_disconnect")
    assert reasons.index("resync", last_gap) > last_gap


async def test_pnl_and_trades_are_resynced_when_captured(
    nursery: trio.Nursery, sim: GatewaySimulator
) -> None:
    with trio.fail_after(60):
        daemon = await nursery.start(
            serve_daemon, _config(sim, channels=["orders", "pnl", "trades"])
        )
        hub = daemon.hub
        await wait_until(lambda: hub.head("trades") >= 1)  # subscribed
        await sim.emit_trades(2)
        await sim.emit_pnl(1)
        await wait_until(
            lambda: len(_resyncs(hub, "pnl")) == 1 and len(_resyncs(hub, "trades")) == 1
        )
        epoch = hub.reset_epoch
        await sim.drop_connections("abrupt")
        await wait_until(lambda: hub.reset_epoch > epoch)
        await wait_until(
            lambda: len(_resyncs(hub, "trades")) == 2 and len(_resyncs(hub, "pnl")) == 2
        )
    trades, pnl = _resyncs(hub, "trades")[-1], _resyncs(hub, "pnl")[-1]
    assert trades["source"] == "/iserver/account/trades"
    assert trades["data"] == sim.truth.trades_body() and len(trades["data"]) == 2
    assert pnl["source"] == "/iserver/account/pnl/partitioned"
    assert pnl["data"] == sim.truth.pnl_body()
    assert hub.state.answer(hub.state.pnl, 0)["items"] == sim.truth.pnl_body()["upnl"]


async def test_a_resync_that_fails_is_retried_then_reported(sim: GatewaySimulator) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    session = GatewaySession(sim.base_url, verify_tls=False, timeout=0.2)
    fast = Pacer(interval=0.01, rate=1000)
    resyncer = Resyncer(
        hub, session, ["orders"], pacer=fast, attempts=3, retry=(0.01, 0.02), rng=random.Random(1)
    )
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(resyncer.run)
                sim.hang_rest(True)  # accepts, never answers: every attempt times out
                resyncer.request()
                await wait_until(lambda: resyncer.completed == 1)
                sim.hang_rest(False)
                resyncer.request()
                await wait_until(lambda: resyncer.completed == 2)
                nursery.cancel_scope.cancel()
    finally:
        await session.aclose()
    failed, ok = (orjson.loads(e.payload_json) for e in resyncer.published)
    assert failed["reason"] == "resync_failed" and "did not answer" in failed["error"]
    assert failed["source"] == "/iserver/account/orders?force=true"
    assert ok["reason"] == "resync" and ok["data"] == sim.truth.orders_body()


class _CountingSession:
    """Answers instantly and records when each path was asked (pacing is the subject)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[float, str, tuple[tuple[str, str], ...]]] = []

    async def get_json(self, path: str, *, params: dict[str, str] | None = None) -> Any:
        self.calls.append((trio.current_time(), path, tuple(sorted((params or {}).items()))))
        return self.answers[path]


async def test_a_flapping_connection_coalesces_its_resyncs_within_ibkr_s_pacing(
    autojump_clock: object,
) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    session = _CountingSession(
        {
            "/iserver/account/orders": {"orders": [{"orderId": 1}], "snapshot": True},
            "/iserver/account/pnl/partitioned": {"upnl": {}},
        }
    )
    resyncer = Resyncer(hub, session, ["orders", "pnl"])  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resyncer.run)
        for _ in range(10):  # ten reconnects in two seconds
            resyncer.request()
            await trio.sleep(0.2)
        await wait_until(lambda: resyncer.completed >= 2 and not resyncer._wanted.is_set())
        nursery.cancel_scope.cancel()
    # Ten requests, two rounds: one running, the other nine coalesced into one more.
    assert resyncer.requested == 10 and resyncer.completed == 2
    for path in ("/iserver/account/orders", "/iserver/account/pnl/partitioned"):
        times = [t for t, p, _ in session.calls if p == path]
        assert len(times) == 2
        assert times[1] - times[0] >= 5.0  # IBKR: one request per endpoint every 5 s
    every = [t for t, _, _ in session.calls]
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(every))  # <= 10/s


async def test_an_empty_forced_orders_answer_is_asked_again_plainly(autojump_clock: object) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    answers = {"/iserver/account/orders": []}  # what IBKR's OpenAPI says force=true answers

    class _ForceEmpty(_CountingSession):
        async def get_json(self, path: str, *, params: dict[str, str] | None = None) -> Any:
            await super().get_json(path, params=params)
            return [] if params else {"orders": [{"orderId": 9, "status": "Submitted"}]}

    session = _ForceEmpty(answers)
    resyncer = Resyncer(hub, session, ["orders"])  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resyncer.run)
        resyncer.request()
        await wait_until(lambda: resyncer.completed == 1)
        nursery.cancel_scope.cancel()
    assert [params for _, _, params in session.calls] == [(("force", "true"),), ()]
    (event,) = resyncer.published
    assert event.payload["source"] == "/iserver/account/orders"
    assert event.payload["data"]["orders"][0]["orderId"] == 9


async def test_an_orders_answer_older_than_updates_captured_meanwhile_never_takes_an_order_back(
    autojump_clock: object,
) -> None:
    # The gateway answers from what it held when the call arrived: order 7
    # PreSubmitted. While the answer travels, the stream carries its fill,
    # which the daemon publishes first. The resync, published after the fill,
    # must not undo it, for a bot merging in cursor order nor for /state/orders.
    hub = Hub(capacity_of())
    await hub.open()
    snapshot = {
        "orders": [
            {"orderId": 7, "status": "PreSubmitted", "filledQuantity": 0.0, "ticker": "AAPL"},
            {"orderId": 8, "status": "Submitted", "filledQuantity": 0.0},
        ],
        "snapshot": True,
    }
    hub.publish("orders", {"topic": "sor", "args": [{"orderId": 7, "status": "PreSubmitted"}]})

    class _FillWhileAsked(_CountingSession):
        async def get_json(self, path: str, *, params: dict[str, str] | None = None) -> Any:
            answer = orjson.loads(orjson.dumps(snapshot))  # taken as the call arrives
            await trio.sleep(0.3)  # ... while the answer travels, the stream goes on:
            hub.publish(
                "orders",
                {
                    "topic": "sor",
                    "args": [{"orderId": 7, "status": "Filled", "filledQuantity": 100.0}],
                },
            )
            hub.publish("orders", {"topic": "sor", "args": [{"orderId": 9, "status": "Submitted"}]})
            await trio.sleep(0.3)
            self.calls.append((trio.current_time(), path, ()))
            return answer

    resyncer = Resyncer(hub, _FillWhileAsked({}), ["orders"])  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resyncer.run)
        resyncer.request()
        await wait_until(lambda: resyncer.completed == 1)
        nursery.cancel_scope.cancel()
    (event,) = resyncer.published
    assert event.cursor == 4  # after the fill (2) and order 9 (3)
    records = {r["orderId"]: r for r in event.payload["data"]["orders"]}
    assert records[7] == {
        "orderId": 7, "status": "Filled", "filledQuantity": 100.0, "ticker": "AAPL"
    }  # fmt: skip
    assert records[8]["status"] == "Submitted"
    assert 9 not in records  # not in the answer: the stream gave it already
    # A bot merging every event in cursor order ends where the gateway is.
    bot: dict[int, dict[str, Any]] = {}
    for e in _ring_events(hub, "orders"):
        payload = e.payload
        listed = payload["data"]["orders"] if payload.get("reason") == "resync" else payload["args"]
        for record in listed:
            bot.setdefault(record["orderId"], {}).update(record)
    assert bot[7]["status"] == "Filled" and bot[9]["status"] == "Submitted"
    # And so does the daemon's own view.
    assert hub.state.orders.items["7"]["status"] == "Filled"


def _ring_events(hub: Hub, topic: str) -> list[Any]:
    ring = hub._rings.get(topic)
    return ring.events() if ring is not None else []
