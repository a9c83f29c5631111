"""Delivery: order, topic globs, at-least-once under failures, isolation, lag gaps, reload."""

from __future__ import annotations

import httpx
import orjson
import pytest
import trio
import trio.testing

from bezant_trio.http.context import HttpContext
from bezant_trio.model import GapReason
from bezant_trio.sinks.manager import SinkConfigError, SinkManager
from bezant_trio.sinks.testing import TestSink
from bezant_trio.store.hub import Hub
from helpers import SSL_CONTEXT


def _assert_in_order(sink: TestSink, topic: str, expected: list[int]) -> None:
    assert sink.cursors(topic) == expected
    for batch in sink.batches:
        assert len({e.topic for e in batch}) == 1, "a batch mixes topics"
        cursors = [e.cursor for e in batch]
        assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)


async def test_every_event_reaches_every_subscribed_sink_in_cursor_order(
    bezant_sink_manager_factory, autojump_clock
):
    with trio.fail_after(60):
        manager = await bezant_sink_manager_factory(
            [
                {"name": "all", "type": "test", "batch_size": 7},
                {"name": "orders-only", "type": "test", "topics": ["orders"]},
                {"name": "md", "type": "test", "topics": ["marketdata:*"], "batch_size": 3},
            ]
        )
        hub: Hub = manager.hub
        for i in range(40):
            hub.publish("orders", {"i": i})
            hub.publish("pnl", {"i": i})
            hub.publish(f"marketdata:{1 + i % 2}", {"i": i})
            if i % 5 == 0:
                await trio.sleep(0.01)
        # A topic that appears only after the sinks started is picked up too.
        for i in range(4):
            hub.publish("marketdata:3", {"i": i})

        everything, orders_only, md = (manager.sinks[n] for n in ("all", "orders-only", "md"))
        await everything.wait_for(40 + 40 + 40 + 4)
        await orders_only.wait_for(40)
        await md.wait_for(44)

    _assert_in_order(everything, "orders", list(range(1, 41)))
    _assert_in_order(everything, "pnl", list(range(1, 41)))
    _assert_in_order(everything, "marketdata:1", list(range(1, 21)))
    _assert_in_order(everything, "marketdata:3", [1, 2, 3, 4])
    assert {e.topic for e in orders_only.events} == {"orders"}
    _assert_in_order(orders_only, "orders", list(range(1, 41)))
    assert {e.topic for e in md.events} == {"marketdata:1", "marketdata:2", "marketdata:3"}
    assert all(len(b) <= 3 for b in md.batches)
    assert orjson.loads(everything.events_for("orders")[0].json)["payload"] == {"i": 0}


async def test_random_failures_still_deliver_everything_at_least_once(
    bezant_sink_manager_factory, autojump_clock
):
    with trio.fail_after(60):
        manager = await bezant_sink_manager_factory(
            [
                {
                    "name": "flaky",
                    "type": "test",
                    "batch_size": 10,
                    "fail_rate": 0.3,
                    "seed": 7,
                    "retry": {"min": 0.5, "max": 4},
                }
            ]
        )
        hub = manager.hub
        for i in range(300):
            hub.publish("orders" if i % 3 else "pnl", {"i": i})
            if i % 25 == 0:
                await trio.lowlevel.checkpoint()
        sink: TestSink = manager.sinks["flaky"]
        await sink.wait_for(300, timeout=3600)

    _assert_in_order(sink, "orders", list(range(1, 201)))
    _assert_in_order(sink, "pnl", list(range(1, 101)))
    assert sink.failed, "a 30% failure rate should have failed some deliveries"
    status = manager.status()["flaky"]
    assert status["failures"] == len(sink.failed) == len(sink.attempts) - len(sink.batches)
    assert status["delivered"] == 300 and status["lag"] == 0
    # A failed batch is retried as is, before anything later of its topic, so an
    # event is offered again only when the attempt holding it failed.
    for index in sink.failed:
        attempt = sink.attempts[index]
        later = [a for a in sink.attempts[index + 1 :] if a[0].topic == attempt[0].topic]
        assert later[0] == attempt
    offered: dict[tuple[str, int], int] = {}
    for attempt in sink.attempts:
        for event in attempt:
            offered[event.topic, event.cursor] = offered.get((event.topic, event.cursor), 0) + 1
    failures_of: dict[tuple[str, int], int] = {}
    for index in sink.failed:
        for event in sink.attempts[index]:
            key = (event.topic, event.cursor)
            failures_of[key] = failures_of.get(key, 0) + 1
    assert all(count == 1 + failures_of.get(key, 0) for key, count in offered.items())


