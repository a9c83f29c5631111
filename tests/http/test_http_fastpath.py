"""The ASGI fast path for polls (``http.fastpath``): Quart's bytes, without Quart.

Every request goes to a real daemon (Hypercorn on 127.0.0.1) twice, once with
the fast path on and once with it off. The two answers must be the same bytes
on the wire (status line, every header but ``date``, body), and ``/metrics``
must count them the same. The table says for each request whether the fast
path answers it or hands it to Quart.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing
from hypothesis import event, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from test_http import BAD_QUERIES

from bezant_trio.config import config_from_mapping
from bezant_trio.daemon import Daemon
from bezant_trio.http.app import create_app
from bezant_trio.http.context import HttpContext
from bezant_trio.http.fastpath import FastPolls
from bezant_trio.model import GapReason
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants
from helpers import SSL_CONTEXT, capacity_of, examples, wait_until

TOKEN = "s3cret"
_DATE = re.compile(rb"(?im)^date: [^\r\n]*\r\n")


async def _fill(hub: Hub) -> None:
    """Heads: orders 6, pnl 4, marketdata:265598 3, ntf 7 (its ring keeps 6 and 7), gap 1."""
    for i in range(5):
        hub.publish("orders", {"orderId": i, "status": "Filled"})
    for i in range(3):
        hub.publish("pnl", {"upnl": i + 0.5})
    for price in ("101.5", "101.75"):
        hub.publish("marketdata:265598", {"31": price, "conid": 265598})
    for i in range(6):
        hub.publish("ntf", {"i": i})
    await hub.bump_epoch(GapReason.RECONNECTED_AFTER_DISCONNECT)


def _want(wants: Wants) -> None:
    for conid in (265598, 2, 3):  # max_conids=3: any other conid is one too many
        wants.want(conid)


async def _daemon(
    nursery: trio.Nursery, *, token: str | None = None, store: Path | None = None
) -> Daemon:
    config = config_from_mapping(
        {
            "http": {"bind": "127.0.0.1:0", "token": token},
            "events": {"capacity": {"ntf": 2}, "marketdata": {"max_conids": 3}},
            "store": {"path": None if store is None else str(store)},
        },
        env={},
    )
    daemon: Daemon = await nursery.start(Daemon(config, connect=False).run)
    hub = daemon.hub
    assert hub is not None and daemon.http is not None and daemon.http.fast_polls.enabled
    await _fill(hub)
    _want(daemon.wants)
    # With the log, each topic's events are visible once its own batch is
    # committed: wait for every head _fill names, not just one.
    heads = {"orders": 6, "pnl": 4, "marketdata:265598": 3, "ntf": 7, "gap": 1}
    await wait_until(lambda: all(hub.head(t) == n for t, n in heads.items()))
    return daemon


def _request(
    target: bytes,
    *headers: bytes,
    method: bytes = b"GET",
    version: bytes = b"HTTP/1.1",
    body: bytes = b"",
    host: bytes = b"localhost",
) -> bytes:
    lines = [b"%s %s %s" % (method, target, version)]
    if version == b"HTTP/1.1":
        lines += [b"Host: " + host, b"Connection: close"]
    lines += headers
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def _exchange(url: str, request: bytes) -> bytes:
    """``request`` on a new connection; the response (head and body) it gets."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reply = bytearray()
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        # Read by Content-Length, not to EOF (test_http.py checks the close).
        while b"\r\n\r\n" not in reply:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return bytes(reply)
            reply += chunk
        head = bytes(reply).partition(b"\r\n\r\n")[0]
        length = re.search(rb"(?im)^content-length: *(\d+)\r?$", head)
        if not request.startswith(b"HEAD ") and length is not None:
            while len(reply) < len(head) + 4 + int(length[1]):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                reply += chunk
    return bytes(reply)


def _delta(before: dict[Any, int], after: dict[Any, int]) -> dict[Any, int]:
    return {key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)}


