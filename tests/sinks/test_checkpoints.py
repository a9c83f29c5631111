"""Checkpoints live in the SQLite log and survive a restart."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from bezant_trio.sinks.manager import SinkManager
from bezant_trio.sinks.testing import TestSink
from bezant_trio.store.checkpoints import CheckpointStore
from bezant_trio.store.hub import Hub
from bezant_trio.store.log import EventLog

SINKS = [{"name": "audit", "type": "test", "topics": ["orders"], "batch_size": 10}]


@asynccontextmanager
async def _daemon_like(
    path: Path,
    sinks: list[dict[str, Any]] = SINKS,
    *,
    wrap: Callable[[CheckpointStore], CheckpointStore] | None = None,
) -> AsyncIterator[tuple[Hub, SinkManager]]:
    """A log-backed hub and a sink manager, started and stopped like the daemon does.

    ``wrap`` replaces the hub's checkpoint store with one built around it.
    """
    elog = await trio.to_thread.run_sync(EventLog.open, path)
    try:
        hub = Hub(capacity_for=lambda topic: 1000, event_log=elog)
        await hub.open()
        if wrap is not None:
            hub.checkpoints = wrap(hub.checkpoints)
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run_writer)
            manager = SinkManager(hub, sinks)
            await nursery.start(manager.run)
            yield hub, manager
            await hub.close()
            await manager.aclose(trio.current_time() + 0.2)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(elog.close)


async def test_checkpoints_survive_restart_without_redelivering_acknowledged_batches(
    tmp_path: Path,
):
    path = tmp_path / "events.db"
    with trio.fail_after(20):
        async with _daemon_like(path) as (hub, manager):
            sink: TestSink = manager.sinks["audit"]
            for i in range(30):
                hub.publish("orders", {"i": i})
            await sink.wait_for(30)
            sink.block()
            for i in range(30, 35):
                hub.publish("orders", {"i": i})
            await sink.wait_blocked()  # 31..35 are in flight, never acknowledged
        assert sink.cursors("orders") == list(range(1, 31))

        elog = await trio.to_thread.run_sync(EventLog.open, path)
        assert await trio.to_thread.run_sync(elog.load_checkpoints, "audit") == {"orders": 30}
        await trio.to_thread.run_sync(elog.close)

        async with _daemon_like(path) as (hub, manager):
            again: TestSink = manager.sinks["audit"]
            # The unacknowledged batch, then the restart's gap event: nothing older.
            await again.wait_for(6)
            assert again.cursors("orders") == [31, 32, 33, 34, 35, 36]
            assert again.events[-1].payload["reason"] == "process_restart"
            hub.publish("orders", {"i": 35})
            await again.wait_for(7)
            assert manager.status()["audit"]["checkpoints"] == {"orders": 37}


async def test_checkpoints_are_persisted_while_running(tmp_path: Path):
    path = tmp_path / "events.db"
    with trio.fail_after(20):
        async with _daemon_like(path) as (hub, manager):
            for i in range(12):
                hub.publish("orders", {"i": i})
            await manager.sinks["audit"].wait_for(12)
            elog = hub.event_log
            # Flushed within CHECKPOINT_INTERVAL of the delivery, not only at shutdown.
            # Polled through another connection: nothing notifies of a commit there.
            while await trio.to_thread.run_sync(elog.load_checkpoints, "audit") != {"orders": 12}:  # noqa: ASYNC110
                await trio.sleep(0.05)


async def test_removing_a_sink_on_reload_forgets_its_checkpoints(tmp_path: Path):
    path = tmp_path / "events.db"
    with trio.fail_after(20):
        async with _daemon_like(path) as (hub, manager):
            hub.publish("orders", {"i": 0})
            await manager.sinks["audit"].wait_for(1)
            await manager.reload([])
            elog = hub.event_log
            assert await trio.to_thread.run_sync(elog.load_checkpoints, "audit") == {}
            await manager.reload(SINKS)
            await manager.sinks["audit"].wait_for(1)  # starts over from the beginning


class _StoreFailsOnce:
    """The log's checkpoint store, except that the first ``store`` of ``topic`` fails (disk full)."""

    durable = True

    def __init__(self, inner: CheckpointStore, topic: str = "pnl") -> None:
        self._inner = inner
        self._topic = topic
        self.failed = trio.Event()
        #: Every mapping stored successfully, in order.
        self.stored: list[dict[str, int]] = []
        self.changed = trio.Event()

    async def load(self, sink: str) -> dict[str, int]:
        return await self._inner.load(sink)

    async def store(self, sink: str, checkpoints: Mapping[str, int]) -> None:
        if not self.failed.is_set() and self._topic in checkpoints:
            self.failed.set()
            raise sqlite3.OperationalError("database or disk is full")
        await self._inner.store(sink, checkpoints)
        self.stored.append(dict(checkpoints))
        self.changed.set()
        self.changed = trio.Event()

    async def delete(self, sink: str) -> None:
        await self._inner.delete(sink)


async def test_a_failed_checkpoint_write_is_retried_and_a_restart_redelivers_one_batch_at_most(
    tmp_path: Path, caplog
):
    path = tmp_path / "events.db"
    sinks = [{"name": "audit", "type": "test", "topics": ["orders", "pnl"], "batch_size": 10}]
    with trio.fail_after(30):
        async with _daemon_like(path, sinks, wrap=_StoreFailsOnce) as (hub, manager):
            store: _StoreFailsOnce = hub.checkpoints
            sink: TestSink = manager.sinks["audit"]
            for i in range(3):
                hub.publish("pnl", {"i": i})
            for i in range(20):
                hub.publish("orders", {"i": i})
            await sink.wait_for(23)
            await store.failed.wait()  # pnl 3 (and orders, maybe) were not stored
            assert "storing checkpoints of sink 'audit' failed, will retry" in caplog.text
            before = len(store.stored)
            # Only orders moves on; the next flush must still store pnl's checkpoint.
            for i in range(20, 25):
                hub.publish("orders", {"i": i})
            await sink.wait_for(28)
            while len(store.stored) == before:
                await store.changed.wait()
            assert store.stored[before]["pnl"] == 3
            sink.block()
            for i in range(25, 30):
                hub.publish("orders", {"i": i})
            await sink.wait_blocked()  # orders 26-30 in flight, never acknowledged

        async with _daemon_like(path, sinks) as (hub, manager):
            again: TestSink = manager.sinks["audit"]
            # Caught up with both topics (the restart's gaps are orders 31 and
            # pnl 4): then what it was given is all it gets.
            await manager.wait_status(
                "audit", lambda s: s["checkpoints"] == {"orders": 31, "pnl": 4}
            )
            # The batch in flight and the restart's gaps, nothing older.
            assert again.cursors("orders") == [26, 27, 28, 29, 30, 31]
            assert again.cursors("pnl") == [4]
            assert {e.payload["reason"] for e in again.events if e.cursor in (4, 31)} == {
                "process_restart"
            }