async def test_a_stuck_sink_lags_alone_while_a_fast_sink_and_a_poller_get_everything(
    bezant_sink_manager_factory, serve
):
    count = 2000
    hub = Hub(capacity_for=lambda topic: 10 * count)
    await hub.open()
    sinks = [{"name": "fast", "type": "test"}, {"name": "stuck", "type": "test"}]
    manager: SinkManager = await bezant_sink_manager_factory(sinks, hub=hub, pm=None)
    fast: TestSink = manager.sinks["fast"]
    stuck: TestSink = manager.sinks["stuck"]
    stuck.block()
    polled: list[int] = []
    lags: list[int] = []
    with trio.fail_after(30):
        base = await serve(HttpContext(hub=hub))

        async def poll(client: httpx.AsyncClient) -> None:
            since = 0
            while since < count:
                r = await client.get(
                    f"{base}/events/orders", params={"since": since, "limit": 500, "wait": 5}
                )
                assert r.status_code in (200, 204), r.text
                if r.status_code == 200:
                    polled.extend(e["cursor"] for e in r.json()["events"])
                    since = r.json()["next_cursor"]

        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(poll, client)
            for i in range(count):
                hub.publish("orders", {"i": i})
                if i % 250 == 249:
                    lags.append(manager.status()["stuck"]["lag"])
                await trio.lowlevel.checkpoint()  # let the readers run between events
        await fast.wait_for(count)
        await stuck.wait_blocked()
        status = manager.status()
    # Everyone else got everything, in order, while the stuck sink held its first batch.
    assert polled == list(range(1, count + 1))
    _assert_in_order(fast, "orders", list(range(1, count + 1)))
    assert stuck.events == [] and status["stuck"]["lag"] == count
    assert status["fast"]["lag"] == 0
    # The stuck sink's lag only grew meanwhile.
    assert lags == sorted(lags) and lags[0] < lags[-1]
    stuck.unblock()  # let teardown finish quickly


async def test_sink_lagged_gap_when_checkpoint_is_behind_an_expired_ring(
    bezant_sink_manager_factory,
):
    hub = Hub(capacity_for=lambda topic: 10)
    await hub.open()
    with trio.fail_after(10):
        manager = await bezant_sink_manager_factory([{"name": "slow", "type": "test"}], hub=hub)
        sink: TestSink = manager.sinks["slow"]
        sink.block()
        for i in range(5):
            hub.publish("orders", {"i": i})
        await sink.wait_blocked()  # holding cursors 1..5
        for i in range(5, 35):
            hub.publish("orders", {"i": i})  # the ring now keeps 26..35 only
        sink.unblock()
        await sink.wait_for(16)
        hub.publish("orders", {"i": 35})
        await sink.wait_for(17)

    # Only what is gone (6..25) is skipped: the sink goes on with everything kept.
    assert sink.cursors("orders") == [1, 2, 3, 4, 5, 25, *range(26, 37)]
    gap = sink.events[5]
    assert gap.topic == "orders" and gap.reset_epoch == hub.reset_epoch
    assert gap.payload == {
        "reason": str(GapReason.SINK_LAGGED),
        "new_reset_epoch": hub.reset_epoch,
        "skipped_from": 5,
        "resumed_at": 25,
    }
    assert manager.status()["slow"]["checkpoints"] == {"orders": 36}


async def test_gap_events_are_delivered_like_any_event(bezant_sink_manager_factory):
    with trio.fail_after(10):
        manager = await bezant_sink_manager_factory(
            [{"name": "t", "type": "test", "topics": ["orders", "gap"]}]
        )
        hub: Hub = manager.hub
        hub.publish("orders", {"i": 1})
        await hub.bump_epoch(GapReason.RECONNECTED_AFTER_DISCONNECT)
        sink: TestSink = manager.sinks["t"]
        await sink.wait_for(3)
    assert sink.cursors("orders") == [1, 2]
    assert sink.events_for("orders")[1].payload["reason"] == "reconnected_after_disconnect"
    assert sink.cursors("gap") == [1]


