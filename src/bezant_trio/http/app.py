"""The Quart-Trio app: the REST surface of DESIGN.md §4.

Reads only from the hub (``bezant_trio.store.hub``) and from status callables
the daemon hands in; never imports the connector. Responses reuse each
event's pre-encoded JSON bytes: nothing is re-serialised per request.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from bezant_trio.http.errors import ApiError, error_response, json_response
from bezant_trio.http.openapi import openapi_spec
from bezant_trio.http.params import check_topic, conid_of, int_arg
from bezant_trio.http.sse import SseStreams
from bezant_trio.model import parse_ts
from bezant_trio.store.hub import Hub, HubRead, TooManyConids, marketdata_topic

__all__ = ["HttpContext", "create_app"]

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_WAIT = 30.0
HISTORY_DEFAULT_LIMIT = 500
HISTORY_MAX_LIMIT = 5000


@dataclass
class HttpContext:
    """What the HTTP layer needs from the rest of the daemon."""

    hub: Hub | None
    token: str | None = None
    #: Extra ``_status`` fields (connector, sinks), merged over the hub's.
    status_extra: Callable[[], dict[str, Any]] = dict
    #: ``(status, body)`` for ``/health``.
    health: Callable[[], tuple[int, dict[str, Any]]] = lambda: (200, {"status": "ok"})
    #: Prometheus text for ``/metrics``; ``None`` answers 404.
    metrics: Callable[[], Awaitable[bytes] | bytes] | None = None
    #: Whether ``/events/{topic}/history`` can be served (the log is on).
    history_enabled: Callable[[], bool] = lambda: False
    #: ``GET /events/{topic}/stream`` (Server-Sent Events) and its settings.
    streams: SseStreams = field(default_factory=SseStreams)
    #: Extra registrars (request metrics, ...) get the app and this context.
    extensions: list[Callable[[QuartTrio, HttpContext], None]] = field(default_factory=list)


def create_app(ctx: HttpContext) -> QuartTrio:
    """Build the app; serve it with ``hypercorn.trio.serve``."""
    app = QuartTrio("bezant_trio")
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_request
    async def _authenticate() -> Response | None:
        if ctx.token is None or request.path == "/health":
            return None
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        # Compare even a malformed header against the token so the timing and
        # the answer do not tell a missing header from a wrong token.
        ok = hmac.compare_digest(presented.strip().encode(), ctx.token.encode())
        if scheme.lower() != "bearer" or not ok:
            return error_response(
                401,
                "unauthorized",
                "send 'Authorization: Bearer <token>' with the token configured as http.token",
            )
        return None

    @app.errorhandler(ApiError)
    async def _api_error(err: ApiError) -> Response:
        return err.to_response()

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException) -> Response:
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            400: "bad_request",
        }.get(err.code or 500, "http_error")
        message = {
            404: f"no route for {request.path}; see /openapi.json",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(err.code or 500, err.description or "bad request")
        return error_response(err.code or 500, code, message)

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the daemon's log")

    @app.get("/health")
    async def health() -> Response:
        status, body = ctx.health()
        return json_response(body, status=status)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return json_response(openapi_spec())

    @app.get("/metrics")
    async def metrics() -> Response:
        if ctx.metrics is None:
            raise ApiError(404, "not_found", "metrics are not enabled")
        body = ctx.metrics()
        if not isinstance(body, bytes):
            body = await body
        return Response(body, content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/events/_status")
    async def events_status() -> Response:
        hub = _require_hub(ctx)
        body = hub.status()
        body.update(ctx.status_extra())
        return json_response(body)

    @app.get("/events/marketdata")
    async def events_marketdata() -> Response:
        hub = _require_hub(ctx)
        conid = int_arg("conid", None, minimum=1)
        if conid is None:
            raise ApiError(
                400, "invalid_query", "conid is required: /events/marketdata?conid=265598"
            )
        try:
            hub.want_conid(conid)
        except TooManyConids as exc:
            raise ApiError(429, "too_many_conids", str(exc)) from None
        return await _poll(hub, marketdata_topic(conid))

    @app.get("/events/<topic>")
    async def events_topic(topic: str) -> Response:
        hub = _require_hub(ctx)
        check_topic(topic)
        if topic.startswith("marketdata:"):
            conid = conid_of(topic)
            if conid is not None:
                try:
                    hub.want_conid(conid)
                except TooManyConids as exc:
                    raise ApiError(429, "too_many_conids", str(exc)) from None
        return await _poll(hub, topic)

    @app.get("/events/<topic>/history")
    async def events_history(topic: str) -> Response:
        hub = _require_hub(ctx)
        check_topic(topic)
        if not ctx.history_enabled() or hub.event_log is None:
            raise ApiError(
                503,
                "events_history_disabled",
                "history needs the durable log: set store.path (or BEZANT_EVENTS_DB_PATH)",
            )
        limit = min(
            int_arg("limit", HISTORY_DEFAULT_LIMIT, minimum=1) or HISTORY_DEFAULT_LIMIT,
            HISTORY_MAX_LIMIT,
        )
        since_ts_raw = request.args.get("since_ts")
        since_cursor = int_arg("since_cursor", None, minimum=0)
        if since_ts_raw is not None and since_cursor is not None:
            raise ApiError(400, "invalid_query", "give since_ts or since_cursor, not both")
        since_ts: float | None = None
        if since_ts_raw is not None:
            try:
                since_ts = parse_ts(since_ts_raw)
            except ValueError:
                raise ApiError(
                    400,
                    "invalid_query",
                    "since_ts must be an RFC 3339 timestamp, e.g. 2026-01-01T00:00:00Z",
                ) from None
        if since_ts is None and since_cursor is None:
            since_cursor = 0
        events = await trio.to_thread.run_sync(
            lambda: hub.event_log.history(
                topic, since_ts=since_ts, since_cursor=since_cursor, limit=limit
            )
        )
        body = b"".join(
            (
                b'{"topic":"',
                topic.encode(),
                b'","events":[',
                b",".join(e.json for e in events),
                b'],"count":',
                str(len(events)).encode(),
                b"}",
            )
        )
        return json_response(body)

    ctx.streams.install(app, ctx)
    for extend in ctx.extensions:
        extend(app, ctx)
    return app


async def _poll(hub: Hub, topic: str) -> Response:
    since = int_arg("since", 0, minimum=0)
    limit = _limit_arg()
    wait = _wait_arg()
    answer = await hub.read(topic, since, limit)
    if wait > 0 and not answer.expired and len(answer.events) < limit:
        # Also with a few events ready: the hub paces hot topics into batches.
        await hub.wait(topic, since, wait, limit=limit)
        answer = await hub.read(topic, since, limit)
    return _answer(hub, topic, since, answer)


def _answer(hub: Hub, topic: str, since: int, answer: HubRead) -> Response:
    if answer.expired:
        return error_response(
            412,
            "cursor_expired",
            f"events of {topic} after cursor {since} are no longer kept; "
            f"resume from head_cursor (events in between were missed)",
            head_cursor=answer.head_cursor,
            reset_epoch=hub.reset_epoch,
        )
    if not answer.events and answer.known:
        return Response(b"", status=204, headers={"x-bezant-cursor": str(answer.next_cursor)})
    body = b"".join(
        (
            b'{"events":[',
            b",".join(e.json for e in answer.events),
            b'],"next_cursor":',
            str(answer.next_cursor).encode(),
            b',"reset_epoch":',
            str(hub.reset_epoch).encode(),
            b"}",
        )
    )
    return json_response(body, headers={"x-bezant-cursor": str(answer.next_cursor)})


def _require_hub(ctx: HttpContext) -> Hub:
    if ctx.hub is None:
        raise ApiError(503, "events_disabled", "event capture is not running in this process")
    return ctx.hub


def _limit_arg() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
        raise ApiError(
            400,
            "invalid_query",
            f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw[:40]!r}",
        )
    # Larger values are capped, as bezant-server does.
    return min(int(raw), MAX_LIMIT)


def _wait_arg() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT:  # also rejects NaN
        raise ApiError(
            400, "invalid_query", f"wait must be seconds from 0 to {MAX_WAIT:g}, got {raw[:40]!r}"
        )
    return value
