"""HTTP abuse: huge headers and queries, slowloris, 5,000 connections, 1,000 conids.

Each attack runs against a real daemon (a child process, so its memory and
file descriptors can be read from ``/proc``) while an ordinary client keeps
using it. The daemon must answer a clear 4xx, keep its memory bounded (no
ratchet from one round of the attack to the next) and keep serving the others.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import resource
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from bezant_trio.http import server as http_server
from bezant_trio.http.poll import MAX_WAIT
from bezant_trio.testing import DaemonProcess, HTTPError, LeanClient, fd_count, rss_kib
from helpers import SSL_CONTEXT, wait_until

from .conftest import SOAK
from .rig import InProcessDaemon, Rig

MIB = 1024


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def _raw_exchange(url: str, request: bytes, *, read_timeout: float = 10) -> bytes:
    """Send ``request`` (maybe huge) while reading the answer; returns what came back."""
    host, port = _address(url)
    stream = await trio.open_tcp_stream(host, port)
    received = bytearray()

    async def send() -> None:
        try:
            view = memoryview(request)
            while view:
                await stream.send_all(view[: 256 * 1024])
                view = view[256 * 1024 :]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server stopped reading, as it should

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with trio.move_on_after(read_timeout):
            try:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    received += data
                    if b"\r\n\r\n" in received:
                        break
            except trio.BrokenResourceError:
                pass
        nursery.cancel_scope.cancel()
    return bytes(received)


def _status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
async def daemon_proc(rig: Rig) -> AsyncIterator[DaemonProcess]:
    config = rig.config(test_sink=False)
    config["sinks"] = []
    daemon = await rig.start_process(config)
    await rig.sim.wait_subscribed("orders", timeout=30)
    yield daemon


async def _open_connections(rig: Rig, url: str) -> int:
    """The daemon's open HTTP connections (``bezant_http_connections``; the rig's own count)."""
    assert rig.client is not None
    metrics = (await rig.client.get(f"{url}/metrics", headers=rig.auth_headers)).text
    found = re.search(r"^bezant_http_connections (\d+)", metrics, re.MULTILINE)
    assert found is not None, metrics[:500]
    return int(found[1])


async def _served(client: LeanClient, url: str) -> None:
    response = await client.get(f"{url}/events/orders", params={"since": 0, "limit": 5})
    assert response.status_code in (200, 204), response.text


async def test_10_mb_headers_and_queries_get_a_4xx_and_memory_stays_bounded(
    rig: Rig, daemon_proc: DaemonProcess
) -> None:
    url = daemon_proc.url
    assert url is not None and rig.client is not None
    ten_mb = 10 * 1024 * 1024
    attacks = {
        "one 10 MB header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * ten_mb
        + b"\r\n\r\n",
        "10 MB of small headers": b"GET /health HTTP/1.1\r\nHost: x\r\n"
        + b"X-H: 0123456789abcdef\r\n" * (ten_mb // 24)
        + b"\r\n",
        "a 10 MB query": b"GET /events/orders?since=0&x="
        + b"q" * ten_mb
        + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "a 10 MB path": b"GET /events/" + b"p" * ten_mb + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    peaks: list[int] = []
    with trio.fail_after(120):
        for _ in range(3):  # rounds: memory must not ratchet up
            for name, request in attacks.items():
                answer = await _raw_exchange(url, request)
                status = _status_of(answer)
                assert status is not None and 400 <= status < 500, (name, answer[:200])
                await _served(rig.client, url)
            peaks.append(rss_kib(daemon_proc.pid))
        # A query just under the header limit gets a clear 4xx (or is served), never a 5xx.
        for query in ("x=" + "q" * 12_000, "since=" + "9" * 5000, "limit=" + "1" * 200):
            response = await rig.client.get(f"{url}/events/orders?{query}")
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert response.headers["content-type"].startswith("application/json")
    print(f"RSS after each round (KiB): {peaks}")
    assert peaks[-1] - peaks[0] < 20 * MIB, peaks


def _scaled_hypercorn_config(factor: float) -> Any:
    real = http_server.hypercorn_config

    def config(*args: Any, **kwargs: Any) -> Any:
        cfg = real(*args, **kwargs)
        cfg.read_timeout = cfg.read_timeout * factor
        cfg.keep_alive_timeout = cfg.keep_alive_timeout * factor
        return cfg

    return config


async def test_slowloris_connections_are_cut_by_the_timeouts_and_others_are_served(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = http_server.hypercorn_config("127.0.0.1:0")
    assert real.read_timeout is not None and real.read_timeout <= 30
    assert real.keep_alive_timeout <= 75
    assert real.h11_max_incomplete_size <= 64 * 1024
    # CI scales Hypercorn's timeouts down (the one seam); BEZANT_SOAK=1 waits the real ones.
    # A tenth: a 3 s read timeout, so that all 300 attackers are connected before
    # the first is cut even beside three busy lanes (at a 25th, 1.2 s, they were not).
    factor = 1.0 if SOAK else 1 / 10
    monkeypatch.setattr(http_server, "hypercorn_config", _scaled_hypercorn_config(factor))
    limit = real.keep_alive_timeout * factor + 5
    config = rig.config(test_sink=False)
    config["sinks"] = []
    daemon = await rig.start_in_process(config)
    assert isinstance(daemon, InProcessDaemon) and daemon.url is not None
    host, port = _address(daemon.url)
    closed_after: list[float] = []
    count = 300
    # Requests of the ordinary client answered while every attacker was
    # connected and none had been cut yet: served during the attack, not after.
    connected = 0
    all_connected = trio.Event()
    first_cut = trio.Event()
    served_during: list[int] = []

    async def slowloris(trickle: bool) -> None:
        nonlocal connected
        start = trio.current_time()
        stream = await trio.open_tcp_stream(host, port)
        connected += 1
        if connected == count:
            all_connected.set()
        async with stream:
            try:
                await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                while True:
                    if trickle:
                        await stream.send_all(b"X-a: b\r\n")
                    with trio.move_on_after(0.5):
                        if not await stream.receive_some(1024):
                            break  # the server closed it
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        first_cut.set()
        closed_after.append(trio.current_time() - start)

    async def ordinary_client(stop: trio.Event) -> None:
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
            while not stop.is_set():
                during = all_connected.is_set() and not first_cut.is_set()
                response = await client.get(f"{daemon.url}/health")
                assert response.status_code == 200
                if during and not first_cut.is_set():
                    served_during.append(response.status_code)
                await trio.sleep(0.05)

    with trio.fail_after(limit + 30):
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ordinary_client, stop)
            async with trio.open_nursery() as attackers:
                for index in range(count):
                    attackers.start_soon(slowloris, index % 2 == 0)
            stop.set()
    print(
        f"slowloris: {count} connections cut after at most {max(closed_after):.1f} s "
        f"(limit {limit:.1f} s); {len(served_during)} ordinary requests served meanwhile"
    )
    # The server's own timeouts cut them (the keep-alive timeout plus a margin).
    assert len(closed_after) == count and max(closed_after) <= limit
    # Sent and answered while all 300 held their connections.
    assert served_during, "no ordinary request was answered while the attack lasted"


@dataclass
class _Round:
    """One round of the 5,000-connection test: its long-polls' answers so far."""

    size: int
    statuses: Counter[int] = field(default_factory=Counter)
    #: When each long-poll got its answer (the order, or an error status).
    answered: list[float] = field(default_factory=list)
    #: When a long-poll that ended empty after its wait was asked again.
    reasked: list[float] = field(default_factory=list)
    #: Answers with only the daemon's own events (a gap, a resync), followed.
    followed: int = 0
    #: When the order went out (None before).
    emitted: float | None = None

    def reasked_within(self, seconds: float) -> int:
        return len(self.reasked) - bisect.bisect(self.reasked, trio.current_time() - seconds)

    def progress(self) -> str:
        when = (
            "not yet" if self.emitted is None else f"{trio.current_time() - self.emitted:.1f} s ago"
        )
        return (
            f"{len(self.answered)} of {self.size} answered {dict(self.statuses)},"
            f" {len(self.reasked)} asked again after {MAX_WAIT:.0f} s empty, {self.followed} followed"
            f" past a gap or resync; the order went out {when}"
        )


