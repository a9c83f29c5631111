"""The hub: cursor assignment, epochs and gaps, long-poll waits, conid wants."""

from __future__ import annotations

import orjson
import pytest
import trio

from bezant_trio.model import GapReason
from bezant_trio.store.hub import Hub
from helpers import capacity_of


async def test_publish_assigns_increasing_cursors_per_topic(hub: Hub) -> None:
    a = hub.publish("orders", {"id": 1})
    b = hub.publish("orders", {"id": 2})
    c = hub.publish("pnl", {"x": 1})
    assert (a.cursor, b.cursor, c.cursor) == (1, 2, 1)
    assert a.received_at.endswith("Z") and len(a.received_at) == 24
    assert orjson.loads(b.json) == {
        "cursor": 2,
        "topic": "orders",
        "received_at": b.received_at,
        "reset_epoch": 1,
        "payload": {"id": 2},
    }


async def test_every_event_carries_the_epoch_current_when_received(hub: Hub) -> None:
    hub.publish("orders", {"id": 1})
    await hub.bump_epoch(GapReason.RECONNECTED_AFTER_DISCONNECT, disconnected_at="x")
    hub.publish("orders", {"id": 2})
    answer = await hub.read("orders", 0, 10)
    epochs = [(e.cursor, e.reset_epoch) for e in answer.events]
    assert epochs == [(1, 1), (2, 2), (3, 2)]


async def test_bump_epoch_injects_one_gap_per_known_topic_and_gap(hub: Hub) -> None:
    hub.publish("orders", {"id": 1})
    hub.publish("marketdata:265598", {"31": "1"})
    epoch = await hub.bump_epoch(
        GapReason.RECONNECTED_AFTER_DISCONNECT,
        disconnected_at="2026-01-01T00:00:00.000Z",
        reconnected_at="2026-01-01T00:00:05.000Z",
    )
    assert epoch == 2
    for topic in ("orders", "marketdata:265598", "gap"):
        events = (await hub.read(topic, 0, 10)).events
        gaps = [e for e in events if e.payload.get("reason")]
        assert len(gaps) == 1, topic
        assert gaps[0].payload == {
            "reason": "reconnected_after_disconnect",
            "new_reset_epoch": 2,
            "disconnected_at": "2026-01-01T00:00:00.000Z",
            "reconnected_at": "2026-01-01T00:00:05.000Z",
        }
    assert hub.topics() == ["gap", "marketdata:265598", "orders"]


async def test_memory_ring_reports_expiry_once_events_are_evicted() -> None:
    hub = Hub(capacity_of(default=3))
    await hub.open()
    for i in range(5):
        hub.publish("orders", {"i": i})
    assert (await hub.read("orders", 0, 10)).expired
    assert [e.cursor for e in (await hub.read("orders", 2, 10)).events] == [3, 4, 5]
    ahead = await hub.read("orders", 99, 10)
    assert ahead.expired and ahead.head_cursor == 5


async def test_unknown_topic_reads_empty_with_since_as_next_cursor(hub: Hub) -> None:
    answer = await hub.read("ntf", 7, 10)
    assert (answer.events, answer.next_cursor, answer.known) == ([], 7, False)


async def test_wait_returns_when_an_event_arrives(hub: Hub, autojump_clock: object) -> None:
    results: list[bool] = []

    async def waiter() -> None:
        results.append(await hub.wait("orders", 0, timeout=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.1)
        start = trio.current_time()
        hub.publish("orders", {"id": 1})
    assert results == [True]
    assert trio.current_time() - start < 0.05


async def test_wait_times_out_without_events(hub: Hub, autojump_clock: object) -> None:
    start = trio.current_time()
    assert await hub.wait("orders", 0, timeout=2) is False
    assert trio.current_time() - start == pytest.approx(2, abs=0.01)


async def test_close_wakes_long_polls(hub: Hub, autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.wait, "orders", 0, 30)
        await trio.sleep(1)
        await hub.close()
    assert trio.current_time() < 2


async def test_batch_readers_of_a_hot_topic_are_paced(hub: Hub, autojump_clock: object) -> None:
    """Under load a long-poller gets batches, not one event per request; a quiet
    topic still answers at once."""
    from bezant_trio.store.hub import WAKE_INTERVAL

    answers: list[int] = []

    async def reader() -> None:
        since = 0
        while since < 2000:
            assert await hub.wait("orders", since, 5, limit=1000)
            page = await hub.read("orders", since, 1000)
            answers.append(len(page.events))
            since = page.next_cursor

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        start = trio.current_time()
        for i in range(2000):  # 20,000 events/s
            hub.publish("orders", {"i": i})
            await trio.sleep(0.00005)
    elapsed = trio.current_time() - start
    assert sum(answers) == 2000
    assert len(answers) <= elapsed / WAKE_INTERVAL + 2
    # quiet again: the next event is answered without any pacing delay
    await trio.sleep(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: hub.wait("orders", 2000, 5, limit=1000))
        await trio.sleep(0.5)
        t0 = trio.current_time()
        hub.publish("orders", {"i": "late"})
    assert trio.current_time() - t0 < WAKE_INTERVAL
