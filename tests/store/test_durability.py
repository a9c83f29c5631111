"""The durable log wired through the hub: visibility, restarts, reads beyond the ring,
retention, history and degraded mode (in-process, real SQLite files)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from bezant_trio.http.context import HttpContext
from bezant_trio.store.hub import UNCLEAN_CURSOR_SKIP, Hub
from bezant_trio.store.log import EventLog
from helpers import SSL_CONTEXT, capacity_of, wait_until


class Store:
    """A hub over a log file that can be 'restarted' cleanly or uncleanly."""

    def __init__(self, path: Path, nursery: trio.Nursery, capacity: int = 100) -> None:
        self.path = path
        self.nursery = nursery
        self.capacity = capacity
        self.hub: Hub | None = None
        self.scope: trio.CancelScope | None = None

    async def start(self) -> Hub:
        elog = EventLog.open(self.path)
        hub = Hub(capacity_of(default=self.capacity), event_log=elog)
        await hub.open()
        self.scope = trio.CancelScope()

        async def writer(task_status: trio.TaskStatus[None]) -> None:
            with self.scope:
                await hub.run_writer(task_status=task_status)

        await self.nursery.start(writer)
        self.hub = hub
        return hub

    async def stop(self, *, clean: bool = True) -> None:
        assert self.hub is not None and self.scope is not None
        if clean:
            await self.hub.close()
        self.scope.cancel()
        self.hub.event_log.close()


@pytest.fixture
async def store(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Store]:
    s = Store(tmp_path / "state" / "events.db", nursery)
    yield s
    if s.scope is not None:
        s.scope.cancel()


async def _read_all(hub: Hub, topic: str, since: int = 0, page: int = 37) -> list:
    out = []
    while True:
        answer = await hub.read(topic, since, page)
        assert not answer.expired, (topic, since)
        if not answer.events:
            return out
        out += answer.events
        since = answer.next_cursor


async def test_events_become_visible_only_after_commit(store: Store) -> None:
    with trio.fail_after(10):
        hub = await store.start()
        event = hub.publish("orders", {"id": 1})
        assert hub.head("orders") == 0  # assigned, not yet committed
        await wait_until(lambda: hub.head("orders") == 1)
        rows = (
            sqlite3.connect(store.path)
            .execute("SELECT cursor FROM events WHERE topic='orders'")
            .fetchall()
        )
    assert rows == [(event.cursor,)]


async def test_restart_continues_cursors_bumps_epoch_and_injects_restart_gaps(store: Store) -> None:
    with trio.fail_after(20):
        hub = await store.start()
        for i in range(300):
            last_order = hub.publish("orders", {"i": i})
            last_pnl = hub.publish("pnl", {"i": i})
        # Wait for what was published (not for a count): a wrong cursor fails
        # the assertions below at once instead of a wait at its bound.
        await wait_until(
            lambda: hub.head("orders") >= last_order.cursor and hub.head("pnl") >= last_pnl.cursor
        )
        epoch = hub.reset_epoch
        await store.stop()
        hub = await store.start()
        after = hub.publish("orders", {"i": "after"})
        await wait_until(lambda: hub.head("orders") >= after.cursor)
        orders = await _read_all(hub, "orders")
        pnl = await _read_all(hub, "pnl")
        gaps = await _read_all(hub, "gap")
    assert hub.reset_epoch == epoch + 1
    assert [e.cursor for e in orders] == list(range(1, 303))  # no reuse, no hole
    assert orders[300].payload["reason"] == "process_restart"
    assert orders[300].payload["new_reset_epoch"] == epoch + 1
    assert orders[301].payload == {"i": "after"} and orders[301].reset_epoch == epoch + 1
    assert pnl[-1].payload["reason"] == "process_restart"
    assert [g.payload["reason"] for g in gaps] == ["process_restart"]
    # the ring was warmed: recent reads do not touch the log
    assert len(hub._rings["orders"]) == store.capacity


async def test_a_poller_ten_rings_behind_reads_everything_from_the_log(store: Store, serve) -> None:
    with trio.fail_after(30):
        hub = await store.start()
        total = store.capacity * 10
        for i in range(total):
            hub.publish("orders", {"i": i})
        await wait_until(lambda: hub.head("orders") == total)
        base = await serve(HttpContext(hub=hub))
        seen: list[int] = []
        since = 0
        async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
            while True:
                r = await client.get(f"{base}/events/orders", params={"since": since, "limit": 73})
                assert r.status_code in (200, 204), r.text
                if r.status_code == 204:
                    break
                body = r.json()
                seen += [e["payload"]["i"] for e in body["events"]]
                since = body["next_cursor"]
    assert seen == list(range(total))


async def test_unclean_stop_moves_cursors_ahead(store: Store) -> None:
    with trio.fail_after(10):
        hub = await store.start()
        hub.publish("orders", {"i": 1})
        await wait_until(lambda: hub.head("orders") == 1)
        await store.stop(clean=False)
        hub = await store.start()
        await wait_until(lambda: hub.head("orders") > 1)
        events = await _read_all(hub, "orders")
    assert [e.cursor for e in events] == [1, 2 + UNCLEAN_CURSOR_SKIP]
    assert events[1].payload["reason"] == "process_restart"


async def test_retention_expires_old_cursors_with_412_and_keeps_the_rest(
    store: Store, serve
) -> None:
    with trio.fail_after(20):
        hub = await store.start()
        for i in range(500):
            hub.publish("orders", {"i": i})
        await wait_until(lambda: hub.head("orders") == 500)
        removed = await trio.to_thread.run_sync(
            lambda: hub.event_log.prune(lambda t: 1.0, now=0, max_events_per_topic=150)
        )
        assert removed == 350
        base = await serve(HttpContext(hub=hub))
        async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
            old = await client.get(f"{base}/events/orders?since=10")
            # The pruned edge, both sides: 350 went, 351 is the oldest kept.
            kept = await client.get(f"{base}/events/orders?since=350&limit=10")
            past_edge = await client.get(f"{base}/events/orders?since=349")
    assert old.status_code == 412
    assert old.json()["head_cursor"] == 351 and old.json()["newest_cursor"] == 500
    assert "resume with since=350" in old.json()["message"]
    assert kept.status_code == 200
    assert [e["cursor"] for e in kept.json()["events"]] == list(range(351, 361))
    assert past_edge.status_code == 412 and past_edge.json()["head_cursor"] == 351


async def test_history_by_time_and_cursor(store: Store, serve) -> None:
    with trio.fail_after(20):
        hub = await store.start()
        for i in range(20):
            hub.publish("orders", {"i": i})
        hub.publish("pnl", {"x": 1})
        await wait_until(lambda: hub.head("orders") == 20 and hub.head("pnl") == 1)
        base = await serve(HttpContext(hub=hub))
        async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
            by_ts = (
                await client.get(
                    f"{base}/events/orders/history?since_ts=1970-01-01T00:00:00Z&limit=5"
                )
            ).json()
            by_cursor = (await client.get(f"{base}/events/orders/history?since_cursor=15")).json()
            future = (
                await client.get(
                    f"{base}/events/orders/history?since_ts=2999-01-01T00:00:00%2B02:00"
                )
            ).json()
            pnl = (await client.get(f"{base}/events/pnl/history")).json()
            bad = await client.get(f"{base}/events/orders/history?since_ts=yesterday")
            both = await client.get(
                f"{base}/events/orders/history?since_ts=1970-01-01T00:00:00Z&since_cursor=1"
            )
            big = (await client.get(f"{base}/events/orders/history?limit=999999")).json()
    assert by_ts["topic"] == "orders" and by_ts["count"] == 5
    assert [e["cursor"] for e in by_ts["events"]] == [1, 2, 3, 4, 5]
    assert [e["cursor"] for e in by_cursor["events"]] == [16, 17, 18, 19, 20]
    assert future == {"topic": "orders", "events": [], "count": 0}
    assert pnl["count"] == 1 and pnl["events"][0]["topic"] == "pnl"
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_query"
    assert both.status_code == 400
    assert big["count"] == 20


async def test_full_disk_degrades_keeps_serving_and_recovers_without_loss(store: Store) -> None:
    with trio.fail_after(30):
        hub = await store.start()
        for i in range(50):
            hub.publish("orders", {"i": i})
        await wait_until(lambda: hub.head("orders") == 50)
        # A realistic SQLITE_FULL: cap the database at its current size.
        writer = hub.event_log._conn
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        writer.execute(f"PRAGMA max_page_count={pages}")
        for i in range(50, 2050):
            hub.publish("orders", {"i": i, "pad": "x" * 200})
        await wait_until(lambda: hub.log_state.degraded)
        await wait_until(lambda: hub.head("orders") == 2050)  # still served, from memory
        status = hub.status()["log"]
        assert status["state"] == "degraded" and "full" in status["last_error"].lower()
        writer.execute("PRAGMA max_page_count=1073741823")
        await wait_until(lambda: not hub.log_state.degraded)
        rows = await trio.to_thread.run_sync(
            lambda: [e.payload["i"] for e in hub.event_log.read_since("orders", 0, 5000)]
        )
    assert rows == list(range(2050))


async def test_a_full_disk_recovers_while_events_keep_arriving(store: Store) -> None:
    with trio.fail_after(30):
        hub = await store.start()
        elog = hub.event_log
        writer = elog._conn
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        writer.execute(f"PRAGMA max_page_count={pages}")
        for i in range(500):
            hub.publish("orders", {"i": i, "pad": "x" * 200})
        await wait_until(lambda: hub.log_state.degraded)
        writer.execute("PRAGMA max_page_count=1073741823")
        # A busy gateway: an event arrives while every retry stores the epoch
        # (the one seam: the log's store_epoch, called in a worker thread).
        store_epoch = elog.store_epoch

        def store_epoch_while_events_arrive(epoch: int) -> None:
            trio.from_thread.run_sync(hub.publish, "orders", {"i": "meanwhile"})
            store_epoch(epoch)

        elog.store_epoch = store_epoch_while_events_arrive
        with trio.fail_after(10):
            await wait_until(lambda: not hub.log_state.degraded)
        elog.store_epoch = store_epoch
        last = hub.publish("orders", {"i": "after"})
        await wait_until(lambda: hub.head("orders") >= last.cursor)
        logged = await trio.to_thread.run_sync(lambda: elog.read_since("orders", 0, 10_000))
    # Everything shown from memory reached the log, in order, nothing twice.
    assert [e.cursor for e in logged] == list(range(1, last.cursor + 1))
    assert logged[-1].payload == {"i": "after"}


class _CountingLog:
    """A real EventLog that counts which commit path each batch took; its
    commits on the Trio thread report ``inline_latency`` seconds, those in a
    worker thread a fast 0.1 ms: the policy is under test, not this machine's
    disk (a real commit beside the other lanes once took over the 2 ms)."""

    def __init__(self, inner: EventLog, inline_latency: float) -> None:
        self._inner = inner
        self.inline_latency = inline_latency
        self.inline = 0
        self.threaded = 0

    def try_append_by_topic(self, batches: object) -> float | None:
        latency = self._inner.try_append_by_topic(batches)  # type: ignore[arg-type]
        if latency is None:
            return None
        self.inline += 1
        return self.inline_latency

    def append_by_topic(self, batches: object) -> float:
        self.threaded += 1
        self._inner.append_by_topic(batches)  # type: ignore[arg-type]
        return 0.0001

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


@pytest.mark.parametrize(("latency", "inline", "threaded"), [(0.0001, 3, 0), (0.05, 2, 1)])
async def test_small_batches_commit_on_the_trio_thread_only_while_commits_are_fast(
    tmp_path: Path, nursery: trio.Nursery, latency: float, inline: int, threaded: int
) -> None:
    """A fast disk: every small batch commits on the Trio thread. A slow one (the
    last commit took longer than INLINE_COMMIT_LATENCY_MAX): the next goes to a
    worker thread, so a stalling disk never holds up the loop, and once a commit
    there was fast, the one after is inline again."""
    inner = EventLog.open(tmp_path / "events.db")
    elog = _CountingLog(inner, inline_latency=latency)
    hub = Hub(capacity_of(), event_log=elog)  # type: ignore[arg-type]
    await hub.open()
    await nursery.start(hub.run_writer)
    try:
        for n in range(3):
            hub.publish("orders", {"n": n})
            with trio.fail_after(10):
                assert await hub.wait("orders", n, 10)
        assert (elog.inline, elog.threaded) == (inline, threaded)
        assert [e.cursor for e in inner.read_since("orders", 0, 10)] == [1, 2, 3]
    finally:
        await hub.close()
        inner.close()
