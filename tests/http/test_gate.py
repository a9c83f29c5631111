"""The request gate and the connection loop (``http.gate``, ``http.server``) over real sockets.

Request bodies (no route takes one: dropped as they arrive, bounded in size
and time), the caps on streams and connections with their ``/health``
reserve, the close after ``Connection: close`` and HTTP/1.0, and what
happens to connections the client leaves or an HTTP/2 error ends.
"""

from __future__ import annotations

import logging
import os

import httpx
import orjson
import pytest
import trio
from serving import (
    address,
    exchange,
    get,
    header,
    read_response,
    read_to_eof,
    start_service,
    status_of,
)

from bezant_trio.http import HttpLimits, HttpService
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants
from h2raw import RawH2
from helpers import SSL_CONTEXT, capacity_of, wait_until


async def _hub() -> Hub:
    hub = Hub(capacity_of())
    await hub.open()
    hub.publish("orders", {"orderId": 1})
    return hub


def _code(answer: bytes) -> str:
    return orjson.loads(answer.partition(b"\r\n\r\n")[2])["code"]


# ---- Connection: close and HTTP/1.0 ------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/events/_status",
        "/health",
        "/metrics",
        "/nope",  # 404
        "/events/orders?since=-1",  # 400
        "/events/orders/history",  # 503 without the log
        "/events/orders?since=0",  # the fast path
        "/events/orders?since=1&wait=0.2",  # a long-poll on the fast path that times out
    ],
)
@pytest.mark.parametrize("fast", [True, False])
async def test_the_server_closes_after_connection_close_and_http_1_0(
    nursery: trio.Nursery, target: str, fast: bool
) -> None:
    service = await start_service(nursery, await _hub())
    service.fast_polls.enabled = fast
    requests = [
        get(target, "Connection: close"),
        f"GET {target} HTTP/1.0\r\n\r\n".encode(),
    ]
    with trio.fail_after(10):  # Quart used to leave the socket open for 30 s
        for request in requests:
            stream = await trio.open_tcp_stream(*address(service.url))
            async with stream:
                await stream.send_all(request)
                answer = await read_to_eof(stream)
            assert status_of(answer) is not None, (request, answer)


# ---- request bodies -----------------------------------------------------------


async def test_a_declared_body_over_64_kib_is_refused_before_it_is_sent(
    nursery: trio.Nursery,
) -> None:
    service = await start_service(nursery, await _hub())
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(*address(service.url))
        async with stream:
            await stream.send_all(get("/events/orders?since=0", "Content-Length: 10000000"))
            answer = await read_to_eof(stream)  # the server closes: the body is not wanted
    assert status_of(answer) == 413 and _code(answer) == "payload_too_large"
    assert service._app.refused["body_too_large"] == 1


async def test_a_chunked_body_on_a_long_poll_is_dropped_then_cut_at_64_kib(
    nursery: trio.Nursery,
) -> None:
    service = await start_service(nursery, await _hub())
    hub = service.ctx.hub
    sent = 0
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream(*address(service.url))
        async with stream:
            await stream.send_all(
                get("/events/orders?since=1&wait=30", "Transfer-Encoding: chunked")
            )
            await wait_until(lambda: hub.waiting == 1)
            chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
            try:
                while sent < 50 * 1024 * 1024:
                    await stream.send_all(chunk)
                    sent += 0x4000
            except trio.BrokenResourceError:
                pass  # the server answered and closed
            answer = await read_to_eof(stream)
    assert status_of(answer) == 413 and _code(answer) == "payload_too_large"
    assert sent < 8 * 1024 * 1024  # cut early: a few socket buffers' worth, not 50 MiB
    assert hub.waiting == 0


