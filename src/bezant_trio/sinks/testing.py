"""The ``test`` sink: an in-memory recorder for tests of the daemon and of plugins.

A recording fake beats a mock: :class:`TestSink` keeps every delivered event
in order and can be told to fail, fail at random, or block, so a test can
drive the manager's retry, ordering and isolation paths and assert what a
consumer would have received. Used in config as ``{name: t, type: test}``
and fetched back with ``manager.sinks["t"]``.

Owns only memory; no files, no sockets, no hub.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from bezant_trio.model import Event
from bezant_trio.sinks.interface import DeliveryError, Option

__all__ = ["TestSink"]


def _probability(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"must be in [0, 1), got {value}")
    return value


class TestSink:
    """Records what it is given; failures and blocking on demand."""

    __test__ = False  # a class named Test* that pytest must not collect

    type_name = "test"
    options = {
        "fail_rate": Option(float, default=0.0, check=_probability),
        "seed": Option(int, default=None),
    }

    def __init__(self, name: str = "test", *, fail_rate: float = 0.0, seed: int | None = None):
        self.name = name
        #: Every successfully delivered event, in delivery order.
        self.events: list[Event] = []
        #: Every successfully delivered batch.
        self.batches: list[list[Event]] = []
        #: Every batch ``deliver`` was called with, failed ones included.
        self.attempts: list[list[Event]] = []
        #: Indexes into :attr:`attempts` of the deliveries that raised.
        self.failed: list[int] = []
        #: How many ``deliver`` calls are waiting in :meth:`block` right now.
        self.blocked = 0
        self.closed = False
        self.reopened = 0
        self._fail_next = 0
        self._fail_rate = fail_rate
        self._random = random.Random(seed)
        self._unblocked = trio.Event()
        self._unblocked.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------- the sink

    async def deliver(self, batch: list[Event]) -> None:
        """Record ``batch``, unless told to block or fail first."""
        self.attempts.append(list(batch))
        self._notify()
        if not self._unblocked.is_set():
            self.blocked += 1
            self._notify()
            try:
                await self._unblocked.wait()
            finally:
                self.blocked -= 1
        if self._fail_next > 0:
            self._fail_next -= 1
            self._fail("fail_next")
        if self._fail_rate and self._random.random() < self._fail_rate:
            self._fail("fail_rate")
        self.batches.append(list(batch))
        self.events.extend(batch)
        self._notify()

    def _fail(self, why: str) -> None:
        self.failed.append(len(self.attempts) - 1)
        raise DeliveryError(f"test sink {self.name!r}: injected failure ({why})")

    async def aclose(self) -> None:
        self.closed = True
        self._notify()

    def reopen(self) -> None:
        self.reopened += 1

    # ------------------------------------------------------------ controls

    def fail_next(self, k: int = 1) -> None:
        """Make the next ``k`` deliveries raise (after recording the attempt)."""
        self._fail_next = k

    def fail_rate(self, p: float, seed: int | None = None) -> None:
        """Make each delivery fail with probability ``p`` (reproducible with ``seed``)."""
        self._fail_rate = _probability(p)
        self._random = random.Random(seed)

    def block(self) -> None:
        """Make ``deliver`` wait until :meth:`unblock` (a slow or hung destination)."""
        if self._unblocked.is_set():
            self._unblocked = trio.Event()

    def unblock(self) -> None:
        """Let blocked and future deliveries go on."""
        self._unblocked.set()

    # ------------------------------------------------------------ queries

    def cursors(self, topic: str) -> list[int]:
        """The cursors delivered for ``topic``, in delivery order."""
        return [e.cursor for e in self.events if e.topic == topic]

    def events_for(self, topic: str) -> list[Event]:
        """The events delivered for ``topic``, in delivery order."""
        return [e for e in self.events if e.topic == topic]

    async def wait_for(self, n: int, timeout: float = 10) -> list[Event]:
        """Wait until at least ``n`` events were delivered; returns them all."""
        await self.wait_until(
            lambda: len(self.events) >= n,
            timeout,
            lambda: f"{len(self.events)} of {n} events delivered",
        )
        return self.events

    async def wait_for_topic(self, topic: str, n: int, timeout: float = 10) -> list[Event]:
        """Wait until at least ``n`` events of ``topic`` were delivered; returns those."""
        await self.wait_until(
            lambda: len(self.events_for(topic)) >= n,
            timeout,
            lambda: f"{len(self.events_for(topic))} of {n} {topic!r} events delivered",
        )
        return self.events_for(topic)

    async def wait_blocked(self, timeout: float = 10) -> None:
        """Wait until a delivery is parked in :meth:`block`."""
        await self.wait_until(lambda: self.blocked > 0, timeout, lambda: "no delivery blocked")

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10,
        describe: Callable[[], str] = lambda: "condition not met",
    ) -> None:
        """Wait until ``predicate()`` holds, re-checked after every attempt and delivery.

        Raises ``TimeoutError`` saying how far it got after ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            while not predicate():
                await self._changed.wait()
            return
        raise TimeoutError(f"test sink {self.name!r}: {describe()} after {timeout}s")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
