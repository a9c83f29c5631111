"""Helpers of the plugin's tests: read a stream back, read the REST API, wait on a daemon's sink.

The daemon itself runs as :class:`bezant_trio.testing.DaemonProcess`.

Named ``nats_helpers`` (not ``helpers``) because the main test suite's
directory, with its own ``helpers.py``, is on ``sys.path`` in the same run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import trio
from nats.js.api import StreamInfo

from bezant_trio.testing import DaemonProcess


async def wait_hub_head(hub: Any, heads: dict[str, int]) -> None:
    """Wait until each topic's head cursor reaches ``heads[topic]``."""
    for topic, head in heads.items():
        while hub.head(topic) < head:
            await hub.wait(topic, hub.head(topic), 5)


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]

    @property
    def topic(self) -> str:
        return self.headers["Bezant-Topic"]

    @property
    def cursor(self) -> int:
        return int(self.headers["Bezant-Cursor"])


async def read_stream(servers: Sequence[str], stream: str = "BEZANT") -> list[StoredMessage]:
    """Every message in ``stream``, in stream order (read on a worker thread with asyncio)."""
    return await trio.to_thread.run_sync(asyncio.run, _read_stream(list(servers), stream))


async def _read_stream(servers: list[str], stream: str) -> list[StoredMessage]:
    nc = await nats.connect(servers=servers, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        state = (await js.stream_info(stream)).state
        seqs = range(state.first_seq, state.last_seq + 1) if state.messages else range(0)
        found: list[StoredMessage] = []
        for start in range(0, len(seqs), 200):  # a few hundred requests in flight at most
            chunk = seqs[start : start + 200]
            raws = await asyncio.gather(*(js.get_msg(stream, seq) for seq in chunk))
            found += [
                StoredMessage(raw.seq, raw.subject, raw.data or b"", dict(raw.headers or {}))
                for raw in raws
            ]
        return found
    finally:
        await nc.close()


async def stream_info(servers: Sequence[str], stream: str = "BEZANT") -> StreamInfo:
    """The stream's configuration and state as the server reports them."""

    async def ask() -> StreamInfo:
        nc = await nats.connect(servers=list(servers))
        try:
            return await nc.jetstream().stream_info(stream)
        finally:
            await nc.close()

    return await trio.to_thread.run_sync(asyncio.run, ask())


async def stream_leader(servers: Sequence[str], stream: str = "BEZANT") -> str:
    """The server name of the stream's current leader (a cluster)."""
    return (await stream_info(servers, stream)).cluster.leader


@dataclass(frozen=True)
class RestTopic:
    """A topic as ``GET /events/{topic}`` serves it, page after page."""

    #: The raw bytes of every event, as in the ``events`` arrays, comma-joined.
    raw: bytes
    events: list[dict[str, Any]]


async def rest_events(client: httpx.AsyncClient, base_url: str, topic: str) -> RestTopic:
    """Every event of ``topic`` from the REST API."""
    arrays: list[bytes] = []
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        response = await client.get(
            f"{base_url}/events/{topic}", params={"since": since, "limit": 1000}
        )
        if response.status_code == 204:
            return RestTopic(b",".join(arrays), events)
        assert response.status_code == 200, response.text
        body = response.content
        arrays.append(body[len(b'{"events":[') : body.rindex(b'],"next_cursor":')])
        page = orjson.loads(body)
        events += page["events"]
        since = page["next_cursor"]


def joined(messages: Sequence[StoredMessage]) -> bytes:
    """Message bodies comma-joined, comparable with :attr:`RestTopic.raw`."""
    return b",".join(message.data for message in messages)


def by_subject(messages: Sequence[StoredMessage]) -> dict[str, list[StoredMessage]]:
    grouped: dict[str, list[StoredMessage]] = {}
    for message in messages:
        grouped.setdefault(message.subject, []).append(message)
    return grouped


async def wait_sink(
    daemon: DaemonProcess,
    client: httpx.AsyncClient,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """Poll the daemon's ``/events/_status`` until sink ``name`` satisfies ``predicate``.

    Returns the sink's status; raises if the daemon exits or 30 s pass.
    """
    status = await daemon.wait_status(lambda s: predicate(s["sinks"][name]), client=client)
    return status["sinks"][name]


def run_consumer(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``examples/consumer.py`` to completion (callers pass ``--exit-when-idle``)."""
    script = Path(__file__).resolve().parent.parent / "examples" / "consumer.py"
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done
