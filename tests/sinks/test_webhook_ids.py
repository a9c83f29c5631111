"""Webhook ids a receiver can deduplicate on, over a real HTTP receiver on 127.0.0.1.

Each event in a body carries its own ``id`` (``<cursor space>:<topic>:<cursor>``);
``webhook-id`` names the batch. Both must survive what a receiver meets: a
retried batch, a restart on the same log that regroups the batches, and a
restart without the log, where cursors and epochs start at 1 again.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import trio

from bezant_trio.sinks import event_id
from bezant_trio.sinks.manager import SinkManager
from bezant_trio.store.hub import Hub
from bezant_trio.store.log import EventLog
from bezant_trio.testing import Received, Reply, WebhookReceiver


def _hook(receiver: WebhookReceiver, **options: Any) -> dict[str, Any]:
    return {"name": "hook", "type": "webhook", "url": receiver.url, **options}


def _ids(request: Received) -> dict[str, dict[str, Any]]:
    """The request's events by their own id."""
    return {event["id"]: event for event in request.events}


async def test_a_retried_batch_repeats_its_webhook_id_and_its_event_ids_byte_for_byte(
    bezant_sink_manager_factory, webhook_receiver: WebhookReceiver, autojump_clock
):
    receiver = webhook_receiver
    receiver.answer(Reply(500), Reply(hang=True))
    with trio.fail_after(120):
        manager = await bezant_sink_manager_factory(
            [_hook(receiver, timeout=2, retry={"min": 1, "max": 1})]
        )
        hub: Hub = manager.hub
        events = [hub.publish("orders", {"orderId": i}) for i in range(3)]
        await manager.wait_delivered("hook", 3)

    first, second, third = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert second.headers["webhook-id"] == third.headers["webhook-id"]
    assert first.headers["webhook-id"] == f"{hub.cursor_space}:orders:1-3"
    assert first.body == second.body == third.body
    # Each event is its stored wire JSON with the id put in front, nothing re-encoded.
    for event, sent in zip(events, first.events, strict=True):
        assert (
            sent["id"]
            == event_id(hub.cursor_space, event)
            == f"{hub.cursor_space}:orders:{event.cursor}"
        )
        assert b'{"id":"' + sent["id"].encode() + b'",' + event.json[1:] in first.body
        assert {k: v for k, v in sent.items() if k != "id"} == event.to_dict()


@asynccontextmanager
async def _lifetime(path: Path, sinks: list[dict[str, Any]]) -> AsyncIterator[tuple[Hub, Any]]:
    """One daemon run on the log at ``path``: hub, writer, then the sinks; stopped cleanly."""
    elog = await trio.to_thread.run_sync(EventLog.open, path)
    try:
        hub = Hub(capacity_for=lambda topic: 1000, event_log=elog)
        await hub.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run_writer)

            async def start_sinks() -> SinkManager:
                manager = SinkManager(hub, sinks)
                await nursery.start(manager.run)
                managers.append(manager)
                return manager

            managers: list[SinkManager] = []
            yield hub, start_sinks
            await hub.close()
            for manager in managers:
                await manager.aclose(trio.current_time() + 1)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(elog.close)


async def test_event_ids_survive_a_restart_on_the_log_that_regroups_the_batches(
    tmp_path: Path, webhook_receiver: WebhookReceiver
):
    receiver = webhook_receiver
    sinks = [_hook(receiver, topics=["orders"], timeout=30, batch_size=50)]
    path = tmp_path / "events.db"
    with trio.fail_after(30):
        async with _lifetime(path, sinks) as (hub, start_sinks):
            space = hub.cursor_space
            manager = await start_sinks()
            for i in range(10):
                hub.publish("orders", {"orderId": i})
            await manager.wait_delivered("hook", 10)
            receiver.answer(Reply(hang=True))  # 11-15 reach the receiver, never acknowledged
            for i in range(10, 15):
                hub.publish("orders", {"orderId": i})
            await receiver.wait_until(lambda: len(receiver.requests) == len(receiver.accepted) + 1)
        unacknowledged = receiver.requests[-1]
        assert unacknowledged.headers["webhook-id"] == f"{space}:orders:11-15"

        async with _lifetime(path, sinks) as (hub, start_sinks):
            assert hub.cursor_space == space  # kept in the log's meta table
            # The restart's gap (cursor 16) is committed before the sink starts,
            # so the redelivered events come in another grouping: 11-16.
            with trio.fail_after(10):
                await hub.wait("orders", 15, math.inf)
            manager = await start_sinks()
            await manager.wait_delivered("hook", 6)
        redelivered = receiver.requests[-1]

    assert redelivered.headers["webhook-id"] == f"{space}:orders:11-16"
    before, after = _ids(unacknowledged), _ids(redelivered)
    assert list(before) == [f"{space}:orders:{cursor}" for cursor in range(11, 16)]
    # Same ids for the same events (the very same JSON), and the gap's id is new.
    for key, event in before.items():
        assert after[key] == event
    (new,) = set(after) - set(before)
    assert new == f"{space}:orders:16"
    assert after[new]["payload"]["reason"] == "process_restart"
    every_id = [event["id"] for request in receiver.requests for event in request.events]
    assert len(set(every_id)) == 16  # 1-10 once, 11-15 twice with the same ids, 16


async def test_ids_are_new_after_a_restart_without_the_log(
    bezant_sink_manager_factory, webhook_receiver: WebhookReceiver
):
    """Cursors and epochs start at 1 again: ``orders:1`` must not repeat an id."""
    receiver = webhook_receiver
    with trio.fail_after(20):
        before = await bezant_sink_manager_factory([_hook(receiver)])
        before.hub.publish("orders", {"orderId": "first"})
        await before.wait_delivered("hook", 1)
        await before.aclose(trio.current_time() + 1)
        after = await bezant_sink_manager_factory([_hook(receiver)])  # a fresh memory hub
        after.hub.publish("orders", {"orderId": "second"})
        await after.wait_delivered("hook", 1)

    first, second = receiver.accepted
    (old,), (new,) = first.events, second.events
    assert (old["cursor"], old["reset_epoch"]) == (new["cursor"], new["reset_epoch"]) == (1, 1)
    assert before.hub.cursor_space != after.hub.cursor_space
    assert old["id"] != new["id"]
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
    assert orjson.loads(second.body)["events"][0]["payload"] == {"orderId": "second"}