async def _long_poll(round_: _Round, url: str, since: int) -> None:
    """One connection, kept open, long-polling ``url`` until the order comes.

    Beside the other lanes the waves can take longer than a long-poll's 30 s:
    one that ends empty is asked again on its connection, as a bot would. A
    reconnect to the gateway meanwhile (its heartbeats can be late when this
    process is busy with 5,000 clients) puts a gap and a resync into the topic:
    followed from their cursor, as a bot does. The wait is the longest the
    daemon allows (``MAX_WAIT``), so that as few as can be end empty while the
    waves are opened (at 25 s a fifth more would); safe since the read timeout
    stopped running while an answer is awaited (tests/http/test_read_timeout.py).
    The timeout only guards against a hang (the test has its own bound): beside
    busy cores, answering 5,000 at once can take over half a minute.
    """
    async with LeanClient(timeout=150) as client:
        while True:
            asked = trio.current_time()
            try:
                response = await client.get(url, params={"since": since, "wait": MAX_WAIT})
            except HTTPError as exc:
                raise AssertionError(
                    f"{exc} (asked {trio.current_time() - asked:.1f} s before); {round_.progress()}"
                ) from None
            body = response.json() if response.status_code == 200 else {}
            events = body.get("events", [])
            if response.status_code != 200 or any(
                "reason" not in event["payload"] for event in events
            ):
                round_.statuses[response.status_code] += 1
                round_.answered.append(trio.current_time())
                return
            if events:
                since = body["next_cursor"]
                round_.followed += 1
            else:
                round_.reasked.append(trio.current_time())