async def _on_and_off(daemon: Daemon, request: bytes) -> tuple[bytes, bool]:
    """Send ``request`` with the fast path on, then off; assert the answers are one.

    Returns the answer and whether the fast path gave it.
    """
    assert daemon.http is not None and daemon.http_url is not None
    polls, counts = daemon.http.fast_polls, daemon.http.metrics.http_requests
    answers: list[bytes] = []
    counted: list[dict[Any, int]] = []
    answered = polls.answered
    for enabled in (True, False):
        polls.enabled = enabled
        before = dict(counts)
        answers.append(_DATE.sub(b"", await _exchange(daemon.http_url, request)))
        counted.append(_delta(before, counts))
    polls.enabled = True
    fast, quart = answers
    assert fast == quart, request
    assert counted[0] == counted[1], request
    return fast, polls.answered - answered == 1


def _get(target: str, *headers: bytes) -> bytes:
    return _request(target.encode(), *headers)


#: (request, answered by the fast path)
PLAIN_TABLE: list[tuple[bytes, bool]] = [
    # valid polls: answered by the fast path
    (_get("/events/orders"), True),
    (_get("/events/orders?since=0"), True),
    (_get("/events/orders?since=2"), True),
    (_get("/events/orders?since=2&limit=2"), True),
    (_get("/events/orders?since=0&limit=1000"), True),
    (_get("/events/orders?since=0&limit=5000"), True),
    (_get("/events/orders?since=000002&limit=01"), True),
    (_get("/events/orders?since=6"), True),  # caught up: 204
    (_get("/events/orders?since=6&wait=0"), True),
    (_get("/events/orders?since=0&wait=0.5"), True),  # events ready: no waiting
    (_get("/events/orders?limit=3&since=1&wait=0"), True),
    (_get("/events/pnl?since=0"), True),
    (_get("/events/gap"), True),
    (_get("/events/ntf?since=5"), True),
    (_get("/events/never_seen"), True),
    (_get("/events/never_seen?since=7&limit=3"), True),
    (_get("/events/marketdata?conid=265598"), True),
    (_get("/events/marketdata?conid=265598&since=1&limit=1"), True),
    (_get("/events/marketdata?since=1&conid=265598"), True),
    (_get("/events/marketdata:265598?since=0"), True),
    (_get("/events/marketdata:2"), True),
    (_get("/events/bars?conid=265598"), True),
    (_get("/events/bars:265598?since=0"), True),
    (_get("/events/book?conid=265598"), True),
    (_get("/events/bars"), False),  # 400: conid is required
    (_get("/events/marketdata:abc"), True),  # not a conid: nothing to want
    (_get("/events/orders?since=1&foo=bar&x"), True),
    (_get("/events/orders?since=1&since=3"), True),  # the first wins, as in werkzeug
    (_get("/events/orders?&&since=1&"), True),
    (_get("/events/orders?=1&since=2"), True),
    (_get("/events/%6Frders?since=1"), True),  # the path arrives decoded
    (_request(b"/events/orders?since=1", version=b"HTTP/1.0"), True),  # no Host at all
    (_get("/events/orders?since=1", b"Accept: */*", b"User-Agent: x"), True),
    (_get("/events/orders?since=1", b"Authorization: Bearer whatever"), True),  # no token set
    # without a token, the Host and browser-origin check (http.hosts)
    (_request(b"/events/orders?since=1", host=b"127.0.0.1:8080"), True),
    (_request(b"/events/orders?since=1", host=b"LocalHost"), True),
    (_request(b"/events/orders?since=1", host=b"[::1]:8080"), True),
    (_get("/events/orders?since=1", b"Origin: http://localhost:3000"), True),
    (_get("/events/orders?since=1", b"Sec-Fetch-Site: same-origin"), True),
    (_get("/events/orders?since=1", b"Sec-Fetch-Site: none"), True),
    (_request(b"/events/orders?since=1", host=b"attacker.example:8080"), True),  # 403
    (_request(b"/events/orders?since=1", host=b"127.0.0.2"), True),  # 403
    (_request(b"/events/orders?since=1", host=b"localhost.attacker.example"), True),  # 403
    (_request(b"/events/orders?since=1", host=b"localhost:80x"), True),  # 403
    (_request(b"/events/marketdata?conid=77", host=b"attacker.example"), True),  # 403 before 429
    (_request(b"/events/orders?limit=0", host=b"attacker.example"), True),  # 403 before 400
    (_get("/events/orders?since=1", b"Origin: http://attacker.example"), True),  # 403
    (_get("/events/orders?since=1", b"Origin: null"), True),  # 403
    (_get("/events/marketdata?conid=2", b"Sec-Fetch-Site: cross-site"), True),  # 403
    (_get("/events/orders?since=1", b"Sec-Fetch-Site: same-site"), True),  # 403
    (_request(b"/events/_status", host=b"attacker.example"), False),  # Quart's 403
    (_request(b"/nope", host=b"attacker.example"), False),  # 403 before 404
    (_request(b"/events/orders/stream", host=b"attacker.example"), False),
    (_request(b"/health", host=b"attacker.example"), False),  # 200: /health is open
    (_request(b"/events/Orders?since=1", host=b"attacker.example"), False),
    # answered by Quart: hub answers the fast path leaves to it
    (_get("/events/orders?since=999999"), False),  # 412: a cursor from the future
    (_get("/events/ntf?since=1"), False),  # 412: evicted
    (_get("/events/marketdata?conid=77"), False),  # 429
    (_get("/events/marketdata:77"), False),  # 429
    (_get("/events/marketdata:0123"), False),  # 429 (conid 123)
    # input the fast path does not parse
    (_get("/events/orders?since"), False),
    (_get("/events/orders?since=%31"), False),
    (_get("/events/orders?since=1+"), False),
    (_get("/events/orders?%73ince=2"), False),
    (_get("/events/orders?since=%FF"), False),
    (_request(b"/events/orders?since=\xff"), False),
    (_get("/events/orders%0A?since=0"), False),
    (_get("/events/marketdata:?since=0"), False),
    (_request(b"http://test/events/orders?since=1"), False),  # absolute form
    # other routes and methods
    (_get("/events/orders/history"), False),
    (_get("/events"), False),
    (_get("/events/"), False),
    (_get("/events//orders"), False),
    (_get("/events/orders/"), False),
    (_get("/health"), False),
    (_get("/nope"), False),
    (_get("/openapi.json"), False),
    (_request(b"/events/orders?since=0", method=b"HEAD"), False),
    (_request(b"/events/_status", method=b"POST"), False),
    (_request(b"/events/orders/stream", method=b"DELETE"), False),
    (_request(b"/nope", method=b"FOO"), False),  # 404 before 405
    # a method no route allows on a poll route: the fast path's 405, with Allow
    (_request(b"/events/orders", method=b"POST", body=b""), True),
    (_request(b"/events/orders", method=b"OPTIONS"), True),
    (_request(b"/events/orders?since=1&limit=x", method=b"PUT"), True),  # 405 before 400
    (_request(b"/events/never_seen", method=b"DELETE"), True),
    (_request(b"/events/marketdata?conid=265598", method=b"PATCH"), True),
    (_request(b"/events/marketdata", method=b"TRACE"), True),  # 405 before the missing conid
    (_request(b"/events/bars:77", method=b"POST"), True),  # 405 before 429
    (_request(b"/events/%6Frders", method=b"POST"), True),  # the path as Quart sees it
    (_request(b"/events/orders", method=b"Q" * 8000), True),  # made up: labelled other
    (_request(b"/events/orders", method=b"get"), True),  # methods are case-sensitive
    (_request(b"/events/orders", b"Content-Length: 2", method=b"POST", body=b"{}"), False),
    (_request(b"/events/orders", method=b"POST", host=b"attacker.example"), True),  # 403 first
    (_request(b"/events/Orders", method=b"POST"), False),  # not a topic the fast path knows
    # requests with a body, or asking to send one
    (_get("/events/orders?since=1", b"Content-Length: 3") + b"abc", False),
    (_get("/events/orders?since=1", b"Content-Length: 0"), True),  # no body after all
    (_get("/events/orders?since=0&wait=0.5", b"Content-Length: 0"), True),
    (_get("/events/orders?since=6&wait=0.2", b"Content-Length: 0"), True),  # waits: 204
    (_get("/events/orders?since=1", b"Content-Length: 00"), False),
    (
        _get("/events/orders?since=1", b"Transfer-Encoding: chunked") + b"3\r\nabc\r\n0\r\n\r\n",
        False,
    ),
    (_get("/events/orders?since=1", b"Expect: 100-continue", b"Content-Length: 0"), False),
    # every bad input of test_http.py
    *[(_get(path), False) for path, _code, _names in BAD_QUERIES],
]

