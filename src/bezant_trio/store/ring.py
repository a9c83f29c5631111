"""A bounded, cursor-indexed FIFO of one topic's events.

Owns only memory: no I/O, no Trio. Cursors inside one ring are contiguous
(``first .. last``), so a read is O(limit) by cursor arithmetic: the event
with cursor ``c`` lives in slot ``c % capacity``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bezant_trio.model import Event

__all__ = ["ReadStatus", "RingRead", "TopicRing"]


class ReadStatus(enum.Enum):
    """How a ring answered a read."""

    #: ``events`` holds what is buffered after ``since`` (maybe empty: caught up).
    OK = "ok"
    #: Events after ``since`` were evicted from the ring (the log may have them).
    BEFORE_RING = "before_ring"
    #: ``since`` is beyond the newest cursor: it belongs to another cursor space.
    AHEAD = "ahead"


@dataclass(frozen=True, slots=True)
class RingRead:
    status: ReadStatus
    events: list[Event]


class TopicRing:
    """Bounded FIFO of one topic; the oldest event is evicted when full."""

    __slots__ = ("_buf", "capacity", "first", "last", "topic")

    def __init__(self, topic: str, capacity: int, *, last_cursor: int = 0) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1")
        self.topic = topic
        self.capacity = capacity
        self._buf: list[Event | None] = [None] * capacity
        #: Newest cursor this topic has reached (0 when it never had an event).
        self.last = last_cursor
        #: Oldest cursor still buffered; ``first == last + 1`` when empty.
        self.first = last_cursor + 1

    def __len__(self) -> int:
        return self.last - self.first + 1

    def append(self, event: Event) -> None:
        """Buffer ``event``; its cursor must be greater than :attr:`last`."""
        cursor = event.cursor
        if cursor <= self.last:
            raise ValueError(f"{self.topic}: cursor {cursor} not after {self.last}")
        if cursor != self.last + 1:
            # A jump in the cursor space (after an unclean restart): the slots
            # in between never held events of this space, so start afresh.
            self._buf = [None] * self.capacity
            self.first = cursor
        elif cursor - self.first >= self.capacity:
            self._buf[self.first % self.capacity] = None
            self.first += 1
        self._buf[cursor % self.capacity] = event
        self.last = cursor

    def read_since(self, since: int, limit: int) -> RingRead:
        """Events with cursor strictly after ``since``, at most ``limit``."""
        if since > self.last:
            return RingRead(ReadStatus.AHEAD, [])
        if since + 1 < self.first:
            return RingRead(ReadStatus.BEFORE_RING, [])
        upto = min(self.last, since + limit)
        buf, cap = self._buf, self.capacity
        return RingRead(ReadStatus.OK, [buf[c % cap] for c in range(since + 1, upto + 1)])  # type: ignore[misc]

    def newest(self) -> Event | None:
        """The newest buffered event, if any."""
        return self._buf[self.last % self.capacity] if len(self) else None

    def events(self) -> list[Event]:
        """Every buffered event, oldest first (for tests and warm-up checks)."""
        return self.read_since(self.first - 1, len(self)).events if len(self) else []