# 5,000 and 1,000 connections in waves. Its own bound is 420 s: 22 s alone, 40-54 s
# in the suite, 191 s beside a busy core, and once 239 s in a quiet CI run whose
# every test was slow. Beside busy cores it slows more than the rest: a long-poll
# ends empty every 30 s, and 5,000 of them ask 170 times a second.
@pytest.mark.timeout(480)
async def test_5000_concurrent_connections_are_all_answered_and_memory_is_bounded(
    rig: Rig, tmp_path: Path
) -> None:
    connections = 5000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * connections + 1000
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} file descriptors, the hard limit is {hard}")
    # The daemon inherits the limit from this process.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        config = rig.config(test_sink=False)
        config["sinks"] = []
        # Served at once only if the caps allow it (test_hostile.py tests the caps).
        config["http"].update(max_connections=2 * connections, max_streams=2 * connections)
        daemon = await rig.start_process(config)
        assert daemon.url is not None and rig.client is not None
        await rig.sim.wait_subscribed("orders", timeout=30)
        base_fds = fd_count(daemon.pid)
        peaks: list[int] = []
        fanouts: list[float] = []  # seconds from the order to the last answer
        parked: list[int] = []  # long-polls parked when the order went out
        follows: list[int] = []  # answers followed past a gap or resync, per round
        with trio.fail_after(420):
            # The second round looks for a ratchet: same size under BEZANT_SOAK=1,
            # a fifth in CI (a per-connection leak still shows, in half the time).
            for round_, opened_now in enumerate((connections, connections if SOAK else 1000)):
                since = (await rig.status())["head_cursors"].get("orders", 0)
                polls = _Round(opened_now)
                url = f"{daemon.url}/events/orders"

                async with trio.open_nursery() as nursery:
                    # Opened in waves of 500 (the listen backlog is 1024): the next
                    # wave waits until the daemon holds every connection so far.
                    for opened in range(500, opened_now + 1, 500):
                        for _ in range(500):
                            nursery.start_soon(_long_poll, polls, url, since)
                        try:
                            with trio.fail_after(120):
                                # Another process's count: polled, no event to wait on.
                                while await _open_connections(rig, daemon.url) < opened:  # noqa: ASYNC110
                                    await trio.sleep(0.1)
                        except trio.TooSlowError:
                            raise trio.TooSlowError(
                                f"the daemon did not hold {opened} connections within 120 s;"
                                f" {polls.progress()}, {fd_count(os.getpid())} descriptors here"
                                f"\ndaemon log:\n{daemon.log_text()[-3000:]}"
                            ) from None
                    # Every connection parked in a long-poll at the same time, but for
                    # those asked again in the last 5 s. Beside busy cores that may never
                    # be: some of the long-polls that ended empty after their 30 s are
                    # always on their way back (5,000 of them make 170 requests a second).
                    # Then the order goes out anyway, after 30 s: all 5,000 connections
                    # are open, and one on its way gets the order as soon as it arrives.
                    with trio.move_on_after(30):
                        await rig.wait_status(
                            lambda s, r=polls: s["waiting"] >= r.size - r.reasked_within(5),
                            poll=0.1,
                            timeout=math.inf,
                        )
                    parked.append((await rig.status())["waiting"])
                    peaks.append(rss_kib(daemon.pid))
                    # ...and one order answers them all.
                    polls.emitted = trio.current_time()
                    await rig.sim.emit_orders(1)
                fanouts.append(round(max(polls.answered) - polls.emitted, 1))
                follows.append(polls.followed)
                assert polls.statuses == {200: opened_now}, (round_, polls.statuses)
                await _served(rig.client, daemon.url)
            # Every long-poll was answered: the daemon lets go of all of them,
            # and of their connections as soon as the clients have closed them.
            await rig.wait_status(lambda s: s["waiting"] == 0)
            # Left in CLOSE-WAIT until the 75 s keep-alive timeout, 311 of them beside
            # three busy cores before http/server.py's fix; the assertion below says
            # how many are left if they are not gone by then.
            with trio.move_on_after(20):
                await wait_until(lambda: fd_count(daemon.pid) <= base_fds + 10, poll=0.1)
        fds_after = fd_count(daemon.pid)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(
        f"5000 connections: RSS peaks {peaks} KiB, fds {base_fds} -> {fds_after},"
        f" {parked} parked when the order went out, the last answer {fanouts} s after it,"
        f" {follows} followed past a gap or resync"
    )
    assert peaks[1] < peaks[0] * 1.25 + 20 * MIB, peaks  # no ratchet between rounds
    assert fds_after <= base_fds + 10