async def test_a_trickled_body_ends_the_request_after_the_body_timeout(
    nursery: trio.Nursery,
) -> None:
    service = await start_service(nursery, await _hub(), limits=HttpLimits(body_timeout=0.5))
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream(*address(service.url))
        async with stream:
            await stream.send_all(get("/events/orders?since=1&wait=30", "Content-Length: 1000"))

            async def trickle() -> None:
                try:
                    while True:
                        await stream.send_all(b"x")
                        await trio.sleep(0.1)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as trickling:
                trickling.start_soon(trickle)
                answer = await read_response(stream)
                trickling.cancel_scope.cancel()
    # The body timeout's answer, not the long-poll's (a 204 after its 30 s,
    # which the 20 s bound would not wait for anyway).
    assert status_of(answer) == 408 and _code(answer) == "body_timeout"
    assert service._app.refused["body_timeout"] == 1


async def test_an_http2_body_on_a_long_poll_is_dropped_then_cut_at_64_kib(
    nursery: trio.Nursery,
) -> None:
    service = await start_service(nursery, await _hub())
    with trio.fail_after(20):
        async with RawH2.connect(*address(service.url)) as conn:
            sid = await conn.request("/events/orders?since=1&wait=30", end_stream=False)
            await wait_until(lambda: service.ctx.hub.waiting == 1)
            # No content-length: over HTTP/2 only the DATA frames say there is a body.
            sent = await conn.stream_body(sid, 100 * 1024 * 1024)
            await conn.responses[sid].ended.wait()
        async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
            after = await client.get(f"{service.url}/events/orders?since=0")
        await wait_until(lambda: service.in_flight == 0)
    response = conn.responses[sid]
    assert response.status == 413 and b"payload_too_large" in response.body
    assert sent < 4 * 1024 * 1024
    assert after.status_code == 200


async def test_an_http2_body_after_the_answer_closes_that_connection_only(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bezant_trio.http.server")
    service = await start_service(nursery, await _hub())
    with trio.fail_after(20):
        async with RawH2.connect(*address(service.url)) as other:
            async with RawH2.connect(*address(service.url)) as conn:
                # Answered at once; the body goes on after the stream was closed,
                # which Hypercorn's HTTP/2 code meets with a KeyError.
                sid = await conn.request("/events/orders?since=0", end_stream=False)
                await conn.stream_body(sid, 10 * 1024 * 1024)
                await conn.closed.wait()
            assert conn.responses[sid].status == 200
            sid = await other.request("/events/orders?since=0")
            await other.responses[sid].ended.wait()
    assert other.responses[sid].status == 200
    # One line (the traceback only at DEBUG), nothing from Hypercorn.
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.name for r in lines] == ["bezant_trio.http.server"], caplog.text
    assert "KeyError" in lines[0].getMessage() and lines[0].exc_info is None


# ---- the stream cap -------------------------------------------------------------


async def test_requests_beyond_max_streams_get_503_and_health_still_answers(
    nursery: trio.Nursery,
) -> None:
    hub = await _hub()
    service = await start_service(nursery, hub, limits=HttpLimits(max_streams=3))
    with trio.fail_after(20):
        async with httpx.AsyncClient(
            verify=SSL_CONTEXT, base_url=service.url, timeout=10
        ) as client:
            async with trio.open_nursery() as polls:
                answers: list[httpx.Response] = []

                async def long_poll() -> None:
                    answers.append(await client.get("/events/orders?since=1&wait=30"))

                for _ in range(3):
                    polls.start_soon(long_poll)
                await wait_until(lambda: hub.waiting == 3)
                refused = await client.get("/events/orders?since=0")
                scrape = await client.get("/metrics")
                health = await client.get("/health")
                hub.publish("orders", {"orderId": 2})
            served = await client.get("/events/orders?since=0")
    assert refused.status_code == 503 and refused.json()["code"] == "too_many_streams"
    assert refused.headers["retry-after"] == "5"
    assert scrape.status_code == 503
    assert health.status_code == 200
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert served.status_code == 200
    assert service._app.refused["max_streams"] == 2


