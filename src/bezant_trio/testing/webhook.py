"""A webhook endpoint for tests: a real HTTP/1.1 server on 127.0.0.1 that records and obeys.

:class:`WebhookReceiver` (trio + h11) listens on a free port and records every
request (:class:`Received`: method, path, headers, body, the Trio time it
arrived, the status it got). What it answers is scripted: each request takes
the next queued :class:`Reply` (a status, headers such as ``Retry-After``, a
delay, or a hang that never answers), else the receiver's defaults
(:attr:`~WebhookReceiver.status`, :attr:`~WebhookReceiver.delay`,
:attr:`~WebhookReceiver.hang`). :meth:`~WebhookReceiver.hold` keeps every
request unanswered until :meth:`~WebhookReceiver.release`;
:meth:`~WebhookReceiver.down` stops listening and drops every connection
(the sink sees refused connections) until :meth:`~WebhookReceiver.up`
listens again on the same port.

Given the sink's secret it checks each request's Standard Webhooks signature
with :func:`verify_signature`, written from the specification and
independent of the sink's own signing code.

For long runs, ``record="cursors"`` keeps only the cursors taken per topic
(and what arrived out of order), ``record="counts"`` only how many requests
and events came.

Owns its sockets and what it recorded; knows nothing of the sink.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import h11
import orjson
import trio

if TYPE_CHECKING:
    from bezant_trio.simulator import SeqRanges

__all__ = ["Received", "Reply", "WebhookReceiver", "verify_signature"]

#: Seconds a signature's ``webhook-timestamp`` may differ from now (the spec's default).
SIGNATURE_TOLERANCE = 300
_READ_SIZE = 262144


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = SIGNATURE_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Standard Webhooks verification: is one ``v1`` signature base64(HMAC-SHA256(key, id.ts.body))?

    ``secret`` is ``whsec_<base64 key>``; ``headers`` keys are lower case. A
    timestamp more than ``tolerance`` seconds from ``now`` (default: the wall
    clock) fails, as a missing header does.
    """
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if msg_id is None or timestamp is None or signatures is None:
        return False
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in signatures.split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False


