"""The connector against the gateway simulator over real sockets."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.cpapi import connector as connector_module
from bezant_trio.cpapi.connector import Connector
from bezant_trio.cpapi.session import GatewayUnreachable
from bezant_trio.cpapi.transport import CLIENTS
from bezant_trio.http.context import HttpContext
from bezant_trio.simulator import GatewaySimulator
from bezant_trio.store.hub import Hub
from bezant_trio.testing import LeanClient
from bezant_trio.util import backoff_delay
from bezant_trio.wants import Wants
from helpers import capacity_of, seq_of, wait_until

#: The bound of one outage round (drop or stall, reconnect, resubscribe).
ROUND = 10


@pytest.fixture
async def sim(nursery: trio.Nursery) -> AsyncIterator[GatewaySimulator]:
    simulator = GatewaySimulator(heartbeat_interval=0.2)
    await nursery.start(simulator.run)
    yield simulator
    simulator.stop()


#: Connector knobs the tests turn, and where they live in the config.
_KEYS = {
    "heartbeat_timeout": ("events", "heartbeat_timeout"),
    "ready_timeout": ("events", "ready_timeout"),
    "backoff_min": ("events", "backoff", "min"),
    "backoff_max": ("events", "backoff", "max"),
    "idle_unsubscribe": ("events", "marketdata", "idle_unsubscribe"),
    "resubscribe_interval": ("events", "marketdata", "resubscribe_interval"),
    "tickle_interval": ("gateway", "tickle_interval"),
    "websocket_client": ("gateway", "websocket_client"),
    "verify_tls": ("gateway", "verify_tls"),
    "resync": ("events", "resync"),
}


def _connector(hub: Hub, url: str, **overrides: object) -> Connector:
    """A connector to ``url`` with fast test timings, ``overrides`` by knob name."""
    knobs: dict[str, object] = {
        "heartbeat_timeout": 5,
        "ready_timeout": 2,
        "backoff_min": 0.01,
        "backoff_max": 0.05,
        "tickle_interval": 60,
        # These tests count events exactly; tests/cpapi/test_resync.py covers resyncs.
        "resync": False,
        **overrides,
    }
    data: dict[str, Any] = {"gateway": {"url": url}}
    for knob, value in knobs.items():
        *sections, key = _KEYS[knob]
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    config = config_from_mapping(data)
    wants = Wants(config.events.marketdata.max_conids)
    return Connector(hub, gateway=config.gateway, events=config.events, wants=wants, seed=1)


async def _start(
    nursery: trio.Nursery, sim: GatewaySimulator, hub: Hub | None = None, **kw: object
) -> Connector:
    if hub is None:
        hub = Hub(capacity_of(default=100_000))
        await hub.open()
    conn = _connector(hub, sim.base_url, **kw)
    await nursery.start(conn.run)
    await sim.wait_subscribed("orders", timeout=10)
    await sim.wait_subscribed("pnl", timeout=10)
    return conn


@pytest.mark.parametrize("client", CLIENTS)
async def test_events_are_captured_under_their_topics(nursery, sim, client) -> None:
    with trio.fail_after(15):
        conn = await _start(nursery, sim, websocket_client=client)
        hub = conn.hub
        conn.wants.want(265598)
        await sim.wait_subscribed("marketdata:265598", timeout=10)
        await sim.emit_orders(3)
        await sim.emit_pnl(2)
        await sim.emit_marketdata(265598, 4)
        await wait_until(lambda: hub.head("marketdata:265598") == 4 and hub.head("orders") == 3)
    assert [seq_of(e) for e in (await hub.read("orders", 0, 10)).events] == [1, 2, 3]
    assert [seq_of(e) for e in (await hub.read("pnl", 0, 10)).events] == [1, 2]
    md = (await hub.read("marketdata:265598", 0, 10)).events
    assert [seq_of(e) for e in md] == [1, 2, 3, 4]
    assert md[0].payload["topic"] == "smd+265598"  # the frame, as received
    status = conn.status()
    assert status["connected"] is True and status["reconnect_count"] == 0
    assert {"orders", "pnl", "marketdata:265598"} <= set(status["topics_subscribed"])
    assert status["last_message_at"].endswith("Z")
    # act and sts frames are captured under their own names (capture_other)
    assert hub.head("act") >= 1 and hub.head("sts") >= 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_no_loss_with_a_poller_reading_random_pages(nursery, sim, serve, client) -> None:
    """10,000 numbered events across topics; the HTTP poller sees each once, in order."""
    with trio.fail_after(60):
        conn = await _start(nursery, sim, websocket_client=client)
        hub = conn.hub
        conn.wants.want(8314)
        await sim.wait_subscribed("marketdata:8314", timeout=10)
        base = await serve(HttpContext(hub=hub))
        totals = {"orders": 4000, "pnl": 2000, "marketdata:8314": 4000}
        seen: dict[str, list[int]] = {t: [] for t in totals}
        rng = random.Random(7)

        async def produce() -> None:
            for _ in range(40):
                await sim.emit_orders(100)
                await sim.emit_pnl(50)
                await sim.emit_marketdata(8314, 100)

        async def consume(topic: str) -> None:
            since = 0
            # The lean client: httpx's own CPU per request was most of this test's.
            async with LeanClient(timeout=30) as client:
                while len(seen[topic]) < totals[topic]:
                    limit = rng.randint(1, 700)
                    r = await client.get(
                        f"{base}/events/{topic}", params={"since": since, "limit": limit, "wait": 2}
                    )
                    assert r.status_code in (200, 204), r.text
                    if r.status_code == 200:
                        events = r.json()["events"]
                        assert len(events) <= limit
                        seen[topic] += [seq_of(e) for e in events]
                        since = r.json()["next_cursor"]
                    if rng.random() < 0.05:
                        await trio.sleep(rng.random() / 20)  # a poller that pauses

        async with trio.open_nursery() as inner:
            inner.start_soon(produce)
            for topic in totals:
                inner.start_soon(consume, topic)
    for topic, total in totals.items():
        assert seen[topic] == list(range(1, total + 1)), topic


@pytest.mark.timeout(150)  # 60 outages, each round bounded (its own bound: 120 s)
async def test_drops_and_stalls_bump_epoch_inject_gaps_and_restore_subscriptions(
    nursery, sim
) -> None:
    # The default client only: the cheaper tests above and below run both.
    # Each round has its own bound: a reconnect takes well under a second (a
    # stall: the 1 s heartbeat timeout more), so a broken one fails in seconds.
    with trio.fail_after(120):
        conn = await _start(nursery, sim, heartbeat_timeout=1.0)
        hub = conn.hub
        conn.wants.want(265598)
        await sim.wait_subscribed("marketdata:265598", timeout=10)
        outages = sent = 0
        md = "marketdata:265598"
        for round_ in range(60):
            with trio.fail_after(ROUND):
                await sim.emit_orders(5)
                await sim.emit_marketdata(265598, 5)
                sent += 5
                # cursors are contiguous per topic: head = frames + one gap per outage
                await wait_until(
                    lambda n=sent + outages: hub.head("orders") == n and hub.head(md) == n
                )
                epoch = hub.reset_epoch
                if round_ % 6 == 5:
                    sim.stall()  # open but silent: the heartbeat watchdog must notice
                    await wait_until(lambda e=epoch: hub.reset_epoch > e)
                    sim.unstall()
                else:
                    await sim.drop_connections("abrupt" if round_ % 2 else "close")
                outages += 1
                await wait_until(lambda e=epoch: hub.reset_epoch > e)
                await sim.wait_subscribed("orders", timeout=ROUND)
                await sim.wait_subscribed(md, timeout=ROUND)
        await sim.emit_orders(5)
        await sim.emit_marketdata(265598, 5)
        sent += 5
        await wait_until(
            lambda: hub.head("orders") >= sent + outages and hub.head(md) >= sent + outages
        )
        # The daemon can have a frame before the simulator's writer, back from
        # the send, has noted it as written (CI once met the last one, 305).
        await sim.wait_written("orders", sent)
        await sim.wait_written(md, sent)
    assert conn.reconnect_count == outages == 60
    assert hub.reset_epoch == 1 + outages
    for topic, channel in (("orders", "orders"), ("marketdata:265598", "marketdata:265598")):
        events = []
        since = 0
        while True:
            page = await hub.read(topic, since, 1000)
            if not page.events:
                break
            events += page.events
            since = page.next_cursor
        gaps = [e for e in events if "reason" in e.payload]
        captured = [seq_of(e) for e in events if "reason" not in e.payload]
        assert len(gaps) == outages, topic
        assert {g.payload["reason"] for g in gaps} == {"reconnected_after_disconnect"}
        assert [g.payload["new_reset_epoch"] for g in gaps] == list(range(2, outages + 2))
        # every frame the simulator wrote to a socket was captured, once, in order
        written = sim.written(channel)
        assert captured == sorted(captured) and len(set(captured)) == len(captured)
        expected = {s for s in range(1, (written.last or 0) + 1) if s in written}
        assert set(captured) == expected, (
            topic,
            sorted(expected - set(captured)),
            sorted(set(captured) - expected),
        )
    gap_topic = (await hub.read("gap", 0, 1000)).events
    assert len(gap_topic) == outages


async def test_subscribes_sent_before_ready_are_resent_when_it_arrives(nursery) -> None:
    simulator = GatewaySimulator(ready_delay=0.5)
    await nursery.start(simulator.run)
    with trio.fail_after(20):
        hub = Hub(capacity_of())
        await hub.open()
        conn = _connector(hub, simulator.base_url, ready_timeout=0.05)
        await nursery.start(conn.run)
        await simulator.wait_subscribed("orders", timeout=10)
        await simulator.emit_orders(2)
        await wait_until(lambda: hub.head("orders") == 2)
    assert simulator.dropped_before_ready >= 2  # the early sor/spl were dropped
    simulator.stop()


@pytest.mark.parametrize("client", CLIENTS)
async def test_bad_frames_only_move_counters(nursery, sim, client) -> None:
    with trio.fail_after(15):
        conn = await _start(nursery, sim, websocket_client=client)
        await sim.send_malformed()
        await sim.send_binary(b"\x00\x01binary junk")
        await sim.send_invalid_utf8()
        await sim.send_binary()  # a JSON ntf frame in a binary message is captured
        await sim.emit_orders(1)
        await wait_until(lambda: conn.hub.head("orders") == 1 and conn.hub.head("ntf") == 1)
    frames = conn.status()["frames"]
    assert frames["malformed"] == 2 and frames["non_utf8"] == 1 and frames["binary"] == 3
    assert conn.connected and conn.reconnect_count == 0


@pytest.mark.parametrize("client", CLIENTS)
async def test_auth_lost_frame_reconnects(nursery, sim, client) -> None:
    with trio.fail_after(15):
        conn = await _start(nursery, sim, websocket_client=client)
        await sim.send_auth_status(authenticated=False)
        await wait_until(lambda: conn.reconnect_count == 1 and conn.connected)
    assert conn.hub.reset_epoch == 2
    assert "authenticated=false" in conn.status()["last_disconnect"]["reason"]
    assert conn.last_error is None  # cleared by the healthy connection that followed


async def test_tickle_401_is_a_failed_attempt_with_a_clear_error(nursery, sim) -> None:
    sim.set_authenticated(False)
    with trio.fail_after(15):
        hub = Hub(capacity_of())
        await hub.open()
        conn = _connector(hub, sim.base_url)
        await nursery.start(conn.run)
        await wait_until(lambda: sim.tickle_count >= 3)
        assert not conn.connected and "401" in (conn.last_error or "")
        assert "401" in conn.status_line()
        sim.set_authenticated(True)
        await sim.wait_subscribed("orders", timeout=10)
    assert conn.connected


async def test_idle_conids_are_unsubscribed_and_resubscribed_periodically(nursery, sim) -> None:
    with trio.fail_after(20):
        conn = await _start(nursery, sim, idle_unsubscribe=0.4, resubscribe_interval=0.1)
        conn.wants.want(265598)
        await sim.wait_subscribed("marketdata:265598", timeout=10)
        await wait_until(lambda: sum(c["text"].startswith("smd+265598") for c in sim.commands) >= 3)
        await wait_until(lambda: not sim.subscribers("marketdata:265598"))
    assert any(c["text"].startswith("umd+265598") for c in sim.commands)
    assert conn.wants.wanted() == []


@pytest.mark.parametrize("client", CLIENTS)
async def test_tls_self_signed_works_without_verification_and_fails_clearly_with(
    nursery, client
) -> None:
    simulator = GatewaySimulator(tls=True)
    await nursery.start(simulator.run)
    with trio.fail_after(20):
        hub = Hub(capacity_of())
        await hub.open()
        ok = _connector(hub, simulator.base_url, websocket_client=client, verify_tls=False)
        await nursery.start(ok.run)
        await simulator.wait_subscribed("orders", timeout=10)
        strict = _connector(
            Hub(capacity_of()), simulator.base_url, websocket_client=client, verify_tls=True
        )
        await nursery.start(strict.run)
        await wait_until(lambda: strict.last_error is not None)
    assert ok.connected
    assert not strict.connected
    assert "TLS verification" in strict.last_error and "verify_tls" in strict.last_error
    simulator.stop()


def test_backoff_delay_grows_with_jitter_and_caps() -> None:
    rng = random.Random(3)
    for attempt in range(1, 12):
        ceiling = min(60.0, 1.0 * 2 ** (attempt - 1))
        delay = backoff_delay(attempt, 1.0, 60.0, rng)
        assert ceiling / 2 <= delay <= ceiling


async def test_backoff_grows_while_failing_and_resets_after_a_healthy_connection(
    nursery, autojump_clock, monkeypatch
) -> None:
    delays: list[float] = []
    plan = ["fail"] * 5 + ["healthy"] + ["fail"] * 2

    async def fake_connect(self: Connector, session: object) -> bool:
        if self.next_retry_in is not None:
            delays.append(self.next_retry_in)
        step = plan.pop(0) if plan else "fail"
        if step == "healthy":
            await trio.sleep(120)  # up longer than backoff.max
            return True
        raise GatewayUnreachable("down")

    monkeypatch.setattr(connector_module.Connector, "_connect_once", fake_connect)
    hub = Hub(capacity_of())
    await hub.open()
    conn = _connector(hub, "http://127.0.0.1:9", backoff_min=1, backoff_max=60)
    conn_delays: list[float] = []
    original = trio.sleep

    async def recording_sleep(seconds: float) -> None:
        if conn.next_retry_in is not None:
            conn_delays.append(seconds)
        await original(seconds)

    monkeypatch.setattr(connector_module.trio, "sleep", recording_sleep)
    with trio.fail_after(10_000):
        nursery.start_soon(conn.run)
        while len(conn_delays) < 8:
            await original(1)
    ceilings = [1, 2, 4, 8, 16, 1, 2, 4]
    for delay, ceiling in zip(conn_delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_the_websocket_client_comes_from_the_config() -> None:
    chosen = _connector(Hub(capacity_of()), "http://127.0.0.1:9", websocket_client="Trio-WebSocket")
    assert chosen.gateway.websocket_client == "trio-websocket"
    assert (
        _connector(Hub(capacity_of()), "http://127.0.0.1:9").gateway.websocket_client == "wsproto"
    )
