"""The lean test client: what it sends, what it reuses, and how it fails, against a real server.

The server here is a real HTTP/1.1 listener on 127.0.0.1 (trio and h11) that
records each request with the connection it came on, and is told how to
misbehave: end the connection after the answer without saying so, end it
half-way through an answer, answer with ``Connection: close``, never answer.
One test also asks a real daemon, where the suite uses the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h11
import httpx
import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from bezant_trio.testing import DaemonProcess, HTTPError, LeanClient
from bezant_trio.testing.http import HTTPStatusError, encode_params, request_target


@dataclass
class Seen:
    connection: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """A scripted HTTP/1.1 server; ``mode`` says how it answers the next requests."""

    port: int = 0
    mode: str = "ok"  # ok | close_after | cut_short | connection_close | hang | chunked
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                self.seen.append(
                    Seen(
                        number,
                        request.method.decode(),
                        request.target.decode(),
                        {k.decode(): v.decode() for k, v in request.headers},
                        body,
                    )
                )
                payload = orjson.dumps({"n": len(self.seen), "echo": body.decode()})
                if self.mode == "hang":
                    await trio.sleep_forever()
                headers = [("content-type", "application/json")]
                if self.mode == "chunked":
                    headers.append(("transfer-encoding", "chunked"))
                else:
                    headers.append(("content-length", str(len(payload))))
                if self.mode == "connection_close":
                    headers.append(("connection", "close"))
                status = 404 if request.target.startswith(b"/missing") else 200
                out = conn.send(h11.Response(status_code=status, headers=headers))
                if self.mode == "cut_short":
                    await stream.send_all(out + payload[:5])
                    return
                if self.mode == "chunked":
                    out += conn.send(h11.Data(data=payload[:7])) + conn.send(
                        h11.Data(data=payload[7:])
                    )
                else:
                    out += conn.send(h11.Data(data=payload))
                await stream.send_all(out + conn.send(h11.EndOfMessage()))
                if self.mode == "close_after" or conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    server = Server()
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    yield server


async def test_requests_share_one_keep_alive_connection_with_query_and_headers(
    server: Server,
) -> None:
    async with LeanClient(headers={"X-Always": "1"}) as client:
        for since in range(3):
            response = await client.get(
                f"{server.url}/events/orders",
                params={"since": since, "wait": 0.5, "full": True},
                headers={"Authorization": "Bearer t"},
            )
            assert response.status_code == 200
            assert response.json()["n"] == since + 1
            assert response.headers["Content-Type"] == "application/json"
            assert "content-length" in response.headers
    assert server.connections == 1
    assert [s.target for s in server.seen] == [
        f"/events/orders?since={n}&wait=0.5&full=true" for n in range(3)
    ]
    first = server.seen[0].headers
    assert first["host"] == f"127.0.0.1:{server.port}"
    assert first["authorization"] == "Bearer t" and first["x-always"] == "1"


async def test_a_query_in_the_url_is_kept_and_params_appended(server: Server) -> None:
    async with LeanClient() as client:
        await client.get(f"{server.url}/events/orders?since=5", params={"limit": 2})
        await client.get(f"{server.url}/x?a=b")
    assert [s.target for s in server.seen] == ["/events/orders?since=5&limit=2", "/x?a=b"]


async def test_a_post_carries_its_json_body(server: Server) -> None:
    async with LeanClient() as client:
        response = await client.post(f"{server.url}/hook", json={"a": [1, 2]})
        empty = await client.post(f"{server.url}/hook")
    assert response.json()["echo"] == '{"a":[1,2]}'
    assert server.seen[0].headers["content-type"] == "application/json"
    assert server.seen[0].headers["content-length"] == "11"
    assert empty.status_code == 200 and server.seen[1].headers["content-length"] == "0"


async def test_a_chunked_answer_is_read_whole(server: Server) -> None:
    server.mode = "chunked"
    async with LeanClient() as client:
        assert (await client.get(server.url)).json() == {"n": 1, "echo": ""}
        assert (await client.get(server.url)).json() == {"n": 2, "echo": ""}
    assert server.connections == 1


async def test_connection_close_is_obeyed_and_the_next_request_opens_a_new_one(
    server: Server,
) -> None:
    server.mode = "connection_close"
    async with LeanClient() as client:
        for _ in range(3):
            assert (await client.get(server.url)).status_code == 200
    assert server.connections == 3


async def test_a_get_on_a_connection_closed_while_idle_is_sent_again_on_a_new_one(
    server: Server,
) -> None:
    # The server ends each connection after its answer without a word, as a
    # restarted daemon or an idle timeout does: the next GET finds it closed.
    server.mode = "close_after"
    async with LeanClient() as client:
        for _ in range(3):
            await trio.testing.wait_all_tasks_blocked()  # the server has closed it
            assert (await client.get(server.url)).status_code == 200
    assert server.connections == 3
    assert len(server.seen) == 3  # each GET reached the server once


async def test_a_post_on_a_closed_idle_connection_fails_rather_than_sending_twice(
    server: Server,
) -> None:
    server.mode = "close_after"
    async with LeanClient() as client:
        await client.post(server.url, content=b"one")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(HTTPError, match="closed"):
            await client.post(server.url, content=b"two")
    assert [s.body for s in server.seen] == [b"one"]


async def test_an_answer_cut_short_is_an_error_not_a_short_body(server: Server) -> None:
    server.mode = "cut_short"
    async with LeanClient() as client:
        with pytest.raises(HTTPError):
            await client.get(server.url)
        server.mode = "ok"
        assert (await client.get(server.url)).status_code == 200


async def test_no_answer_is_an_error_after_the_timeout(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    server.mode = "hang"
    async with LeanClient(timeout=30) as client:
        start = trio.current_time()
        with pytest.raises(HTTPError, match="within 2 s"):
            await client.get(server.url, timeout=2)
        assert trio.current_time() - start == pytest.approx(2)


async def test_a_refused_connection_is_an_error() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    async with LeanClient() as client:
        with pytest.raises(HTTPError, match="connect"):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_status_errors_and_unsupported_urls(server: Server) -> None:
    async with LeanClient() as client:
        missing = await client.get(f"{server.url}/missing")
        assert missing.status_code == 404
        with pytest.raises(HTTPStatusError, match="404"):
            missing.raise_for_status()
        assert (await client.get(server.url)).raise_for_status().status_code == 200
        with pytest.raises(ValueError, match="http://"):
            await client.get("https://127.0.0.1/")
    with pytest.raises(RuntimeError, match="closed"):
        await client.get(server.url)


_values = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
)


@given(params=st.dictionaries(st.text(min_size=1, max_size=6), _values, max_size=5))
def test_params_are_encoded_as_httpx_encodes_them(params: dict[str, Any]) -> None:
    assert encode_params(params) == str(httpx.QueryParams(params))


@pytest.mark.parametrize(
    "url",
    [
        "http://h/events/BAD TOPIC",
        "http://h/events/orders?since=-1&token=a b",
        "http://h/caf\u00e9/%41%zz?q=\u00fc&r=%20",
        "http://h/a:b@c/!$&'()*+,;=?x=/?#",
        "http://h",
    ],
)
def test_paths_and_queries_are_encoded_as_httpx_encodes_them(url: str) -> None:
    assert request_target(url, None) == httpx.URL(url).raw_path.decode()


async def test_it_reads_a_real_daemon_across_a_restart(tmp_path: Path) -> None:
    config = {"gateway": {"url": "http://127.0.0.1:9"}, "http": {"bind": "127.0.0.1:0"}}
    daemon = DaemonProcess(tmp_path, {**config, "store": {"path": str(tmp_path / "e.db")}})
    try:
        with trio.fail_after(60):
            async with LeanClient() as client:
                url = await daemon.start()
                first = await client.get(f"{url}/events/orders", params={"since": 0, "wait": 0})
                assert first.status_code == 200 and first.json()["events"] == []
                assert (await daemon.status())["connected"] is False
                await daemon.stop()
                with pytest.raises(HTTPError):
                    await client.get(f"{url}/health")
                url = await daemon.start()
                health = await client.get(f"{url}/health")
                assert health.status_code == 200 and health.json()["status"]
    finally:
        await daemon.close()