_RIGHT = b"Authorization: Bearer s3cret"
TOKEN_TABLE: list[tuple[bytes, bool]] = [
    (_get("/events/orders?since=1", _RIGHT), True),
    (_get("/events/orders?since=1", b"authorization: bearer s3cret"), True),
    (_get("/events/orders?since=1", b"Authorization: BEARER   s3cret  "), True),
    (_get("/events/marketdata?conid=265598", _RIGHT), True),
    (_get("/events/marketdata:2?since=0", _RIGHT), True),
    (_get("/events/orders?since=1", _RIGHT, b"Authorization: Bearer wrong"), True),
    # with a token, the Host is not checked: a page cannot know the token
    (_request(b"/events/orders?since=1", _RIGHT, host=b"attacker.example"), True),
    (_request(b"/events/orders?since=1", host=b"attacker.example"), True),  # 401
    (_request(b"/events/_status", _RIGHT, host=b"attacker.example"), False),
    # the 401 on the poll routes comes from the fast path, which checked the token
    (_get("/events/orders?since=1"), True),
    (_get("/events/orders?since=1", b"Authorization: Bearer wrong"), True),
    (_get("/events/orders?since=1", b"Authorization: Bearer s3cret2"), True),
    (_get("/events/orders?since=1", b"Authorization: Basic s3cret"), True),
    (_get("/events/orders?since=1", b"Authorization: s3cret"), True),
    (_get("/events/orders?since=1", b"Authorization: Bearer\ts3cret"), True),
    (_get("/events/orders?since=1", b"Authorization: Bearer s3cr\xe9t"), True),
    (_get("/events/orders?since=1", b"Authorization: Bearer"), True),
    (_get("/events/orders?since=1", b"Authorization: Bearer wrong", _RIGHT), True),
    (_get("/events/orders?limit=x", b"Authorization: Bearer wrong"), True),  # 401 before 400
    (_get("/events/marketdata"), True),  # 401 before the missing conid
    (_get("/events/marketdata?conid=77"), True),  # 401 before 429
    (_get("/events/ntf?since=1"), True),  # 401 before 412
    (_request(b"/events/orders", method=b"POST"), True),  # 401 before 405
    (_request(b"/events/orders", b"Authorization: Bearer wrong", method=b"FOO"), True),
    (_request(b"/events/marketdata", _RIGHT, method=b"DELETE"), True),  # then the 405
    # a 401 Quart gives
    (_get("/events/Orders?since=1"), False),
    (_get("/events/orders?since=%31"), False),
    (_request(b"/events/orders?since=\xff"), False),  # Quart fails first: 500
    (_get("/events/orders?since=1", b"Content-Length: 0"), True),  # no body after all
    (_get("/events/orders?since=0&wait=0.5", b"Content-Length: 0"), True),
    (_get("/events/orders?since=6&wait=0.2", b"Content-Length: 0"), True),  # waits: 204
    (_get("/events/orders?since=1", b"Content-Length: 00"), False),
    (_get("/events/_status"), False),
    (_get("/nope"), False),
    # what Quart answers after the right token
    (_get("/events/orders?limit=x", _RIGHT), False),
    (_get("/events/ntf?since=1", _RIGHT), False),
    (_get("/events/marketdata?conid=77", _RIGHT), False),
    (_get("/health"), False),
]


