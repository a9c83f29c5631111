"""The ASGI fast path in front of Quart for the hot read: plain polls of ``GET /events/...``.

Through Quart a poll costs a request context, werkzeug routing and the
hooks: several times the daemon's own work for it (bench/ANALYSIS.md).
This layer answers the polls it is sure about itself, ``GET /events/<topic>``
and ``GET /events/marketdata?conid=N`` with a well-formed query and no
request body (``Content-Length: 0`` is none), by calling the hub through the
same code as the Quart route (``http.poll``) and sending the same status,
headers and body. Everything else goes to the Quart app unchanged: other
routes and methods, anything it does not parse, and every error (400, 412, 429, 503) but three: the 401 for a
wrong or missing token and, without a token, the 403 for a ``Host`` or
browser origin that is not allowed (``http.hosts``), on these two routes, and
the 405 (with its ``Allow``) for a method no route allows on them, after those
two checks, as Quart orders them: a flood of made-up methods is refused for a
fraction of what Quart's request context and error handler cost. A
token is checked once per request, in constant time (``params.bearer_matches``),
so the layer that checked it gives the 401; the same goes for the 403.
``tests/http/test_http_fastpath.py`` holds both paths to the same bytes.

Reads the hub only; never imports the connector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import trio
from quart_trio import QuartTrio

from bezant_trio.http.context import HttpContext
from bezant_trio.http.errors import (
    UNAUTHORIZED_MESSAGE,
    ApiError,
    allow_header,
    method_not_allowed_message,
)
from bezant_trio.http.hosts import HOST_NOT_ALLOWED_MESSAGE
from bezant_trio.http.params import bearer_matches, parse_int
from bezant_trio.http.poll import PollArgs, events_body, poll_args, should_wait, wait_and_read
from bezant_trio.model import CONID_FAMILIES, TOPIC_RE, keyed_topic, wanted_conid
from bezant_trio.store.hub import Hub, HubRead
from bezant_trio.wants import TooManyConids

__all__ = ["FastPolls"]

#: The route template Quart knows topic polls by (request metrics key on it);
#: ``/events/marketdata`` (and bars, book) are routes of their own.
TOPIC_ROUTE = "/events/<topic>"
#: The route label of a request no route matched (an unknown path, a 405): what
#: Quart's ``after_request`` hooks see for a method a route does not allow.
UNMATCHED = "unmatched"

#: A request carrying any of these goes to Quart (``http.gate`` drops the body either way;
#: these are rare enough that the fast path need not answer them); but
#: ``Content-Length: 0``, which many clients send on every request, says there is none.
_BODY_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"expect"))
# Quart's headers for these answers, in its order (the tests compare them with Quart's).
_JSON = (b"content-type", b"application/json")
_HTML = (b"content-type", b"text/html; charset=utf-8")
_NO_BODY = (b"content-length", b"0")
#: ``errors.error_response(401, "unauthorized", ...)``, encoded once.
_UNAUTHORIZED = orjson.dumps({"code": "unauthorized", "message": UNAUTHORIZED_MESSAGE})
#: ``errors.error_response(403, "host_not_allowed", ...)``, encoded once.
_HOST_NOT_ALLOWED = orjson.dumps({"code": "host_not_allowed", "message": HOST_NOT_ALLOWED_MESSAGE})


class FastPolls:
    """The fast path's switch and counters; :meth:`install` puts it in front of an app.

    ``enabled`` is read per request, so it can be switched while serving.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        #: Requests answered here, without Quart: polls and their 401s and 403s (since start).
        self.answered = 0
        #: HTTP requests handed to Quart while enabled (since start).
        self.passed_on = 0
        #: Called with (route template, method, status) for every request answered
        #: here, before it is sent: what Quart's ``after_request`` hooks see.
        self.observers: list[Callable[[str, str, int], None]] = []

    def install(self, app: QuartTrio, ctx: HttpContext) -> None:
        """Wrap ``app.asgi_app``, so the app served stays the Quart app (Quart's advice)."""
        app.asgi_app = _FastPollApp(app.asgi_app, ctx, self, _allowed_methods(app))  # type: ignore[method-assign]


def _allowed_methods(app: QuartTrio) -> dict[str, frozenset[str]]:
    """The methods Quart's routes allow on the fast path's paths, by route label.

    Asked of Quart's own URL map (what its 405 says), once: every path a label
    stands for is matched by the same rules.
    """
    adapter = app.url_map.bind("localhost")
    paths = {TOPIC_ROUTE: "/events/orders"}
    paths.update((f"/events/{family}", f"/events/{family}") for family in CONID_FAMILIES)
    return {route: frozenset(adapter.allowed_methods(path)) for route, path in paths.items()}


