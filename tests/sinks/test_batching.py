"""Batch sizes of sink deliveries: whatever is ready, up to batch_size (default 1,000)."""

from __future__ import annotations

import trio

from bezant_trio.sinks.specs import DEFAULT_BATCH_SIZE
from bezant_trio.store.hub import WAKE_INTERVAL, Hub


async def test_a_backlog_goes_out_in_one_call_per_thousand_events_by_default(
    bezant_sink_manager_factory, autojump_clock
):
    assert DEFAULT_BATCH_SIZE == 1000
    hub = Hub(lambda topic: 10_000)
    await hub.open()
    for i in range(900):
        hub.publish("orders", {"i": i})
    with trio.fail_after(60):
        manager = await bezant_sink_manager_factory([{"name": "s", "type": "test"}], hub=hub)
        sink = manager.sinks["s"]
        await sink.wait_for(900)
        for i in range(2500):
            hub.publish("orders", {"i": i})
        await sink.wait_for(3400)
    assert [len(b) for b in sink.batches] == [900, 1000, 1000, 500]
    assert sink.cursors("orders") == list(range(1, 3401))


async def test_a_steady_stream_is_delivered_in_batches_not_one_call_per_event(
    bezant_sink_manager_factory, bezant_hub: Hub, autojump_clock
):
    with trio.fail_after(60):
        manager = await bezant_sink_manager_factory([{"name": "s", "type": "test"}], hub=bezant_hub)
        sink = manager.sinks["s"]
        bezant_hub.publish("orders", {"i": 0})
        await sink.wait_for(1)  # a quiet topic is delivered at once
        for i in range(1, 401):
            bezant_hub.publish("orders", {"i": i})
            await trio.sleep(WAKE_INTERVAL / 20)
        await sink.wait_for(401)
    # 400 events over 20 wake intervals: about one call per interval, not 400.
    assert len(sink.batches) <= 40
    assert sink.cursors("orders") == list(range(1, 402))
