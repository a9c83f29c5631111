"""The latency reader: a raw-socket HTTP/1.1 client in a process of its own.

One reader for every latency figure, so the daemon and the bare relay are
measured through exactly the same client. It is a blocking ``socket`` (no
event loop, ``TCP_NODELAY``) that either long-polls
``GET <path>?since=N&limit=L&wait=W`` back to back on one keep-alive
connection, or reads one SSE stream (``--sse``, ``Last-Event-ID: N``). On
every answer it takes ``time.time_ns()`` once the whole body (or SSE chunk)
is in, and for each event with a ``t_ns`` stamp in its payload records
``receipt - t_ns`` (one clock: the sender's ``time.time_ns()``).

It prints ``READY`` once connected (so the sender starts only then), and one
JSON line at the end: ``{"latencies_ms": [...], "requests": n, "events": n}``.
It stops after ``--count`` stamped events or ``--timeout`` seconds.

Why its own process: a reader that shares the bench's event loop measures
that loop too (see bench/ANALYSIS.md, "What the round-one long-poll figure
included").
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

import orjson


class Conn:
    """One keep-alive HTTP/1.1 connection on a blocking socket."""

    def __init__(self, host: str, port: int) -> None:
        self.addr = (host, port)
        self.host = f"{host}:{port}"
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(self.addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def reconnect(self) -> None:
        """Hypercorn closes a keep-alive connection after 1,000 requests; so do browsers' peers."""
        self.sock.close()
        self.reconnects += 1
        self._connect()

    def send(self, path: str, headers: dict[str, str] | None = None) -> None:
        head = f"GET {path} HTTP/1.1\r\nhost: {self.host}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        self.sock.sendall(head.encode() + b"\r\n")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def head(self) -> tuple[int, dict[bytes, bytes]]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split(b" ", 2)[1]), headers

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def line(self) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            self._fill()
        data = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return data


def _stamps(events: list[dict], into: list[float], received: int) -> int:
    n = 0
    for event in events:
        payload = event.get("payload")
        stamp = payload.get("t_ns") if isinstance(payload, dict) else None
        if stamp:
            into.append((received - stamp) / 1e6)
            n += 1
    return n


def long_poll(conn: Conn, path: str, since: int, args: argparse.Namespace) -> dict:
    latencies: list[float] = []
    requests = 0
    deadline = time.monotonic() + args.timeout
    while len(latencies) < args.count and time.monotonic() < deadline:
        conn.send(f"{path}?since={since}&limit={args.limit}&wait={args.wait:g}")
        status, headers = conn.head()
        body = conn.exact(int(headers.get(b"content-length", b"0")))
        received = time.time_ns()
        requests += 1
        if headers.get(b"connection", b"").lower() == b"close":
            conn.reconnect()
        if status == 200:
            data = orjson.loads(body)
            _stamps(data["events"], latencies, received)
            since = data["next_cursor"]
        elif status != 204:
            raise RuntimeError(f"poll answered {status}: {body[:200]!r}")
    return {"latencies_ms": latencies, "requests": requests, "reconnects": conn.reconnects}


def sse(conn: Conn, path: str, since: int, args: argparse.Namespace) -> dict:
    conn.send(path, {"last-event-id": str(since)})
    status, headers = conn.head()
    if status != 200:
        raise RuntimeError(f"SSE answered {status}")
    if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
        raise RuntimeError("SSE answer is not chunked")
    latencies: list[float] = []
    pending = b""
    deadline = time.monotonic() + args.timeout
    while len(latencies) < args.count and time.monotonic() < deadline:
        size = int(conn.line().split(b";")[0], 16)
        if size == 0:
            break
        data = conn.exact(size)
        conn.exact(2)
        received = time.time_ns()
        pending += data
        *messages, pending = pending.split(b"\n\n")
        events = []
        for message in messages:
            for line in message.split(b"\n"):
                if line.startswith(b"data:"):
                    events.append(orjson.loads(line[5:]))
        _stamps(events, latencies, received)
    return {"latencies_ms": latencies, "requests": 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--path", required=True, help="/events/<topic> (or its /stream)")
    parser.add_argument("--since", type=int, required=True)
    parser.add_argument("--count", type=int, required=True, help="stamped events to read")
    parser.add_argument("--sse", action="store_true")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--wait", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    host_port = args.url.split("://", 1)[1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    conn = Conn(host, int(port))
    print("READY", flush=True)
    run = sse if args.sse else long_poll
    out = run(conn, args.path, args.since, args)
    print(orjson.dumps(out).decode(), flush=True)
    conn.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