@dataclass(frozen=True)
class Reply:
    """What to answer one request: ``status`` with ``headers``, after ``delay`` seconds.

    ``retry_after`` adds a ``Retry-After`` header; ``hang`` never answers (the
    client times out).
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    hang: bool = False
    delay: float = 0.0
    retry_after: float | None = None

    def response_headers(self) -> list[tuple[str, str]]:
        headers = [("content-length", "0"), *self.headers]
        if self.retry_after is not None:
            headers.append(("retry-after", f"{self.retry_after:g}"))
        return headers


@dataclass
class Received:
    """One request: when it arrived (Trio time), what it held, what it was answered."""

    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: The status it was answered; None while unanswered (held, delayed, hung).
    status: int | None = None
    #: Whether its signature verified; None when the receiver knows no secret.
    signature_ok: bool | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events of the batch (the body's ``events`` array)."""
        return orjson.loads(self.body)["events"]

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def ok(self) -> bool:
        """Answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


class WebhookReceiver:
    """Start with ``await nursery.start(receiver.run)``; POST to :attr:`url`.

    ``record``: ``"requests"`` keeps every :class:`Received` in
    :attr:`requests`; ``"cursors"`` keeps only :attr:`cursors` (per topic, the
    cursors of events answered 2xx) and :attr:`out_of_order`; ``"counts"``
    keeps nothing but :attr:`posts` and :attr:`events_received` (events
    counted by their ``"cursor":`` keys, without parsing, cheap enough for a
    benchmark). A POST body that is not a batch (``{"events": [...]}``) is
    answered 400, unless ``batches=False`` (a plugin posting other bodies).
    """

    def __init__(
        self,
        secret: str | None = None,
        *,
        record: Literal["requests", "cursors", "counts"] = "requests",
        batches: bool = True,
    ) -> None:
        self.secret = secret
        self.record = record
        self.batches = batches
        self.script: deque[Reply] = deque()
        #: The default answer, when the script is empty.
        self.status = 200
        self.delay = 0.0
        self.hang = False
        self.requests: list[Received] = []
        self.cursors: dict[str, SeqRanges] = {}
        #: ``(topic, cursor)`` of new events that arrived below a newer one (``record="cursors"``).
        self.out_of_order: list[tuple[str, int]] = []
        #: Requests whose signature did not verify (every mode).
        self.bad_signatures = 0
        #: POST requests and the events in them (every mode).
        self.posts = 0
        self.events_received = 0
        self.port = 0
        self._held = 0
        self._gate: trio.Event | None = None
        self._listen_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    # ------------------------------------------------------------------ reading

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Where the sink posts: ``http://127.0.0.1:<port>/hook``."""
        return f"{self.base_url}/hook"

    @property
    def is_up(self) -> bool:
        return self._listen_scope is not None

    @property
    def accepted(self) -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        return [r for r in self.requests if r.ok]

    def events(self) -> list[dict[str, Any]]:
        """Every event of every batch answered 2xx, in arrival order (repeats included)."""
        return [event for request in self.accepted for event in request.events]

    @property
    def held(self) -> int:
        """Requests read and not answered yet because of :meth:`hold`."""
        return self._held

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checked after every request; bound it yourself."""
        while not predicate():
            await self._changed.wait()

    # ------------------------------------------------------------------ control

    def answer(self, *replies: Reply) -> None:
        """Queue replies for the next requests."""
        self.script.extend(replies)

    def hold(self) -> None:
        """From now on, keep every request unanswered until :meth:`release`."""
        if self._gate is None:
            self._gate = trio.Event()

    def release(self) -> None:
        """Answer the held requests and stop holding."""
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def run(self, *, task_status: trio.TaskStatus[WebhookReceiver]) -> None:
        """Listen and serve until cancelled; reports the receiver once it listens."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.up()
            task_status.started(self)
            await trio.sleep_forever()  # up() and down() come and go inside this nursery

    async def up(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        if self._listen_scope is not None:
            return
        if self._nursery is None:
            raise RuntimeError("start the receiver with nursery.start(receiver.run) first")
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
        """Stop listening and drop every connection, answered or not."""
        if self._listen_scope is not None:
            self._listen_scope.cancel()
            self._listen_scope = None

    # ------------------------------------------------------------------ serving

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _is_batch(self, body: bytes) -> bool:
        try:
            events = orjson.loads(body)["events"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return False
        return isinstance(events, list)

    def _take(self, request: Received) -> None:
        """Record a request as it arrives (before it is answered)."""
        if self.secret is not None:
            request.signature_ok = verify_signature(self.secret, request.headers, request.body)
            if not request.signature_ok:
                self.bad_signatures += 1
        if request.method == "POST":
            self.posts += 1
            self.events_received += request.body.count(b'"cursor":')
        if self.record == "requests":
            self.requests.append(request)

    def _answered(self, request: Received) -> None:
        if self.record != "cursors" or not request.ok or request.method != "POST":
            return
        # Imported here: the simulator package is heavy, and only this mode needs it.
        from bezant_trio.simulator import SeqRanges

        for event in request.events:
            taken = self.cursors.setdefault(event["topic"], SeqRanges())
            cursor = event["cursor"]
            if cursor in taken:
                continue  # a repeat (at least once)
            if taken.last is not None and cursor < taken.last:
                self.out_of_order.append((event["topic"], cursor))
            taken.add(cursor)

    def _reply_for(self, request: Received) -> Reply | None:
        """The scripted reply, a 400 for a body that is not a batch, or None: the defaults."""
        if self.batches and request.method == "POST" and not self._is_batch(request.body):
            return Reply(400)
        if self.script:
            return self.script.popleft()
        return None

    async def _respond(self, reply: Reply) -> None:
        """Wait as the reply and :meth:`hold` say; returns once it may be answered."""
        if reply.hang:
            self._notify()
            await trio.sleep_forever()
        while self._gate is not None:
            gate = self._gate
            self._held += 1
            self._notify()
            try:
                await gate.wait()
            finally:
                self._held -= 1
        if reply.delay:
            await trio.sleep(reply.delay)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: Received | None = None
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(_READ_SIZE))
                elif isinstance(event, h11.Request):
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    request = Received(
                        trio.current_time(),
                        event.method.decode(),
                        event.target.decode(),
                        headers,
                        b"",
                    )
                    body = bytearray()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    request.body = bytes(body)
                    scripted = self._reply_for(request)
                    self._take(request)
                    reply = scripted or Reply(self.status, hang=self.hang, delay=self.delay)
                    await self._respond(reply)
                    if scripted is None:
                        # The default status is the one current when the answer goes
                        # out: a test may change it while a request is delayed.
                        reply = Reply(self.status)
                    request.status = reply.status
                    self._answered(request)
                    response = h11.Response(
                        status_code=reply.status, headers=reply.response_headers()
                    )
                    await stream.send_all(conn.send(response) + conn.send(h11.EndOfMessage()))
                    self._notify()
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                else:  # ConnectionClosed, or the client paused an unfinished cycle
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)