async def test_both_paths_answer_every_plain_request_with_the_same_bytes(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(60):
        daemon = await _daemon(nursery)
        for request, fast in PLAIN_TABLE:
            answer, took_fast = await _on_and_off(daemon, request)
            assert took_fast is fast, (request, answer)
        daemon.request_stop()


async def test_both_paths_answer_the_same_with_a_token(nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        daemon = await _daemon(nursery, token=TOKEN)
        for request, fast in TOKEN_TABLE:
            answer, took_fast = await _on_and_off(daemon, request)
            assert took_fast is fast, (request, answer)
        daemon.request_stop()


async def test_polls_read_from_the_durable_log_get_the_same_answer(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        daemon = await _daemon(nursery, store=tmp_path / "events.db")
        for target, fast in [
            ("/events/ntf?since=1", True),  # older than the ring: read from the log
            ("/events/ntf?since=0&limit=3", True),
            ("/events/ntf?since=5", True),
            ("/events/orders?since=2&wait=1", True),
            ("/events/orders/history?since_cursor=2", False),
        ]:
            answer, took_fast = await _on_and_off(daemon, _get(target))
            assert took_fast is fast, (target, answer)
            assert answer.startswith(b"HTTP/1.1 200 "), (target, answer)
        daemon.request_stop()


async def test_a_valid_poll_takes_the_fast_path_and_a_bad_one_goes_to_quart(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(30):
        daemon = await _daemon(nursery)
        polls = daemon.http.fast_polls
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=20) as client:
            good = await client.get(f"{daemon.http_url}/events/orders?since=4")
            assert (polls.answered, polls.passed_on) == (1, 0)
            bad = await client.get(f"{daemon.http_url}/events/orders?since=-4")
            assert (polls.answered, polls.passed_on) == (1, 1)
            polls.enabled = False
            await client.get(f"{daemon.http_url}/events/orders?since=4")
            assert (polls.answered, polls.passed_on) == (1, 1)
            metrics = await client.get(f"{daemon.http_url}/metrics")
        daemon.request_stop()
    assert good.status_code == 200 and good.headers["x-bezant-cursor"] == "6"
    assert [e["cursor"] for e in good.json()["events"]] == [5, 6]
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_query"
    route = {"route": "/events/<topic>", "method": "GET"}
    assert _sample(metrics.text, "bezant_http_requests_total", status="200", **route) == 2
    assert _sample(metrics.text, "bezant_http_requests_total", status="400", **route) == 1


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no {name} {labels} in the scrape")


async def _park_both(
    daemon: Daemon, request: bytes, wake: Callable[[], Awaitable[None]]
) -> list[bytes]:
    """``request`` parked in the hub once through each path; ``wake`` ends both."""
    assert daemon.hub is not None and daemon.http_url is not None
    hub, polls, url = daemon.hub, daemon.http.fast_polls, daemon.http_url
    answers: dict[bool, bytes] = {}

    async def send(enabled: bool) -> None:
        answers[enabled] = _DATE.sub(b"", await _exchange(url, request))

    answered = polls.answered
    async with trio.open_nursery() as nursery:
        for enabled in (True, False):
            parked = hub.waiting
            # `enabled` is read when the request arrives: switch it once it is parked.
            polls.enabled = enabled
            nursery.start_soon(send, enabled)
            await wait_until(lambda parked=parked: hub.waiting == parked + 1)
        polls.enabled = True
        await wake()
    assert polls.answered == answered + 1
    assert answers[True] == answers[False], request
    return [answers[True], answers[False]]


async def test_long_polls_woken_by_a_publish_get_the_same_answer(nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        daemon = await _daemon(nursery)
        hub = daemon.hub
        assert hub is not None and daemon.http.metrics is not None
        cases = [
            ("orders", "/events/orders?since={head}&wait=10"),
            ("orders", "/events/orders?since={head}&wait=10&limit=1"),
            ("pnl", "/events/pnl?since={head}&limit=1000&wait=30"),
            ("marketdata:265598", "/events/marketdata?conid=265598&since={head}&wait=10"),
            ("marketdata:265598", "/events/marketdata:265598?since={head}&wait=5"),
            ("brand_new", "/events/brand_new?since=0&wait=10"),
        ]
        for topic, target in cases:

            async def publish(topic: str = topic) -> None:
                hub.publish(topic, {"woken": topic})

            before = dict(daemon.http.metrics.http_requests)
            fast, _quart = await _park_both(
                daemon, _get(target.format(head=hub.head(topic))), publish
            )
            assert fast.startswith(b"HTTP/1.1 200 "), fast
            assert b'"payload":{"woken":"' in fast
            route = "/events/marketdata" if "?conid" in target else "/events/<topic>"
            assert _delta(before, daemon.http.metrics.http_requests) == {(route, "GET", "200"): 2}
        daemon.request_stop()


async def test_long_polls_that_time_out_get_the_same_204(nursery: trio.Nursery) -> None:
    with trio.fail_after(30):
        daemon = await _daemon(nursery)
        started = trio.current_time()
        answer, took_fast = await _on_and_off(daemon, _get("/events/orders?since=6&wait=0.3"))
        elapsed = trio.current_time() - started
        daemon.request_stop()
    assert took_fast and elapsed >= 0.6  # each of the two waited its 0.3 s
    assert answer.startswith(b"HTTP/1.1 204 ") and b"x-bezant-cursor: 6\r\n" in answer


async def test_parked_fast_polls_are_in_flight_and_answered_at_shutdown() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:  # exits once the daemon has stopped
            daemon = await _daemon(nursery)

            async def stop() -> None:
                async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
                    metrics = await client.get(f"{daemon.http_url}/metrics")
                # the two parked polls and this scrape
                assert _sample(metrics.text, "bezant_http_requests_in_flight") == 3
                assert _sample(metrics.text, "bezant_hub_waiters") == 2
                daemon.request_stop()

            fast, _quart = await _park_both(daemon, _get("/events/orders?since=6&wait=30"), stop)
    assert fast.startswith(b"HTTP/1.1 204 ") and b"x-bezant-cursor: 6\r\n" in fast


async def test_a_client_gone_from_a_long_poll_is_forgotten_on_both_paths(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(30):
        daemon = await _daemon(nursery)
        hub, polls, url = daemon.hub, daemon.http.fast_polls, daemon.http_url
        assert hub is not None and daemon.http.metrics is not None and url is not None
        host, port = url.removeprefix("http://").rsplit(":", 1)
        for enabled in (True, False):
            polls.enabled = enabled
            before = dict(daemon.http.metrics.http_requests)
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(_get("/events/orders?since=6&wait=30"))
            await wait_until(lambda: hub.waiting == 1)
            await stream.aclose()
            await wait_until(lambda: hub.waiting == 0)
            # nothing was answered, so nothing was counted
            assert _delta(before, daemon.http.metrics.http_requests) == {}
        polls.enabled = True
        assert polls.answered == 0
        async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
            while True:  # the cancelled requests leave the in-flight count soon after
                metrics = await client.get(f"{url}/metrics")
                if _sample(metrics.text, "bezant_http_requests_in_flight") == 1:
                    break
        daemon.request_stop()


# ---- a property over random queries, at the ASGI level ----------------------------

_KEYS = st.sampled_from(["since", "limit", "wait", "conid"]) | st.sampled_from(
    ["x", "", "Since", "%73ince", "wait+"]
)
_VALUES = (
    st.sampled_from(["0", "1", "3", "6", "7", "99", "1000", "5000", "0001", "265598", "0.5"])
    | st.sampled_from(
        [
            "-1", "abc", "1.5", "nan", "inf", "1e1", "", "\u0663", "%31", "+1", "30", "30.0001",
            "0x1", "1_0", " 1", "1 ",
        ]
    )
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=5)
)  # fmt: skip
_FIELDS = st.tuples(_KEYS, st.sampled_from(["=", "", "=="]), _VALUES).map("".join)
#: Mostly valid queries, so that about half the examples take the fast path.
_VALID_QUERIES = st.tuples(
    st.sampled_from(["", "since=0&", "since=3&", "since=6&", "since=0001&"]),
    st.sampled_from(["", "limit=1&", "limit=2&", "limit=1000&", "limit=5000&"]),
    st.sampled_from(["", "wait=0", "wait=0.5", "wait=30", "wait=1e1"]),
    st.sampled_from(["", "&conid=265598", "&conid=2", "&x=1"]),
).map("".join)
_QUERIES = (
    _VALID_QUERIES.map(str.encode)
    | st.lists(_FIELDS, max_size=4).map("&".join).map(str.encode)
    | st.binary(max_size=16)
)
_PATHS = st.sampled_from(
    ["/events/orders", "/events/pnl", "/events/marketdata", "/events/marketdata:265598"]
) | st.sampled_from(
    [
        "/events/ntf",
        "/events/never_seen",
        "/events/marketdata:77",
        "/events/marketdata:x",
        "/events/Orders",
        "/events/_status",
        "/health",
    ]
)
_AUTH = st.sampled_from([b"Bearer s3cret", b"bearer  s3cret"]) | st.sampled_from(
    [None, b"Bearer wrong", b"s3cret"]
)


async def _asgi(app: Any, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
    """One request straight into the ASGI app: (status, headers, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.1"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
        "extensions": {},
    }
    messages: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    try:
        await app(scope, receive, send)
    except Exception as exc:  # Quart fails on a query that is not UTF-8; Hypercorn says 500
        return "raised", repr(exc)
    start, *bodies = messages
    assert start["type"] == "http.response.start"
    assert not bodies[-1].get("more_body", False)
    return start["status"], start["headers"], b"".join(m["body"] for m in bodies)


#: Per token, the app with the fast path and the one without (each with its
#: context and switch): made once, as building a Quart app (its 19 routes) was
#: nine tenths of this test's CPU. Every example gives both a fresh hub and wants.
_APPS: dict[str | None, list[tuple[Any, HttpContext, FastPolls]]] = {}


def _apps(token: str | None) -> list[tuple[Any, HttpContext, FastPolls]]:
    if token not in _APPS:
        pairs = []
        for enabled in (True, False):
            ctx, polls = HttpContext(hub=None, token=token), FastPolls(enabled=enabled)
            pairs.append((create_app(ctx, fast_polls=polls), ctx, polls))
        _APPS[token] = pairs
    return _APPS[token]


async def _compare_asgi(
    path: str, query: bytes, auth: bytes | None, host: bytes, token: str | None
) -> None:
    hub = Hub(capacity_of(ntf=2))
    await hub.open()
    await _fill(hub)
    wants = Wants(3)
    _want(wants)
    headers = [(b"host", host)] + ([] if auth is None else [(b"authorization", auth)])
    answers = []
    apps = _apps(token)
    fast_before = apps[0][2].answered
    for app, ctx, _polls in apps:
        fresh = HttpContext(hub=hub, wants=wants, token=token)
        ctx.hub, ctx.wants, ctx.bars, ctx.book = fresh.hub, fresh.wants, fresh.bars, fresh.book
        with trio.fail_after(100):  # virtual time: `wait` is at most 30
            answers.append(await _asgi(app, path, query, headers))
    assert answers[0] == answers[1]
    fast = apps[0][2].answered > fast_before
    assert apps[1][2].answered == 0
    if fast:
        assert answers[0][0] in (200, 204, 401, 403, 405)
    event(f"{'fast path' if fast else 'quart'} {answers[0][0]}")


_HOSTS = st.sampled_from([b"localhost", b"127.0.0.1:8080"]) | st.sampled_from(
    [b"attacker.example", b"[::1]", b"localhost:x", b""]
)


@settings(max_examples=examples(200), deadline=None)
@given(path=_PATHS, query=_QUERIES, auth=_AUTH, host=_HOSTS, token=st.sampled_from([None, TOKEN]))
def test_random_queries_get_the_same_answer_on_both_paths(
    path: str, query: bytes, auth: bytes | None, host: bytes, token: str | None
) -> None:
    trio.run(
        _compare_asgi,
        path,
        query,
        auth,
        host,
        token,
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
