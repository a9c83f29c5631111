"""A webhook endpoint that can be taken down, slowed or made to answer any status.

A small HTTP/1.1 server (trio + h11) on 127.0.0.1 standing in for a consumer of
the ``webhook`` sink. ``down()`` closes the listening socket and every open
connection (the sink then sees "connection refused"), ``up()`` listens again on
the same port; ``delay`` holds each answer back; ``status`` is what it answers.
It verifies the Standard Webhooks signature when it knows the secret, and
records every accepted batch so a test can check nothing was lost.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import orjson
import trio

from bezant_trio.simulator import SeqRanges


@dataclass
class Delivery:
    """One request the receiver answered."""

    status: int
    webhook_id: str
    events: list[dict[str, Any]]
    signature_ok: bool | None


class WebhookEndpoint:
    """Start with ``await nursery.start(endpoint.run)``; ``url`` is where to POST."""

    def __init__(self, *, secret: str | None = None) -> None:
        self.port = 0
        self.status = 200
        self.delay = 0.0
        self.deliveries: list[Delivery] = []
        #: Compact mode (long runs): keep only the cursors taken per topic, not the events.
        self.compact = False
        self.cursors: dict[str, SeqRanges] = {}
        #: (topic, cursor) of new events that arrived below a newer one (compact mode).
        self.out_of_order: list[tuple[str, int]] = []
        self.bad_signatures = 0
        self._key = base64.b64decode(secret.removeprefix("whsec_")) if secret else None
        self._listen_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def is_up(self) -> bool:
        return self._listen_scope is not None

    # ------------------------------------------------------------------ control

    async def run(self, *, task_status: trio.TaskStatus[WebhookEndpoint]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.up()
            task_status.started(self)
            await trio.sleep_forever()  # up() and down() come and go inside this nursery

    async def up(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        if self._listen_scope is not None:
            return
        assert self._nursery is not None
        scope = trio.CancelScope()
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def serve() -> None:
            with scope:
                async with trio.open_nursery() as handlers:
                    await trio.serve_listeners(self._serve, listeners, handler_nursery=handlers)

        self._listen_scope = scope
        self._nursery.start_soon(serve)

    def down(self) -> None:
        """Stop listening and drop every connection: the sink sees refused connections."""
        if self._listen_scope is not None:
            self._listen_scope.cancel()
            self._listen_scope = None

    def events(self) -> list[dict[str, Any]]:
        """Every event of every 2xx-answered batch, in arrival order (repeats included)."""
        return [e for d in self.deliveries if 200 <= d.status < 300 for e in d.events]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    # ------------------------------------------------------------------ serving

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _record(self, delivery: Delivery) -> None:
        if not self.compact:
            self.deliveries.append(delivery)
            return
        if delivery.signature_ok is False:
            self.bad_signatures += 1
        if not 200 <= delivery.status < 300:
            return
        for event in delivery.events:
            taken = self.cursors.setdefault(event["topic"], SeqRanges())
            cursor = event["cursor"]
            if cursor in taken:
                continue  # a repeat (at least once)
            if taken.last is not None and cursor < taken.last:
                self.out_of_order.append((event["topic"], cursor))
            taken.add(cursor)

    def _verify(self, headers: dict[str, str], body: bytes) -> bool | None:
        if self._key is None:
            return None
        signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(digest).decode()
        return hmac.compare_digest(expected, headers.get("webhook-signature", ""))

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        headers: dict[str, str] = {}
        body = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Request):
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    body = b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    if self.delay:
                        await trio.sleep(self.delay)
                    status = self.status
                    try:
                        events = orjson.loads(body)["events"]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        events, status = [], 400
                    self._record(
                        Delivery(
                            status,
                            headers.get("webhook-id", ""),
                            events,
                            self._verify(headers, body),
                        )
                    )
                    response = h11.Response(status_code=status, headers=[("content-length", "0")])
                    await stream.send_all(conn.send(response))
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    self._notify()
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                else:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)