@dataclass(frozen=True, slots=True)
class _Poll:
    """A poll the fast path will answer (if the hub does not say 412 or 429)."""

    route: str
    topic: str
    #: ``(family, conid)`` a per-instrument poll wants (None for other topics).
    wanted: tuple[str, int] | None
    args: PollArgs


@dataclass(frozen=True, slots=True)
class _Refused:
    """A request to one of the poll routes that Quart would refuse: 401, 403 or 405."""

    #: The route label and method Quart's ``after_request`` hooks would see.
    route: str
    method: str
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _refused(
    route: str, method: str, status: int, body: bytes, *headers: tuple[bytes, bytes]
) -> _Refused:
    return _Refused(route, method, status, [_JSON, _length(body), *headers], body)


class _FastPollApp:
    """The ASGI callable: answers plain polls, hands everything else to ``quart_app``."""

    def __init__(
        self,
        quart_app: Any,
        ctx: HttpContext,
        polls: FastPolls,
        allowed: dict[str, frozenset[str]],
    ) -> None:
        self._quart_app = quart_app
        self._ctx = ctx
        self._polls = polls
        #: Per route label, the methods its routes allow, and their ``Allow`` header.
        self._allowed = allowed
        self._allow = {
            route: (b"allow", allow_header(methods).encode()) for route, methods in allowed.items()
        }

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        polls = self._polls
        if polls.enabled and scope["type"] == "http":
            plan = self._plan(scope)
            if type(plan) is _Poll:
                await self._answer(plan, scope, receive, send)
                return
            if type(plan) is _Refused:
                await self._send(
                    plan.route, plan.method, plan.status, plan.headers, plan.body, send
                )
                return
            polls.passed_on += 1
        await self._quart_app(scope, receive, send)

    def _plan(self, scope: Any) -> _Poll | _Refused | None:
        """What to answer, or None for Quart. Has no side effects.

        Checks in Quart's order where the answers differ: the token, or
        without one the ``Host`` (Quart's ``before_request``), before the
        method (its routing) and the query's values (the route's).
        """
        if scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not path.startswith("/events/") or self._ctx.hub is None:
            return None
        name = path[8:]
        if name in CONID_FAMILIES:
            route = f"/events/{name}"
        elif TOPIC_RE.match(name) is not None:
            route = TOPIC_ROUTE
        else:
            return None  # another route, or a bad topic
        method: str = scope["method"]
        polled = method == "GET"
        if not polled and method in self._allowed[route]:
            return None  # HEAD: Quart's
        # The route label Quart's metrics give: none for a method its routing
        # refuses, whatever the answer (its 401 or 403 too).
        label = route if polled else UNMATCHED
        authorization: bytes | None = None
        for header, value in scope["headers"]:
            if header == b"authorization":
                if authorization is None:  # Quart reads the first one too
                    authorization = value
            elif header in _BODY_HEADERS and (header != b"content-length" or value != b"0"):
                return None
        # Before the token: Quart fails on a query that is not UTF-8 before
        # it checks the token.
        query = _query(scope["query_string"])
        if query is None:
            return None
        token = self._ctx.token
        if token is None:
            if not self._ctx.hosts.allows(scope["headers"]):
                return _refused(label, method, 403, _HOST_NOT_ALLOWED)
        # Quart decodes header values as latin-1: decoded the same way, a
        # header passes here exactly when it passes there.
        elif not bearer_matches(
            "" if authorization is None else authorization.decode("latin-1"), token
        ):
            return _refused(label, method, 401, _UNAUTHORIZED)
        if not polled:
            message = method_not_allowed_message(method, path)
            body = orjson.dumps({"code": "method_not_allowed", "message": message})
            return _refused(label, method, 405, body, self._allow[route])
        try:
            if route != TOPIC_ROUTE:  # /events/marketdata?conid=N and the like
                raw_conid = query.get("conid")
                if raw_conid is None:
                    return None
                conid = parse_int("conid", raw_conid, minimum=1)
                return _Poll(route, keyed_topic(name, conid), (name, conid), poll_args(query))
            return _Poll(route, name, wanted_conid(name), poll_args(query))
        except ApiError:
            return None

    async def _answer(self, poll: _Poll, scope: Any, receive: Any, send: Any) -> None:
        hub = self._ctx.hub
        assert hub is not None  # _plan checked it
        if poll.wanted is not None:
            try:
                self._ctx.demand(poll.wanted[0]).want(poll.wanted[1])
            except TooManyConids:
                # Nothing was recorded: Quart asks again and answers the 429.
                self._polls.passed_on += 1
                await self._quart_app(scope, receive, send)
                return
        # read_poll's steps, so that only a poll that waits pays for a watcher.
        answer = await hub.read(poll.topic, poll.args.since, poll.args.limit)
        if should_wait(poll.args, answer):
            body = _BodySeen()
            async with trio.open_nursery() as nursery:
                # Quart cancels a request whose client goes away; so does this
                # watcher, for the one place that can take long: the wait.
                watching = trio.CancelScope()
                nursery.start_soon(
                    _cancel_on_disconnect, receive, body, nursery.cancel_scope, watching
                )
                answer = await wait_and_read(hub, poll.topic, poll.args)
                # Stop watching before answering. Answering at once, without
                # waiting for the watcher to end, saves the long-poll a pass of
                # the scheduler; and the answer's own end makes Hypercorn report
                # a disconnect, whose cancel would stop Hypercorn from closing a
                # `Connection: close` connection (a Quart-trio quirk).
                watching.cancel()
                if not answer.expired:
                    await self._respond(hub, poll, answer, send)
                    return
            if nursery.cancel_scope.cancelled_caught:
                return  # the client went away: like Quart, answer nothing
            receive = _replaying(body, receive)
        elif not answer.expired:
            await self._respond(hub, poll, answer, send)
            return
        # Quart reads again (the cursor stays expired) and answers the 412.
        self._polls.passed_on += 1
        await self._quart_app(scope, receive, send)

    async def _respond(self, hub: Hub, poll: _Poll, answer: HubRead, send: Any) -> None:
        """The 200 with events, or the 204 of a poll that is caught up (``app._answer``)."""
        cursor = str(answer.next_cursor).encode()
        if not answer.events and answer.known:
            headers = [(b"x-bezant-cursor", cursor), _HTML, _NO_BODY]
            await self._send(poll.route, "GET", 204, headers, b"", send)
        else:
            body = events_body(answer, hub.reset_epoch)
            headers = [(b"x-bezant-cursor", cursor), _JSON, _length(body)]
            await self._send(poll.route, "GET", 200, headers, body, send)

    async def _send(
        self,
        route: str,
        method: str,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        send: Any,
    ) -> None:
        polls = self._polls
        polls.answered += 1
        for observe in polls.observers:
            observe(route, method, status)
        # Not under a timeout, unlike Quart's RESPONSE_TIMEOUT: Hypercorn shields
        # its socket writes, and TCP_USER_TIMEOUT drops a stalled reader (server.py).
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", b"%d" % len(body))


