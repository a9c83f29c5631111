"""Property tests of the ring: cursors, reads, expiry, limits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bezant_trio.model import Event
from bezant_trio.store.ring import ReadStatus, TopicRing
from helpers import examples


def _event(cursor: int) -> Event:
    return Event.build("orders", cursor, "2026-01-01T00:00:00.000Z", 1, b'{"n":%d}' % cursor)


@settings(max_examples=examples(300), deadline=None)
@given(
    capacity=st.integers(1, 20),
    count=st.integers(0, 80),
    since=st.integers(0, 100),
    limit=st.integers(1, 30),
)
def test_read_since_matches_a_model(capacity: int, count: int, since: int, limit: int) -> None:
    ring = TopicRing("orders", capacity)
    for cursor in range(1, count + 1):
        ring.append(_event(cursor))
    buffered = list(range(max(1, count - capacity + 1), count + 1))
    answer = ring.read_since(since, limit)
    if since > count:
        assert answer.status is ReadStatus.AHEAD
    elif any(c > since for c in range(1, count + 1) if c not in buffered):
        # an event after `since` was evicted: expiry is reported exactly then
        assert answer.status is ReadStatus.BEFORE_RING
    else:
        assert answer.status is ReadStatus.OK
        expected = [c for c in buffered if c > since][:limit]
        assert [e.cursor for e in answer.events] == expected
    assert len(ring) == len(buffered)


@settings(max_examples=examples(100), deadline=None)
@given(capacity=st.integers(1, 10), count=st.integers(1, 60), step=st.integers(1, 7))
def test_paging_never_skips_a_buffered_event(capacity: int, count: int, step: int) -> None:
    ring = TopicRing("orders", capacity)
    seen: list[int] = []
    since = 0
    for cursor in range(1, count + 1):
        ring.append(_event(cursor))
        answer = ring.read_since(since, step)
        if answer.status is ReadStatus.BEFORE_RING:
            since = ring.first - 1  # a reader that resumes at the oldest kept event
            answer = ring.read_since(since, step)
        seen += [e.cursor for e in answer.events]
        if answer.events:
            since = answer.events[-1].cursor
    assert seen == sorted(set(seen))  # strictly increasing, never reused


def test_append_rejects_a_reused_cursor() -> None:
    ring = TopicRing("orders", 4)
    ring.append(_event(1))
    try:
        ring.append(_event(1))
    except ValueError:
        pass
    else:
        raise AssertionError("a reused cursor was accepted")


def test_cursor_jump_restarts_the_buffer() -> None:
    ring = TopicRing("orders", 4)
    for c in (1, 2, 3):
        ring.append(_event(c))
    ring.append(_event(1000))
    assert ring.first == 1000 and len(ring) == 1
    assert ring.read_since(3, 10).status is ReadStatus.BEFORE_RING
    assert [e.cursor for e in ring.read_since(999, 10).events] == [1000]