async def test_http2_streams_beyond_max_streams_get_503(nursery: trio.Nursery) -> None:
    hub = await _hub()
    service = await start_service(nursery, hub, limits=HttpLimits(max_streams=5))
    with trio.fail_after(20):
        async with RawH2.connect(*address(service.url)) as conn:
            sids = [await conn.request("/events/orders?since=1&wait=30") for _ in range(5)]
            await wait_until(lambda: hub.waiting == 5)
            more = [await conn.request("/events/orders?since=1&wait=30") for _ in range(20)]
            for sid in more:
                await conn.responses[sid].ended.wait()
            health = await conn.request("/health")
            await conn.responses[health].ended.wait()
            hub.publish("orders", {"orderId": 2})
            for sid in sids:
                await conn.responses[sid].ended.wait()
    assert {conn.responses[sid].status for sid in more} == {503}
    assert all(conn.responses[sid].headers[b"retry-after"] == b"5" for sid in more)
    assert conn.responses[health].status == 200
    assert {conn.responses[sid].status for sid in sids} == {200}


# ---- the connection cap ------------------------------------------------------------


async def test_connections_beyond_the_cap_get_the_reserve_then_are_dropped(
    nursery: trio.Nursery,
) -> None:
    service = await start_service(
        nursery, await _hub(), limits=HttpLimits(max_connections=3, reserve=2)
    )
    slots = service.connections
    with trio.fail_after(20):
        idle = [await trio.open_tcp_stream(*address(service.url)) for _ in range(3)]
        await wait_until(lambda: slots.open == 3)
        # In the reserve: a poll is refused, /health answered; each answer closes.
        poll = await exchange(service.url, get("/events/orders?since=0"))
        health_stream = await trio.open_tcp_stream(*address(service.url))
        await health_stream.send_all(get("/health"))
        health = await read_to_eof(health_stream)
        # The reserve full of idle connections: the next one is closed at once.
        reserve = [await trio.open_tcp_stream(*address(service.url)) for _ in range(2)]
        await wait_until(lambda: slots.open == 5)
        dropped = await trio.open_tcp_stream(*address(service.url))
        await dropped.send_all(get("/health"))
        nothing = await read_to_eof(dropped)
        # The server closes the reserve's idle connections after RESERVE_IDLE,
        # and the health check gets in.
        await wait_until(lambda: slots.open == 3)
        health_later = await exchange(service.url, get("/health"))
        for stream in idle:
            await stream.aclose()
        await wait_until(lambda: slots.open <= 2)
        served = await exchange(service.url, get("/events/orders?since=0"))
        for stream in (*reserve, dropped, health_stream):
            await stream.aclose()
    assert status_of(poll) == 503 and _code(poll) == "too_many_connections"
    assert header(poll, b"retry-after") == b"5" and header(poll, b"connection") == b"close"
    assert status_of(health) == 200 and header(health, b"connection") == b"close"
    assert nothing == b""
    assert status_of(health_later) == 200
    assert status_of(served) == 200
    assert slots.dropped >= 1 and service._app.refused["max_connections"] == 1


async def test_a_connection_the_client_closed_while_idle_is_closed_at_once(
    nursery: trio.Nursery,
) -> None:
    service = await start_service(nursery, await _hub())
    fds = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(20):
        streams = [await trio.open_tcp_stream(*address(service.url)) for _ in range(50)]
        for stream in streams[:25]:  # half of them after a request (keep-alive)
            await stream.send_all(get("/health"))
            await read_response(stream)
        await wait_until(lambda: service.connections.open == 50)
        for stream in streams:
            await stream.aclose()
        # Not after Hypercorn's 75 s keep-alive timeout: at once.
        await wait_until(lambda: service.connections.open == 0)
    assert len(os.listdir("/proc/self/fd")) <= fds + 2


async def test_max_connections_is_lowered_to_fit_the_open_files_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("bezant_trio.fds.open_files_limit", lambda: 1024)
    service = HttpService(await _hub(), bind="127.0.0.1:0", wants=Wants(1))
    assert service.limits.max_connections == 1024 - 128 - 16
    assert "does not fit in the open-files limit 1024" in caplog.text
