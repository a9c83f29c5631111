"""Hypercorn's read timeout runs between requests only, never under one being answered.

A client waiting for its answer sends nothing. Hypercorn timed out that
silence too (30 s), which cut every SSE stream 30 s after it began and a
long-poll at the most ``wait`` allows before its answer was written (found
while chasing a timeout of the 5,000-connection test under load). The whole
service runs on a real socket, on trio's autojump clock: the 30 s and 75 s
timeouts pass in no time, and the times measured are exact.
"""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing
from serving import address, read_response, read_to_eof, start_service, status_of

from bezant_trio.http.poll import MAX_WAIT
from bezant_trio.http.server import hypercorn_config
from bezant_trio.store.hub import Hub
from helpers import capacity_of, wait_until

READ_TIMEOUT = hypercorn_config("127.0.0.1:0").read_timeout
KEEP_ALIVE = hypercorn_config("127.0.0.1:0").keep_alive_timeout


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def _closed_after(stream: trio.SocketStream) -> float:
    """Seconds until the server closes ``stream`` (read to EOF); fails after twice the longest timeout."""
    start = trio.current_time()
    with trio.fail_after(2 * KEEP_ALIVE):
        await read_to_eof(stream)
    return trio.current_time() - start


async def _service(nursery: trio.Nursery) -> tuple[Hub, tuple[str, int]]:
    hub = Hub(capacity_of())
    await hub.open()
    service = await start_service(nursery, hub)
    return hub, address(service.url)


def test_the_timeouts_these_tests_are_about() -> None:
    # The long-poll's longest wait equals the read timeout: the race that lost answers.
    assert READ_TIMEOUT == MAX_WAIT == 30 and KEEP_ALIVE == 75


async def test_a_long_poll_at_the_longest_wait_gets_its_whole_answer_and_then_the_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, where = await _service(nursery)
    async with await trio.open_tcp_stream(*where) as stream:
        start = trio.current_time()
        await stream.send_all(_get(f"/events/orders?since=0&wait={MAX_WAIT:g}"))
        answer = await read_response(stream)
        assert trio.current_time() - start >= MAX_WAIT
        assert status_of(answer) == 200, answer[:200]
        body = orjson.loads(answer.partition(b"\r\n\r\n")[2])  # whole: it parses
        assert body["events"] == [] and body["next_cursor"] == 0
        # Idle again: the read timeout counts from the answer, not from the request.
        assert await _closed_after(stream) == pytest.approx(READ_TIMEOUT, abs=0.01)


async def test_an_sse_stream_lives_past_the_read_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub, where = await _service(nursery)
    async with await trio.open_tcp_stream(*where) as stream:
        await stream.send_all(_get("/events/orders/stream?since=0"))
        received = bytearray()
        # Four read timeouts later an event still reaches the client.
        await trio.sleep(4 * READ_TIMEOUT)
        hub.publish("orders", {"orderId": 7})
        with trio.fail_after(5):
            while b'"orderId":7' not in received:
                chunk = await stream.receive_some(65536)
                assert chunk, f"the stream ended: {bytes(received)[-300:]!r}"
                received += chunk
    assert status_of(bytes(received)) == 200
    assert received.count(b": heartbeat") >= 4 * READ_TIMEOUT // 15 - 1


async def test_a_silent_connection_and_an_idle_one_are_still_cut_by_the_read_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, where = await _service(nursery)
    # Connected, and nothing sent: cut at the read timeout.
    async with await trio.open_tcp_stream(*where) as stream:
        assert await _closed_after(stream) == pytest.approx(READ_TIMEOUT, abs=0.01)
    # Half a request head, then nothing: the same.
    async with await trio.open_tcp_stream(*where) as stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\n")
        assert await _closed_after(stream) == pytest.approx(READ_TIMEOUT, abs=0.01)
    # Two answers on one keep-alive connection, then idle: cut 30 s after the
    # last answer, not at the 75 s keep-alive timeout.
    async with await trio.open_tcp_stream(*where) as stream:
        for _ in range(2):
            await stream.send_all(_get("/health"))
            assert status_of(await read_response(stream)) == 200
            await trio.sleep(READ_TIMEOUT - 1)
        assert await _closed_after(stream) == pytest.approx(1, abs=0.01)


async def _trickled_until_closed(stream: trio.SocketStream) -> float:
    """Seconds until the server closes ``stream``, sent a byte of a request head every 29 s."""
    start = trio.current_time()
    for byte in _get("/health"):
        try:
            await stream.send_all(bytes([byte]))
        except trio.BrokenResourceError:
            break  # closed while this was asleep
        with trio.move_on_after(READ_TIMEOUT - 1):
            if await read_to_eof(stream) == b"":
                break
    return trio.current_time() - start


async def test_a_request_head_trickled_in_is_cut_at_the_keep_alive_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # A byte every 29 s never meets the read timeout; the keep-alive timeout,
    # counted from when the connection went idle, still ends it (Hypercorn's
    # idle timer did; now the read deadline keeps its time).
    _, where = await _service(nursery)
    async with await trio.open_tcp_stream(*where) as stream:  # idle since it opened
        assert await _trickled_until_closed(stream) == pytest.approx(KEEP_ALIVE, abs=0.01)
    async with await trio.open_tcp_stream(*where) as stream:  # idle since its answer
        await stream.send_all(_get("/health"))
        assert status_of(await read_response(stream)) == 200
        await trio.sleep(10)
        assert await _trickled_until_closed(stream) == pytest.approx(KEEP_ALIVE - 10, abs=0.01)


async def test_at_shutdown_idle_connections_close_at_once_and_a_busy_one_gets_its_answer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    service = await start_service(nursery, hub)
    where = address(service.url)
    async with (
        await trio.open_tcp_stream(*where) as idle,
        await trio.open_tcp_stream(*where) as busy,
        await trio.open_tcp_stream(*where) as silent,
    ):
        await idle.send_all(_get("/health"))
        assert status_of(await read_response(idle)) == 200
        await busy.send_all(_get("/events/orders?since=0&wait=20"))
        with trio.fail_after(5):
            await wait_until(lambda: hub.waiting == 1)  # the long-poll is parked
        stopped = trio.current_time()
        service.stop_accepting()
        # The idle connection and the one that never sent a byte: closed now.
        assert await _closed_after(idle) == pytest.approx(0, abs=0.01)
        assert await _closed_after(silent) == pytest.approx(0, abs=0.01)
        assert trio.current_time() - stopped == pytest.approx(0, abs=0.01)
        # The busy one: an event wakes its long-poll, it gets its answer, then
        # the connection closes (Hypercorn ends a connection after its answer at shutdown).
        hub.publish("orders", {"orderId": 1})
        with trio.fail_after(5):
            answer = await read_to_eof(busy)
        assert status_of(answer) == 200 and b'"orderId":1' in answer, answer[:300]
