"""A tiny scripted HTTP/1.1 receiver (trio + h11) standing in for a webhook endpoint.

Each request takes the next scripted :class:`Reply` (200 once the script is
exhausted); ``hang`` replies never answer, so the client times out. Every
request is recorded with the Trio clock's time of arrival.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import orjson
import trio


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    hang: bool = False


@dataclass
class Received:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        return orjson.loads(self.body)["events"]


@dataclass
class WebhookReceiver:
    script: deque[Reply] = field(default_factory=deque)
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, *replies: Reply) -> None:
        """Queue replies for the next requests."""
        self.script.extend(replies)

    @property
    def accepted(self) -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        return [r for r in self.requests if r.status is not None and 200 <= r.status < 300]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[WebhookReceiver]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_listeners, self._serve, listeners))
            task_status.started(self)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: Received | None = None
        body = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    request = Received(
                        trio.current_time(),
                        event.method.decode(),
                        event.target.decode(),
                        headers,
                        b"",
                    )
                    body = b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    request.body = body
                    reply = self.script.popleft() if self.script else Reply()
                    self.requests.append(request)
                    if reply.hang:
                        self._notify()
                        await trio.sleep_forever()
                    request.status = reply.status
                    headers = [("content-length", "0"), *reply.headers]
                    await stream.send_all(
                        conn.send(h11.Response(status_code=reply.status, headers=headers))
                    )
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    self._notify()
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                else:  # ConnectionClosed or PAUSED
                    return
        except (trio.BrokenResourceError, h11.RemoteProtocolError, trio.ClosedResourceError):
            return
