"""Demand for per-instrument streams: which conids some reader wants right now.

Market data (and, the same way, any other stream the gateway sends per
conid) is subscribed lazily: a poll, an SSE stream or a sink of
``marketdata:<conid>`` records that it wants the conid; the connector
subscribes what is wanted and unsubscribes what nobody asked for in a while.
This is demand, not storage: the hub never sees it.

Owns only memory and one ``trio.Event`` per change; no I/O. Built by the
daemon and handed to the HTTP surface (which records wants) and to the
connector (which follows them).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

__all__ = ["TooManyConids", "Wants"]


class TooManyConids(Exception):
    """A new conid would exceed the limit; ``str()`` says which setting to raise."""


class Wants:
    """The conids wanted for one per-instrument stream, each with when it was last asked for.

    ``what`` names the stream in messages ("market-data"), ``setting`` the
    config key of ``limit`` ("events.marketdata.max_conids"), or None for a
    limit that is the gateway's own.
    """

    def __init__(
        self,
        limit: int,
        *,
        what: str = "market-data",
        setting: str | None = "events.marketdata.max_conids",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.what = what
        self.setting = setting
        self._clock = clock
        #: conid -> clock time of the last reader that wanted it.
        self._wanted: dict[int, float] = {}
        #: Set, then replaced, whenever the set of wanted conids changes.
        self.changed = trio.Event()

    def __len__(self) -> int:
        return len(self._wanted)

    def __contains__(self, conid: object) -> bool:
        return conid in self._wanted

    def want(self, conid: int) -> bool:
        """Record that a reader wants ``conid`` now; True if it was not wanted before.

        Raises :class:`TooManyConids` (recording nothing) when a new conid
        would exceed :attr:`limit`.
        """
        is_new = conid not in self._wanted
        if is_new and len(self._wanted) >= self.limit:
            if self.setting is None:
                raise TooManyConids(
                    f"already {len(self._wanted)} {self.what} conids wanted and the gateway "
                    f"allows {self.limit} at once; stop polling some"
                )
            raise TooManyConids(
                f"already {len(self._wanted)} {self.what} conids wanted "
                f"({self.setting.rpartition('.')[2]}={self.limit}); "
                f"stop polling some or raise {self.setting}"
            )
        self._wanted[conid] = self._clock()
        if is_new:
            self._signal()
        return is_new

    def wanted(self) -> list[int]:
        """Every wanted conid, sorted."""
        return sorted(self._wanted)

    def expire_idle(self, idle_seconds: float) -> list[int]:
        """Forget the conids nobody asked for in ``idle_seconds``; returns them."""
        now = self._clock()
        idle = [c for c, seen in self._wanted.items() if now - seen >= idle_seconds]
        for conid in idle:
            del self._wanted[conid]
        if idle:
            self._signal()
        return idle

    def _signal(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
