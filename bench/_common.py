"""What every benchmark shares: child processes, a lean HTTP client, RSS, statistics.

Every server the benchmarks talk to runs in a process of its own and binds
127.0.0.1 with port 0; nothing here ever addresses anything but loopback.
The processes are :mod:`bezant_trio.testing`'s (:class:`ChildProcess`,
:class:`DaemonProcess`), whose every wait is bounded so a broken daemon fails
the run instead of hanging it.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import trio

from bezant_trio.testing import ChildProcess, DaemonProcess, rss_kib

__all__ = [
    "BENCH_DIR",
    "DAEMON_SRC",
    "PYTHON",
    "REPO",
    "ChildProcess",
    "DaemonProcess",
    "Http",
    "HttpError",
    "Reply",
    "cpu_seconds",
    "daemon_config",
    "daemon_process",
    "now_ns",
    "percentile",
    "request_once",
    "rss_kib",
    "spawn",
    "start_daemon",
    "start_gateway",
    "summarise",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable


# ------------------------------------------------------------------ processes


def spawn(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> ChildProcess:
    """A child process with its output in ``<workdir>/<name>.log`` (started at once)."""
    return ChildProcess(argv, workdir / f"{name}.log", cwd=cwd or workdir, env=env)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used by ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def start_gateway(workdir: Path, tag: str = "gateway") -> tuple[ChildProcess, str]:
    """The simulator (plus the bench's stamped-frame routes) in its own process."""
    child = spawn(tag, [PYTHON, str(BENCH_DIR / "gateway.py"), "--port", "0"], workdir)
    match = await child.wait_for(re.compile(r"(http://127\.0\.0\.1:\d+)/v1/api"))
    return child, match.group(1)


def daemon_config(
    gateway: str,
    workdir: Path,
    *,
    log: bool,
    capacity: dict[str, int] | None = None,
    sinks: list[dict[str, Any]] | None = None,
    tag: str = "daemon",
    store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A daemon config for the bench: loopback, port 0, log on (``synchronous: normal``) or off.

    ``store`` adds to (or replaces keys of) the ``store`` section: a log of
    the bench's own making, retention settings.
    """
    return {
        "gateway": {"url": f"{gateway}/v1/api", "verify_tls": False, "tickle_interval": 60},
        "http": {"bind": "127.0.0.1:0"},
        "events": {
            "capacity": {"orders": 1000, "pnl": 5000, "marketdata": 2000, "default": 1000}
            | (capacity or {}),
            "marketdata": {"max_conids": 100, "idle_unsubscribe": 3600},
        },
        "store": {
            "path": str(workdir / f"{tag}.db") if log else None,
            "synchronous": "normal",
        }
        | (store or {}),
        "sinks": sinks or [],
        # A stalled sink must not hold every benchmark's teardown for the default 10 s.
        "shutdown_grace": 1,
    }


#: ``--src DIR``: run the daemon from another source tree (A/B of a proposed change).
DAEMON_SRC: str | None = None


def daemon_process(
    workdir: Path, config: dict[str, Any], tag: str = "daemon", env: dict[str, str] | None = None
) -> DaemonProcess:
    """The daemon of ``config`` as a process (not started yet)."""
    extra = {"PYTHONPATH": DAEMON_SRC} if DAEMON_SRC else {}
    extra.update(env or {})
    return DaemonProcess(workdir, config, config_path=workdir / f"{tag}.yaml", env=extra, name=tag)


async def start_daemon(
    workdir: Path, config: dict[str, Any], tag: str = "daemon"
) -> tuple[DaemonProcess, str]:
    """``python -m bezant_trio run --config <workdir>/<tag>.yaml``; returns (daemon, base URL)."""
    # INFO (the default) is needed for the "serving on" line; nothing logs per frame or request.
    daemon = daemon_process(workdir, config, tag)
    return daemon, await daemon.start(timeout=120)


# ------------------------------------------------------------------ HTTP client


class HttpError(Exception):
    pass


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class Http:
    """A minimal keep-alive HTTP/1.1 client (content-length and chunked bodies).

    Leaner than a general client so the load it adds to a 2-core machine is
    small next to what it measures.
    """

    def __init__(self, base: str) -> None:
        host_port = base.split("://", 1)[1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        self.host, self.port = host, int(port)
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()

    async def _connect(self) -> trio.SocketStream:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
            self._buf.clear()
        return self._stream

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def send_request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        stream = await self._connect()
        data = b"" if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
        head = f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
        # No content-length on a GET without a body: as browsers and wrk send it.
        if data or method != "GET":
            head += f"content-length: {len(data)}\r\n"
        if data:
            head += "content-type: application/json\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        await stream.send_all(head.encode() + b"\r\n" + data)

    async def _fill(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(262144)
        if not chunk:
            self._stream = None
            raise HttpError("connection closed by the server")
        self._buf += chunk

    async def read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        lines = self._buf[:end].decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            await self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read_line(self) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            await self._fill()
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        return line

    async def read_body(self, status: int, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return await self.read_exact(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.read_line()).split(b";")[0], 16)
                if size == 0:
                    await self.read_line()
                    return b"".join(parts)
                parts.append(await self.read_exact(size))
                await self.read_exact(2)
        if status in (204, 304) or 100 <= status < 200:
            return b""
        raise HttpError(f"cannot frame a {status} response without content-length: {headers}")

    async def request(self, method: str, path: str, body: Any = None) -> Reply:
        for attempt in (0, 1):
            try:
                await self.send_request(method, path, body)
                status, headers = await self.read_head()
                data = await self.read_body(status, headers)
            except (HttpError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                # An idle keep-alive connection the server closed: retry once on a new one.
                await self.aclose()
                if attempt:
                    raise
                continue
            if headers.get("connection", "").lower() == "close":
                await self.aclose()
            return Reply(status, headers, data)
        raise AssertionError("unreachable")

    async def get(self, path: str) -> Reply:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any = None) -> Reply:
        return await self.request("POST", path, body if body is not None else {})


async def request_once(base: str, method: str, path: str, body: Any = None) -> Reply:
    client = Http(base)
    try:
        return await client.request(method, path, body)
    finally:
        await client.aclose()


# ------------------------------------------------------------------ statistics


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated runs."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest-rank on sorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def now_ns() -> int:
    return time.time_ns()
