"""Small helpers shared by tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable

import trio


def capacity_of(default: int = 1000, **per_topic: int) -> Callable[[str], int]:
    """A capacity function like EventsConfig.capacity_for."""

    def capacity_for(topic: str) -> int:
        family = topic.split(":", 1)[0]
        return per_topic.get(topic.replace(":", "_"), per_topic.get(family, default))

    return capacity_for


async def wait_until(condition: Callable[[], bool], *, poll: float = 0.005) -> None:
    """Wait until ``condition()`` holds; callers bound it with ``trio.fail_after``.

    For states that raise no event of their own (a request parked in the hub,
    a subprocess's file appearing); everything with an event waits on it.
    """
    while not condition():  # noqa: ASYNC110 - no event exists for these conditions
        await trio.sleep(poll)


@contextlib.asynccontextmanager
async def wall_clock_bound(seconds: float) -> AsyncIterator[None]:
    """Fail the block with ``trio.TooSlowError`` after ``seconds`` of real time.

    For tests on a MockClock that moves only when told to
    (``autojump_threshold = math.inf``): there ``trio.fail_after`` counts
    virtual seconds, which never pass while the test waits for a worker
    thread. A worker thread times the real seconds instead (a timer, not a
    synchronisation); leaving the block ends it at once.
    """
    done = threading.Event()
    expired = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal expired
            if not await trio.to_thread.run_sync(done.wait, seconds):
                expired = True
                nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            yield
        finally:
            done.set()
    if expired:
        raise trio.TooSlowError(f"not done within {seconds} s of real time")


def seq_of(event: object) -> int:
    """The simulator's sequence number inside a captured event's payload."""
    payload = event.payload if hasattr(event, "payload") else event["payload"]  # type: ignore[index]
    if "seq" in payload:
        return int(payload["seq"])
    args = payload["args"]
    if isinstance(args, list):
        return int(args[0]["seq"])
    return int(next(iter(args.values()))["seq"])


async def serve_daemon(config: object, *, task_status: trio.TaskStatus[object]) -> None:
    """``await nursery.start(serve_daemon, config)``: a daemon serving until the test ends."""
    from bezant_trio.daemon import open_daemon

    async with open_daemon(config) as daemon:  # type: ignore[arg-type]
        task_status.started(daemon)
        await trio.sleep_forever()
