"""The whole HTTP service (gate, fast path, Quart, our accept loop) on 127.0.0.1, and raw HTTP/1.1.

``conftest.serve`` serves the Quart app alone; the tests of the caps, the
request gate and the connection handling need :class:`HttpService`, which
puts all of them together the way the daemon does.
"""

from __future__ import annotations

import re
from typing import Any

import trio

from bezant_trio.http import HttpService
from bezant_trio.store.hub import Hub
from bezant_trio.wants import Wants
from helpers import capacity_of


async def start_service(
    nursery: trio.Nursery, hub: Hub | None = None, **options: Any
) -> HttpService:
    """An :class:`HttpService` on 127.0.0.1:0 (``options``: its keyword arguments)."""
    if hub is None:
        hub = Hub(capacity_of())
        await hub.open()
    options.setdefault("wants", Wants(10))
    service = HttpService(hub, bind="127.0.0.1:0", **options)
    await nursery.start(service.run)
    return service


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def status_of(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match[1]) if match else None


def header(answer: bytes, name: bytes) -> bytes | None:
    head = answer.partition(b"\r\n\r\n")[0]
    match = re.search(rb"(?im)^" + re.escape(name) + rb": *([^\r\n]*)\r?$", head)
    return match[1] if match else None


async def read_response(stream: trio.SocketStream) -> bytes:
    """One response (head, and a body by Content-Length) off ``stream``; b"" at EOF."""
    reply = bytearray()
    while b"\r\n\r\n" not in reply:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return bytes(reply)
        reply += chunk
    head = bytes(reply).partition(b"\r\n\r\n")[0]
    length = re.search(rb"(?im)^content-length: *(\d+)\r?$", head)
    while length is not None and len(reply) < len(head) + 4 + int(length[1]):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        reply += chunk
    return bytes(reply)


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes (a reset counts as the end)."""
    reply = bytearray()
    try:
        while chunk := await stream.receive_some(65536):
            reply += chunk
    except trio.BrokenResourceError:
        pass
    return bytes(reply)


async def exchange(url: str, request: bytes) -> bytes:
    """``request`` on a new connection; the one response it gets."""
    stream = await trio.open_tcp_stream(*address(url))
    async with stream:
        await stream.send_all(request)
        return await read_response(stream)


def get(target: str, *headers: str, host: str = "localhost") -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
