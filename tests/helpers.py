"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import Callable


def capacity_of(default: int = 1000, **per_topic: int) -> Callable[[str], int]:
    """A capacity function like EventsConfig.capacity_for."""

    def capacity_for(topic: str) -> int:
        family = topic.split(":", 1)[0]
        return per_topic.get(topic.replace(":", "_"), per_topic.get(family, default))

    return capacity_for