class _BodySeen:
    """Whether the watcher took the end of the request's body (its bytes are dropped)."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = False


async def _cancel_on_disconnect(
    receive: Any, body: _BodySeen, request: trio.CancelScope, watching: trio.CancelScope
) -> None:
    # Body messages are dropped as they come: no route reads a body, and
    # keeping them would let one long-poll hold all that a client sends
    # (HTTP/2 needs no content-length to send one, so _plan cannot see it).
    with watching:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                request.cancel()
                return
            if not message.get("more_body", False):
                body.complete = True


def _replaying(body: _BodySeen, receive: Any) -> Any:
    """``receive`` for Quart after the watcher: first the end of the body, if it took it."""
    if not body.complete:
        return receive
    ended = False

    async def replay() -> Any:
        nonlocal ended
        if not ended:
            ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await receive()

    return replay


def _query(raw: bytes) -> dict[str, str] | None:
    """The query as werkzeug's ``request.args.get`` sees it (first value wins), or None.

    Only for plain ASCII with no ``%`` or ``+``: then no decoding is needed and
    splitting matches ``urllib.parse.parse_qsl(keep_blank_values=True)``.
    Anything else is left to Quart.
    """
    if not raw:
        return {}
    if not raw.isascii() or b"%" in raw or b"+" in raw:
        return None
    query: dict[str, str] = {}
    for field in raw.decode("ascii").split("&"):
        if field:
            name, _, value = field.partition("=")
            query.setdefault(name, value)
    return query