async def test_status_reports_progress_failures_and_lag(
    bezant_sink_manager_factory, autojump_clock
):
    with trio.fail_after(60):
        manager = await bezant_sink_manager_factory(
            [{"name": "t", "type": "test", "topics": ["orders", "pnl"], "retry": {"min": 2}}]
        )
        hub: Hub = manager.hub
        sink: TestSink = manager.sinks["t"]
        sink.fail_next(2)
        hub.publish("orders", {"i": 1})
        await sink.wait_until(lambda: len(sink.attempts) == 2)
        status = manager.status()["t"]
        assert status["state"] == "retrying"
        assert status["failures"] == 2 and status["lag"] == 1
        assert "injected failure" in status["last_error"]
        hub.publish("pnl", {"i": 1})
        await sink.wait_for(2)

    status = manager.status()["t"]
    assert status["type"] == "test"
    assert status["topics"] == ["orders", "pnl"]
    assert status["checkpoints"] == {"orders": 1, "pnl": 1}
    assert status["lag"] == 0 and status["delivered"] == 2 and status["failures"] == 2
    assert status["state"] == "running"
    assert status["last_delivered_at"].endswith("Z")


async def test_reload_adds_removes_and_changes_sinks_live(bezant_sink_manager_factory):
    with trio.fail_after(10):
        manager: SinkManager = await bezant_sink_manager_factory(
            [
                {"name": "keep", "type": "test"},
                {"name": "drop", "type": "test"},
                {"name": "change", "type": "test", "topics": ["orders"]},
            ]
        )
        hub: Hub = manager.hub
        keep, drop, change = (manager.sinks[n] for n in ("keep", "drop", "change"))
        hub.publish("orders", {"i": 1})
        hub.publish("pnl", {"i": 1})
        await change.wait_for(1)
        await keep.wait_for(2)

        with pytest.raises(SinkConfigError, match="unknown sink type 'nope'"):
            await manager.reload([{"name": "keep", "type": "test"}, {"name": "x", "type": "nope"}])
        assert set(manager.sinks) == {"keep", "drop", "change"}

        await manager.reload(
            [
                {"name": "keep", "type": "test"},
                {"name": "change", "type": "test", "topics": ["orders", "pnl"]},
                {"name": "new", "type": "test", "topics": ["pnl"]},
            ]
        )
        assert list(manager.sinks) == ["keep", "change", "new"]
        assert manager.sinks["keep"] is keep
        assert drop.closed and change.closed
        changed: TestSink = manager.sinks["change"]
        new: TestSink = manager.sinks["new"]
        hub.publish("orders", {"i": 2})
        # The changed sink resumes from its checkpoint: orders 2 and pnl 1, not orders 1.
        await changed.wait_for(2)
        await new.wait_for(1)
        await keep.wait_for(3)
    assert sorted((e.topic, e.cursor) for e in changed.events) == [("orders", 2), ("pnl", 1)]
    assert new.cursors("pnl") == [1]
    assert "drop" not in manager.status()


async def test_aclose_lets_the_batch_in_flight_finish(bezant_sink_manager_factory):
    with trio.fail_after(10):
        manager: SinkManager = await bezant_sink_manager_factory([{"name": "t", "type": "test"}])
        sink: TestSink = manager.sinks["t"]
        sink.block()
        manager.hub.publish("orders", {"i": 1})
        await sink.wait_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager.aclose, trio.current_time() + 5)
            await trio.testing.wait_all_tasks_blocked()  # aclose waits for the batch
            assert not sink.closed
            sink.unblock()
        assert sink.cursors("orders") == [1]
        assert sink.closed
        assert manager.status()["t"]["state"] == "stopped"
        await manager.aclose(trio.current_time() + 5)  # idempotent


async def test_event_published_right_after_a_sink_starts_is_not_missed(
    bezant_sink_manager_factory, autojump_clock
):
    with trio.fail_after(60):
        manager: SinkManager = await bezant_sink_manager_factory([{"name": "t", "type": "test"}])
        manager.hub.publish("orders", {"i": 0})
        await manager.sinks["t"].wait_for(1)
        # Trio runs ready tasks in a random order, so try the race several times.
        for attempt in range(1, 11):
            # Restarted from its checkpoint, caught up (checkpoint == head) ...
            await manager.reload([{"name": "t", "type": "test", "batch_size": 10 + attempt}])
            # ... then an event lands before the new task's watchers first ran.
            manager.hub.publish("orders", {"i": attempt})
            await manager.sinks["t"].wait_for(1)
            assert manager.sinks["t"].cursors("orders") == [attempt + 1]
