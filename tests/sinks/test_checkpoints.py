"""Checkpoints live in the SQLite log and survive a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from bezant_trio.sinks.manager import SinkManager
from bezant_trio.sinks.testing import TestSink
from bezant_trio.store.hub import Hub
from bezant_trio.store.log import EventLog

SINKS = [{"name": "audit", "type": "test", "topics": ["orders"], "batch_size": 10}]


@asynccontextmanager
async def _daemon_like(path: Path) -> AsyncIterator[tuple[Hub, SinkManager]]:
    """A log-backed hub and a sink manager, started and stopped like the daemon does."""
    elog = await trio.to_thread.run_sync(EventLog.open, path)
    try:
        hub = Hub(capacity_for=lambda topic: 1000, event_log=elog)
        await hub.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run_writer)
            manager = SinkManager(hub, SINKS)
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
