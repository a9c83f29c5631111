"""``GET /events/{topic}/stream``: Server-Sent Events on a real Hypercorn socket."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.lowlevel
import trio.testing

from bezant_trio.http.app import create_app
from bezant_trio.http.context import HttpContext
from bezant_trio.http.gate import RequestGate
from bezant_trio.http.server import serve_http
from bezant_trio.http.sse import SseSettings, SseStreams
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants
from helpers import SSL_CONTEXT, capacity_of, wait_until


class Message(dict):
    """One SSE message: ``id``, ``event``, ``data`` (joined lines) or ``comment``."""


async def sse_messages(response: httpx.Response) -> AsyncIterator[Message]:
    """Parse an SSE body as the EventSource algorithm does (comments kept)."""
    message = Message()
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                message["data"] = "\n".join(data)
            if message:
                yield message
            message, data = Message(), []
        elif line.startswith(":"):
            message.setdefault("comment", line[1:].strip())
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            else:
                message[field] = value


async def messages_with_ids(response: httpx.Response, count: int) -> list[Message]:
    """The first ``count`` messages that carry an ``id``; fails if the stream ends first.

    A test that reads "until the id it expects" must not pass because the
    stream closed before any id came.
    """
    got: list[Message] = []
    async for message in sse_messages(response):
        if "id" in message:
            got.append(message)
            if len(got) == count:
                return got
    raise AssertionError(f"the stream ended after {len(got)} of {count} events: {got}")


async def _serve_hub(
    serve: Any, hub: Hub | None, *, streams: SseStreams | None = None, **kw: Any
) -> str:
    return await serve(HttpContext(hub=hub, **kw), streams=streams)


async def test_stream_sends_id_event_and_the_events_json(serve, hub: Hub) -> None:
    events = [hub.publish("orders", {"orderId": i}) for i in (1, 2, 3)]
    with trio.fail_after(10):
        base = await _serve_hub(serve, hub)
        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
            client.stream("GET", f"{base}/events/orders/stream?since=0") as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            got = await messages_with_ids(response, 3)
    assert [m["id"] for m in got] == ["1", "2", "3"]
    assert {m["event"] for m in got} == {"orders"}
    assert [m["data"].encode() for m in got] == [e.json for e in events]


async def test_stream_delivers_live_events_and_heartbeats_when_idle(serve, hub: Hub) -> None:
    streams = SseStreams(SseSettings(heartbeat=0.05))
    with trio.fail_after(10):
        base = await _serve_hub(serve, hub, streams=streams)
        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
            client.stream("GET", f"{base}/events/orders/stream") as response,
        ):
            messages = sse_messages(response)
            first = await anext(messages)
            assert "retry" in first  # the reconnect delay comes first
            assert (await anext(messages))["comment"] == "heartbeat"
            hub.publish("orders", {"late": True})
            message = await anext(messages)
            while "id" not in message:
                message = await anext(messages)
            assert orjson.loads(message["data"])["payload"] == {"late": True}
            assert streams.clients == 1
    with trio.fail_after(10):
        await wait_until(lambda: streams.clients == 0)


async def test_last_event_id_header_wins_over_since(serve, hub: Hub) -> None:
    for i in range(5):
        hub.publish("orders", {"i": i})
    with trio.fail_after(10):
        base = await _serve_hub(serve, hub)
        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
            client.stream(
                "GET", f"{base}/events/orders/stream?since=0", headers={"last-event-id": "3"}
            ) as response,
        ):
            first, second = await messages_with_ids(response, 2)
    assert (first["id"], second["id"]) == ("4", "5")


async def test_resume_with_last_event_id_loses_nothing_across_20_reconnects(
    serve, hub: Hub
) -> None:
    total = 400
    received: list[int] = []
    with trio.fail_after(60):
        base = await _serve_hub(serve, hub)

        async def publish() -> None:
            for i in range(total):
                hub.publish("orders", {"i": i})
                if i % 10 == 0:
                    await trio.lowlevel.checkpoint()  # interleave with the reader

        async with (
            trio.open_nursery() as nursery,
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
        ):
            nursery.start_soon(publish)
            last_id: str | None = None
            for attempt in range(21):
                headers = {"last-event-id": last_id} if last_id is not None else {}
                take = 5 + attempt  # disconnect after a different count each time (290 in all)
                async with client.stream(
                    "GET", f"{base}/events/orders/stream", headers=headers
                ) as response:
                    taken = 0
                    async for message in sse_messages(response):
                        if "id" not in message:
                            continue
                        received.append(orjson.loads(message["data"])["cursor"])
                        last_id = message["id"]
                        taken += 1
                        if attempt < 20 and taken == take:
                            break
                        if attempt == 20 and received[-1] == total:
                            break
    assert received == list(range(1, total + 1))


async def test_resume_with_last_event_id_reads_from_the_log_across_a_restart(
    tmp_path: Path,
) -> None:
    from bezant_trio.config import config_from_mapping
    from bezant_trio.daemon import open_daemon

    # The ring keeps the newest 10: a client 70 events behind is served from the log.
    config = config_from_mapping(
        {
            "http": {"bind": "127.0.0.1:0"},
            "store": {"path": str(tmp_path / "events.db")},
            "events": {"capacity": {"orders": 10, "default": 10}},
        },
        env={},
    )
    with trio.fail_after(30):
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            async with open_daemon(config, connect=False) as daemon:
                hub = daemon.hub
                assert hub is not None
                for i in range(100):
                    hub.publish("orders", {"i": i})
                await wait_until(lambda: hub.head("orders") == 100)
                async with client.stream(
                    "GET", f"{daemon.http_url}/events/orders/stream?since=0"
                ) as response:
                    with trio.fail_after(5):
                        first = await messages_with_ids(response, 30)
            # A restart: the log holds 1-100, the new ring only its newest 10.
            async with open_daemon(config, connect=False) as daemon:
                hub = daemon.hub
                assert hub is not None
                hub.publish("orders", {"i": "after"})
                await wait_until(lambda: hub.head("orders") == 102)
                assert hub.status()["buffer_sizes"]["orders"] == 10
                async with client.stream(
                    "GET",
                    f"{daemon.http_url}/events/orders/stream",
                    headers={"last-event-id": first[-1]["id"]},
                ) as response:
                    # All of it is there at once: a stream that stops short
                    # fails in seconds, not at the test's bound.
                    with trio.fail_after(5):
                        rest = await messages_with_ids(response, 72)
    assert [m["id"] for m in first] == [str(c) for c in range(1, 31)]
    # Everything after the last id seen, from the log, then the restart's gap
    # and what came after it: no cursor_expired notice, nothing twice.
    assert [m["id"] for m in rest] == [str(c) for c in range(31, 103)]
    assert {m["event"] for m in rest} == {"orders"}
    bodies = [orjson.loads(m["data"]) for m in rest]
    assert [b["payload"] for b in bodies[:70]] == [{"i": i} for i in range(30, 100)]
    assert bodies[70]["payload"]["reason"] == "process_restart"
    assert bodies[71]["payload"] == {"i": "after"}


async def test_expired_cursor_gets_a_gap_message_and_resumes_at_the_oldest_kept(serve) -> None:
    hub = Hub(capacity_of(default=3))
    await hub.open()
    for i in range(10):
        hub.publish("orders", {"i": i})
    with trio.fail_after(10):
        base = await _serve_hub(serve, hub)
        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
            client.stream("GET", f"{base}/events/orders/stream?since=2") as response,
        ):
            gap, *kept = await messages_with_ids(response, 4)
    # The ring keeps 8-10: only 3-7 are gone, and the stream goes on from 8.
    assert gap["event"] == "gap" and gap["id"] == "7"
    body = orjson.loads(gap["data"])
    assert body["cursor"] is None and body["topic"] == "orders"
    assert body["payload"]["reason"] == "cursor_expired"
    assert body["payload"]["skipped_from"] == 2 and body["payload"]["resumed_at"] == 7
    assert [m["id"] for m in kept] == ["8", "9", "10"]
    assert orjson.loads(kept[0]["data"])["payload"] == {"i": 7}


async def test_a_cursor_from_before_a_memory_only_restart_resumes_from_zero(serve) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    hub.publish("orders", {"i": 1})
    with trio.fail_after(10):
        base = await _serve_hub(serve, hub)
        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
            client.stream(
                "GET", f"{base}/events/orders/stream", headers={"last-event-id": "500"}
            ) as response,
        ):
            got = await messages_with_ids(response, 2)
    assert got[0]["event"] == "gap" and got[0]["id"] == "0"
    assert orjson.loads(got[1]["data"])["payload"] == {"i": 1}


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/events/Bad!/stream", {}, 400, "invalid_topic"),
        ("/events/orders/stream?since=-1", {}, 400, "invalid_query"),
        ("/events/orders/stream", {"last-event-id": "abc"}, 400, "invalid_query"),
    ],
)
async def test_bad_stream_requests_get_the_error_envelope(
    serve, hub: Hub, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    with trio.fail_after(10):
        base = await _serve_hub(serve, hub)
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            response = await client.get(base + path, headers=headers)
    assert response.status_code == status and response.json()["code"] == code


async def test_stream_needs_the_token_and_reports_disabled_capture(serve, hub: Hub) -> None:
    with trio.fail_after(10):
        base = await _serve_hub(serve, hub, token="s3cret-token")
        disabled = await _serve_hub(serve, None)
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            unauthorized = await client.get(f"{base}/events/orders/stream")
            no_hub = await client.get(f"{disabled}/events/orders/stream")
            async with client.stream(
                "GET",
                f"{base}/events/orders/stream",
                headers={"authorization": "Bearer s3cret-token"},
            ) as ok:
                assert ok.status_code == 200
    assert unauthorized.status_code == 401 and unauthorized.json()["code"] == "unauthorized"
    assert no_hub.status_code == 503 and no_hub.json()["code"] == "events_disabled"


async def test_marketdata_stream_wants_its_conid(serve, hub: Hub) -> None:
    wants = Wants(100)
    with trio.fail_after(10):
        base = await _serve_hub(serve, hub, wants=wants)
        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
            client.stream("GET", f"{base}/events/marketdata:265598/stream") as response,
        ):
            assert response.status_code == 200
            assert wants.wanted() == [265598]


async def test_streams_end_promptly_when_the_hub_closes(serve, hub: Hub) -> None:
    streams = SseStreams()  # 15 s heartbeats: only the shutdown can end it early
    with trio.fail_after(5):
        base = await _serve_hub(serve, hub, streams=streams)
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            async with client.stream("GET", f"{base}/events/orders/stream") as response:
                messages = sse_messages(response)
                await anext(messages)
                await wait_until(lambda: hub.waiting == 1)
                await hub.close()
                rest = [m async for m in messages]
            assert rest[-1]["comment"].startswith("shutting down")
    assert streams.clients == 0


async def test_a_chunk_accepted_too_slowly_ends_the_stream_with_a_final_comment(
    hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    streams = SseStreams(SseSettings(slow_client_timeout=30.0))
    for i in range(3):
        hub.publish("orders", {"i": i})
    frames = streams._frames(hub, "orders", 0, None)
    assert b"retry:" in await anext(frames)
    first = await anext(frames)  # the three events, as one chunk
    assert first.count(b"id: ") == 3
    hub.publish("orders", {"i": 3})
    # The server takes 31 s to hand that chunk to a slow client's socket, and
    # an event is waiting for it: the stream says why it ends and ends.
    await trio.sleep(31)
    final = await anext(frames)
    assert final.startswith(b": slow client") and b"Last-Event-ID" in final
    with pytest.raises(StopAsyncIteration):
        await anext(frames)
    assert streams.clients == 0 and streams.slow_disconnects == 1


async def test_a_client_that_reads_nothing_is_dropped_after_the_stall_timeout(
    nursery: trio.Nursery,
) -> None:
    hub = Hub(capacity_of(default=4000))
    await hub.open()
    payload = {"pad": "x" * 8000}
    for _ in range(3000):  # ~24 MB: more than the socket buffers take
        hub.publish("orders", payload)
    streams = SseStreams()
    app = RequestGate(create_app(HttpContext(hub=hub), streams=streams))
    stop = trio.Event()
    binds = await nursery.start(
        partial(serve_http, app, "127.0.0.1:0", shutdown_trigger=stop.wait, stall_timeout=0.5)
    )
    host, port = binds[0].removeprefix("http://").split(":")
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        with trio.fail_after(20):
            await sock.connect((host, int(port)))
            await sock.send(
                f"GET /events/orders/stream?since=0 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            )
            await wait_until(lambda: streams.clients == 1)
            # Read nothing: the server's write stalls, the kernel drops the
            # connection, and the stream's task ends.
            await wait_until(lambda: streams.clients == 0 and app.count == 0)
            # The client sees the end: a reset, or EOF after what was buffered.
            try:
                while await sock.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass
    finally:
        sock.close()
        stop.set()


def test_openapi_lists_the_stream_and_every_route_the_app_serves() -> None:
    from bezant_trio.http.openapi import openapi_spec

    app = create_app(HttpContext(hub=None))
    routes = {
        re.sub(r"<(\w+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    spec = openapi_spec()
    assert routes == set(spec["paths"])
    stream = spec["paths"]["/events/{topic}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert {p["name"] for p in stream["parameters"]} == {"topic", "since", "Last-Event-ID"}


async def test_daemon_stop_ends_open_streams_at_once(nursery: trio.Nursery) -> None:
    from bezant_trio.config import config_from_mapping
    from bezant_trio.daemon import Daemon

    config = config_from_mapping({"http": {"bind": "127.0.0.1:0"}}, env={})
    daemon = Daemon(config, connect=False)
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Daemon]) -> None:
        try:
            await daemon.run(task_status=task_status)
        finally:
            done.set()

    with trio.fail_after(20):
        await nursery.start(run)
        daemon.hub.publish("orders", {"i": 1})
        async with (
            httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client,
            client.stream("GET", f"{daemon.http_url}/events/orders/stream") as response,
        ):
            messages = sse_messages(response)
            while "id" not in await anext(messages):
                pass
            await wait_until(lambda: daemon.hub.waiting >= 1)
            daemon.request_stop()
            rest = [m async for m in messages]
        await done.wait()
        stopped_at = trio.current_time()
    # Ended by the hub's close (its comment), not cut at the stop's deadline:
    # a stream left open would hold the stop until the deadline (the next
    # heartbeat, 15 s, comes later still).
    assert rest[-1]["comment"].startswith("shutting down")
    assert daemon.stop_deadline is not None and stopped_at < daemon.stop_deadline
    assert daemon.http is not None and daemon.http.streams.clients == 0
