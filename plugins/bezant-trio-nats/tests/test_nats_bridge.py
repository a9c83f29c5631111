"""The Trio <-> asyncio bridge on its own: results, errors, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio
from bezant_trio_nats.bridge import AsyncioThread


async def _where() -> str:
    asyncio.get_running_loop()  # raises unless on an asyncio loop
    return threading.current_thread().name


async def _fail() -> None:
    raise LookupError("from asyncio")


async def test_coroutines_run_on_the_loop_thread_and_results_come_back() -> None:
    bridge = AsyncioThread("bridge-test")
    with trio.fail_after(10):
        assert await bridge.run(_where) == "bridge-test"
        with pytest.raises(LookupError, match="from asyncio"):
            await bridge.run(_fail)
        assert await bridge.run(asyncio.sleep, 0, "again") == "again"
        await bridge.aclose()
        await bridge.aclose()  # idempotent
    assert not bridge.running
    with pytest.raises(RuntimeError, match="closed"):
        await bridge.run(_where)


async def test_cancelling_the_trio_side_cancels_the_asyncio_task() -> None:
    bridge = AsyncioThread("bridge-cancel")
    started = threading.Event()
    outcome: list[str] = []

    async def wait_forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    with trio.fail_after(10):
        with trio.move_on_after(0.2) as scope:
            await bridge.run(wait_forever)
        assert scope.cancelled_caught and started.is_set()
        assert await bridge.run(_where) == "bridge-cancel"  # the loop goes on serving
        await bridge.aclose()
    assert outcome == ["cancelled"]


async def test_aclose_cancels_what_still_runs_and_joins_the_thread() -> None:
    bridge = AsyncioThread("bridge-close")
    leftovers: list[str] = []
    started = threading.Event()

    async def linger() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            leftovers.append("cleaned up")

    with trio.fail_after(10):
        await bridge.run(_where)
        asyncio.run_coroutine_threadsafe(linger(), bridge._loop)  # not awaited by anyone
        await trio.to_thread.run_sync(started.wait)
        await bridge.aclose()
    assert leftovers == ["cleaned up"]
    assert not bridge.running
