"""The ASGI layer in front of everything: requests in flight, the stream cap, bodies, the close.

:class:`RequestGate` wraps the whole app (the fast path, then Quart) and, for
every HTTP request:

- counts it while it is answered, so shutdown can wait for the long-polls
  and streams it woke (:meth:`RequestGate.wait_idle`);
- refuses it with ``503 too_many_streams`` when ``max_streams`` requests are
  already being answered (``/health`` has a reserve of its own);
- drops its body as it arrives, so neither the fast path's disconnect
  watcher nor Quart keeps any of it, and ends a request whose body is too
  large or still trickling (``http.limits``);
- lets Hypercorn close the connection after the last response message
  (``Connection: close``, HTTP/1.0). Quart-Trio runs a task that waits for
  ``http.disconnect`` beside the one that sends the response, and cancels
  the request when it gets one. Hypercorn delivers that disconnect from
  inside the app's last ``send``, when the stream ends, just before it
  closes the socket in the same call; so the cancel lands on the close and
  the connection stays open until the client gives up (30 s). The gate
  holds the disconnect back while the last message is being sent; Quart
  cancels its watcher itself once the send returns.

:meth:`RequestGate.reserve_app` is what connections beyond
``max_connections`` are served by (``http.server``): ``/health`` only.

Knows no route but the open paths (``params.OPEN_PATHS``); never reads a
body, the hub or the daemon.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from bezant_trio.http.limits import (
    REFUSAL_REASONS,
    HttpLimits,
    Refusal,
    body_timeout,
    body_too_large,
    too_many_connections,
    too_many_streams,
)
from bezant_trio.http.params import OPEN_PATHS

__all__ = ["RequestGate"]

#: The request message the app gets in place of each one with body bytes.
_EMPTY = {"type": "http.request", "body": b"", "more_body": True}
_END = {"type": "http.request", "body": b"", "more_body": False}
_CLOSE = (b"connection", b"close")


class RequestGate:
    """ASGI wrapper: in-flight count, stream cap, body bounds, the last send (module docstring)."""

    def __init__(self, app: Any, limits: HttpLimits | None = None) -> None:
        self.app = app
        self.limits = limits if limits is not None else HttpLimits()
        #: HTTP requests being answered right now.
        self.count = 0
        #: Requests refused here and by the reserve, by reason (since start).
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self._idle = trio.Event()
        self._idle.set()
        self._too_many_streams = too_many_streams(self.limits)
        self._too_many_connections = too_many_connections(self.limits)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        cap = limits.max_streams
        if scope["path"] in OPEN_PATHS:
            cap += limits.reserve
        if self.count >= cap:
            await self._refuse(self._too_many_streams, scope, send)
            return
        if _declared_length(scope["headers"]) > limits.max_body:
            await self._refuse(body_too_large(limits), scope, send)
            return
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            await self._answer(scope, receive, send)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        while self.count:
            await self._idle.wait()

    async def reserve_app(self, scope: Any, receive: Any, send: Any) -> None:
        """The app of a connection beyond ``max_connections``: ``/health`` only, else a 503.

        Over HTTP/1.x every answer closes the connection, so its reserve slot
        is free again at once.
        """
        if scope["type"] != "http":
            await self(scope, receive, send)
            return
        if scope["path"] not in OPEN_PATHS:
            await self._refuse(self._too_many_connections, scope, send)
            return
        if scope.get("http_version") not in ("1.0", "1.1"):
            await self(scope, receive, send)
            return

        async def send_closing(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], _CLOSE]}
            await send(message)

        await self(scope, receive, send_closing)

    async def _answer(self, scope: Any, receive: Any, send: Any) -> None:
        exchange = _Exchange(receive, send, self.limits)
        # No cancel scope per request (one costs more than the fast path's
        # whole poll): a bad body ends the app with an exception from receive().
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except* _BodyRefused:
            pass  # the exchange recorded the refusal: answered just below
        refusal = exchange.refusal
        if refusal is None:
            return
        if exchange.started:
            # Nothing more can be said: the response ends short, and Hypercorn
            # closes an HTTP/1.1 connection whose response did not end.
            self.refused[refusal.reason] += 1
            return
        await self._refuse(refusal, scope, send)

    async def _refuse(self, refusal: Refusal, scope: Any, send: Any) -> None:
        self.refused[refusal.reason] += 1
        headers = refusal.headers(scope.get("http_version", "1.1"))
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": refusal.body(), "more_body": False})


class _BodyRefused(BaseException):
    """Raised by ``receive()`` into the app when the gate ends a request for its body.

    A BaseException, so no ``except Exception`` of the app can swallow it;
    the gate catches it (inside whatever exception groups the app's
    nurseries wrap it in) and answers.
    """


class _Exchange:
    """One request's ``receive`` and ``send`` as the app sees them."""

    __slots__ = (
        "_body_deadline",
        "_body_done",
        "_body_seen",
        "_finishing",
        "_limits",
        "_receive",
        "_send",
        "refusal",
        "started",
    )

    def __init__(self, receive: Any, send: Any, limits: HttpLimits) -> None:
        self._receive = receive
        self._send = send
        self._limits = limits
        self._body_deadline = trio.current_time() + limits.body_timeout
        self._body_done = False
        self._body_seen = 0
        self._finishing = False
        #: Why the gate ended the request (None: it did not).
        self.refusal: Refusal | None = None
        #: The app has sent ``http.response.start``.
        self.started = False

    async def receive(self) -> Any:
        while True:
            if self._finishing:
                # Hold back the disconnect the last send causes (module docstring);
                # the app cancels this wait once that send has returned.
                await trio.sleep_forever()
            if self._body_done:
                message = await self._receive()
            else:
                with trio.move_on_at(self._body_deadline) as waited:
                    message = await self._receive()
                if waited.cancelled_caught:
                    self.refusal = body_timeout(self._limits)
                    raise _BodyRefused
            kind = message["type"]
            if kind == "http.request":
                return self._request_message(message)
            if kind == "http.disconnect" and self._finishing:
                continue
            return message

    def _request_message(self, message: Any) -> Any:
        more = message.get("more_body", False)
        if not more:
            self._body_done = True
            self._body_deadline = math.inf
        body = message.get("body", b"")
        if body:
            self._body_seen += len(body)
            if self._body_seen > self._limits.max_body:
                self.refusal = body_too_large(self._limits)
                raise _BodyRefused
            return _EMPTY if more else _END
        return message

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            self._finishing = True
        await self._send(message)


def _declared_length(headers: Any) -> int:
    """The request's ``Content-Length`` (0 without one; a bad one is h11's to refuse)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
