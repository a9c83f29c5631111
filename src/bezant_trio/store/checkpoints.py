"""Sink checkpoints: per sink and topic, the last cursor the sink acknowledged.

Two stores with one interface, so the sink manager never asks whether the
durable log is on: :class:`SqliteCheckpoints` keeps them in the event log's
``checkpoints`` table (they survive restarts), :class:`MemoryCheckpoints` in a
dict (they survive sink reloads, not the process). The hub builds the one
that fits and hands it out as ``hub.checkpoints``.

Owns no policy: when to store, and what a checkpoint means, is the sink
manager's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from bezant_trio.store.log import EventLog

__all__ = ["CheckpointStore", "MemoryCheckpoints", "SqliteCheckpoints"]


class CheckpointStore(Protocol):
    """Where sink checkpoints live."""

    #: True when checkpoints survive a restart of the process.
    durable: bool

    async def load(self, sink: str) -> dict[str, int]:
        """Per topic, the last cursor ``sink`` acknowledged."""
        ...

    async def store(self, sink: str, checkpoints: Mapping[str, int]) -> None:
        """Record ``sink``'s checkpoints for the topics given (an upsert)."""
        ...

    async def delete(self, sink: str) -> None:
        """Forget every checkpoint of ``sink`` (it was removed from the config)."""
        ...


class MemoryCheckpoints:
    """Checkpoints in a dict: kept across sink reloads, lost with the process."""

    durable = False

    def __init__(self) -> None:
        self._by_sink: dict[str, dict[str, int]] = {}

    async def load(self, sink: str) -> dict[str, int]:
        return dict(self._by_sink.get(sink, {}))

    async def store(self, sink: str, checkpoints: Mapping[str, int]) -> None:
        self._by_sink.setdefault(sink, {}).update(checkpoints)

    async def delete(self, sink: str) -> None:
        self._by_sink.pop(sink, None)


class SqliteCheckpoints:
    """Checkpoints in the event log's ``checkpoints`` table (called off the Trio thread)."""

    durable = True

    def __init__(self, event_log: EventLog) -> None:
        self._log = event_log

    async def load(self, sink: str) -> dict[str, int]:
        return await trio.to_thread.run_sync(self._log.load_checkpoints, sink)

    async def store(self, sink: str, checkpoints: Mapping[str, int]) -> None:
        if checkpoints:
            await trio.to_thread.run_sync(self._log.store_checkpoints, sink, dict(checkpoints))

    async def delete(self, sink: str) -> None:
        await trio.to_thread.run_sync(self._log.delete_checkpoints, sink)
