"""``SinkManager.aclose(deadline)``: nothing waits past the deadline, checkpoints are always stored.

Timing runs on the autojump clock with the memory checkpoint store (no
threads), so "by the deadline" is checked exactly, in virtual time.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from bezant_trio import hookimpl
from bezant_trio.model import Event
from bezant_trio.sinks.manager import SinkConfigError, SinkManager
from bezant_trio.sinks.testing import TestSink


class _Stubborn:
    """Its second delivery ignores cancellation for a minute (a blocking write in a
    thread does), and its ``aclose`` never returns."""

    type_name = "stubborn"
    options: dict[str, Any] = {}

    def __init__(self, name: str) -> None:
        self.delivered: list[list[Event]] = []
        self.stuck = trio.Event()

    async def deliver(self, batch: list[Event]) -> None:
        if self.delivered:
            self.stuck.set()
            with trio.CancelScope(shield=True):
                await trio.sleep(60)
        self.delivered.append(batch)

    async def aclose(self) -> None:
        await trio.sleep_forever()


class _StubbornPlugin:
    @staticmethod
    @hookimpl
    def register_sink_types() -> list[type]:
        return [_Stubborn]


async def test_aclose_is_over_by_its_deadline_with_a_stuck_delivery_and_a_hung_aclose(
    bezant_sink_manager_factory, bezant_plugin_manager, autojump_clock
):
    bezant_plugin_manager.register(_StubbornPlugin, name="stubborn-plugin")
    sinks = [
        {"name": "stuck", "type": "stubborn", "topics": ["orders"]},
        {"name": "fine", "type": "test", "topics": ["orders"]},
    ]
    with trio.fail_after(600):
        manager: SinkManager = await bezant_sink_manager_factory(sinks, pm=bezant_plugin_manager)
        hub = manager.hub
        stuck: _Stubborn = manager.sinks["stuck"]
        hub.publish("orders", {"i": 1})
        await manager.wait_delivered("stuck", 1)
        hub.publish("orders", {"i": 2})
        await stuck.stuck.wait()
        await manager.wait_delivered("fine", 2)
        start = trio.current_time()
        deadline = start + 3
        await manager.aclose(deadline, finish_by=start + 1)
        assert trio.current_time() <= deadline
        # The acknowledged batch is stored; the stuck one is delivered again next time.
        assert await hub.checkpoints.load("stuck") == {"orders": 1}
        assert await hub.checkpoints.load("fine") == {"orders": 2}
        assert manager.sinks["fine"].closed


async def test_checkpoints_are_stored_even_when_the_deadline_has_passed(
    bezant_sink_manager_factory, autojump_clock
):
    with trio.fail_after(60):
        manager: SinkManager = await bezant_sink_manager_factory([{"name": "t", "type": "test"}])
        sink: TestSink = manager.sinks["t"]
        for i in range(3):
            manager.hub.publish("orders", {"i": i})
        await manager.wait_delivered("t", 3)
        assert await manager.hub.checkpoints.load("t") == {}  # not flushed yet
        now = trio.current_time()
        await manager.aclose(now - 1, finish_by=now - 2)
        assert trio.current_time() == now
        assert await manager.hub.checkpoints.load("t") == {"orders": 3}
        assert sink.closed


async def test_aclose_does_not_wait_for_a_slow_reload_and_the_reload_starts_nothing(
    bezant_sink_manager_factory, autojump_clock
):
    with trio.fail_after(60):
        manager: SinkManager = await bezant_sink_manager_factory([{"name": "t", "type": "test"}])
        old: TestSink = manager.sinks["t"]
        old.block()
        manager.hub.publish("orders", {"i": 1})
        await old.wait_blocked()
        refused: list[SinkConfigError] = []

        async def reload() -> None:
            try:
                # A changed sink: the reload waits (RELOAD_GRACE) for the blocked batch.
                await manager.reload([{"name": "t", "type": "test", "batch_size": 5}])
            except SinkConfigError as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reload)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            await manager.aclose(start + 2, finish_by=start + 1)
            assert trio.current_time() <= start + 2
        assert [str(exc) for exc in refused] == [
            "sinks: cannot reload, the daemon is shutting down"
        ]
        assert manager.sinks["t"] is old and old.closed
        assert manager.status()["t"]["state"] == "stopped"
