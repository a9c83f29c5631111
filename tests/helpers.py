"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import Callable

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


def seq_of(event: object) -> int:
    """The simulator's sequence number inside a captured event's payload."""
    payload = event.payload if hasattr(event, "payload") else event["payload"]  # type: ignore[index]
    if "seq" in payload:
        return int(payload["seq"])
    args = payload["args"]
    if isinstance(args, list):
        return int(args[0]["seq"])
    return int(next(iter(args.values()))["seq"])
