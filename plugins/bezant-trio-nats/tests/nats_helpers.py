"""Helpers of the plugin's tests: read a stream back, read the REST API, run the daemon.

Named ``nats_helpers`` (not ``helpers``) because the main test suite's
directory, with its own ``helpers.py``, is on ``sys.path`` in the same run.
"""

from __future__ import annotations

import asyncio
import os
import re
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
import yaml
from nats.js.api import StreamInfo

#: Re-check interval of conditions that have no event to wait on (a subprocess's state).
POLL = 0.02


async def wait_until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds; callers bound it with ``trio.fail_after``."""
    while not condition():  # noqa: ASYNC110 - no event exists for these conditions
        await trio.sleep(POLL)


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


_SERVING = re.compile(r"serving on (http://\S+)")


class DaemonProcess:
    """``python -m bezant_trio run --config <dir>/config.yaml``, output in a log file."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"daemon-{self.runs}.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> str:
        """Start it and wait until it serves; returns the base URL."""
        self.runs += 1
        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BEZANT_", "IBKR_"))}
        # Popen returns at once (fork/exec); the wait for readiness below is async.
        with open(self.log_path, "wb") as log:  # noqa: ASYNC230 - a local file, opened once
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "bezant_trio", "run", "--config", str(config_path)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        await wait_until(lambda: bool(_SERVING.search(self.log_text())) or self.exited)
        match = _SERVING.search(self.log_text())
        assert match is not None, f"the daemon did not start:\n{self.log_text()}"
        self.url = match.group(1)
        return self.url

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    async def kill(self) -> None:
        """``kill -9`` and reap."""
        assert self.proc is not None
        self.proc.kill()
        await wait_until(lambda: self.exited)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def sink_status(self, client: httpx.AsyncClient, name: str) -> dict[str, Any]:
        response = await client.get(f"{self.url}/events/_status")
        return response.json()["sinks"][name]

    async def wait_sink(
        self, client: httpx.AsyncClient, name: str, predicate: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """Poll ``/events/_status`` until the sink's status satisfies ``predicate``."""
        while True:
            status = await self.sink_status(client, name)
            if predicate(status):
                return status
            assert not self.exited, self.log_text()
            await trio.sleep(POLL)


def run_consumer(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``examples/consumer.py`` to completion (callers pass ``--exit-when-idle``)."""
    script = Path(__file__).resolve().parent.parent / "examples" / "consumer.py"
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done