@pytest.mark.timeout(150)  # 1,250 requests to a daemon process (its own bound: 120 s)
async def test_1000_distinct_conids_get_a_clear_429_beyond_max_conids(
    rig: Rig, daemon_proc: DaemonProcess
) -> None:
    url = daemon_proc.url
    assert url is not None and rig.client is not None
    max_conids = 100
    before = rss_kib(daemon_proc.pid)
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    with trio.fail_after(120):

        async def poll(conid: int, how: str) -> None:
            assert rig.client is not None
            if how == "query":
                response = await rig.client.get(f"{url}/events/marketdata", params={"conid": conid})
            else:
                response = await rig.client.get(f"{url}/events/marketdata:{conid}")
            statuses[response.status_code] += 1
            if response.status_code >= 400:
                codes[response.json()["code"]] += 1

        for first in range(1, 1051, 50):
            async with trio.open_nursery() as nursery:
                for conid in range(first, first + 50):
                    nursery.start_soon(poll, conid, "query" if conid <= 1000 else "path")
            await _served(rig.client, url)

        # Topics nobody publishes cost nothing either.
        async def unknown(index: int) -> None:
            assert rig.client is not None
            response = await rig.client.get(f"{url}/events/nothing_{index}")
            assert response.status_code == 200 and response.json()["events"] == []

        for first in range(0, 200, 100):
            async with trio.open_nursery() as nursery:
                for index in range(first, first + 100):
                    nursery.start_soon(unknown, index)
        status = await rig.status()
    after = rss_kib(daemon_proc.pid)
    print(f"1050 conids: {dict(statuses)} {dict(codes)}; RSS {before} -> {after} KiB")
    assert statuses[200] == max_conids and statuses[429] == 1050 - max_conids, statuses
    assert codes == {"too_many_conids": 1050 - max_conids}
    assert len(status["wanted_conids"]) == max_conids
    assert not any(topic.startswith("nothing_") for topic in status["buffer_sizes"])
    subscribed = {c for conn in rig.sim.connections for c in conn.marketdata}
    assert len(subscribed) <= max_conids
    assert after - before < 30 * MIB
