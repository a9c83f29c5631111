"""The Quart-Trio app: the REST surface (docs/api.md), every route and every error.

Reads only from the hub (``bezant_trio.store.hub``) and from status callables
the daemon hands in; never imports the connector. Responses reuse each
event's pre-encoded JSON bytes: nothing is re-serialised per request. Plain
polls are answered in front of Quart by ``http.fastpath`` (same bytes);
everything else, every error included, is here.
"""

from __future__ import annotations

import functools
import logging

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from bezant_trio.http.console import PUBLIC_PATHS, install_console
from bezant_trio.http.context import HttpContext
from bezant_trio.http.errors import (
    UNAUTHORIZED_MESSAGE,
    ApiError,
    allow_header,
    error_response,
    json_response,
    method_not_allowed_message,
)
from bezant_trio.http.fastpath import FastPolls
from bezant_trio.http.hosts import HOST_NOT_ALLOWED_MESSAGE
from bezant_trio.http.metrics import CONTENT_TYPE, DaemonMetrics
from bezant_trio.http.openapi import openapi_spec
from bezant_trio.http.params import (
    OPEN_PATHS,
    bearer_matches,
    check_topic,
    int_arg,
    want_conid,
    want_topic,
)
from bezant_trio.http.poll import events_body, poll_args, read_poll
from bezant_trio.http.sse import SseStreams
from bezant_trio.model import CONID_FAMILIES, keyed_topic, parse_ts
from bezant_trio.store.hub import Hub, HubRead

__all__ = ["create_app"]

log = logging.getLogger(__name__)

HISTORY_DEFAULT_LIMIT = 500
HISTORY_MAX_LIMIT = 5000


def create_app(
    ctx: HttpContext,
    *,
    streams: SseStreams | None = None,
    fast_polls: FastPolls | None = None,
    metrics: DaemonMetrics | None = None,
) -> QuartTrio:
    """Build the app; serve it with ``hypercorn.trio.serve``.

    ``streams`` serves ``/events/{topic}/stream``, ``fast_polls`` answers
    plain polls in front of Quart (both built fresh when not given);
    ``metrics`` answers ``/metrics`` and counts every request (404 without).
    """
    streams = streams if streams is not None else SseStreams()
    fast_polls = fast_polls if fast_polls is not None else FastPolls()
    app = QuartTrio("bezant_trio")
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_request
    async def _authenticate() -> Response | None:
        # The fast path (http.fastpath) makes the same checks, in this order.
        if request.path in OPEN_PATHS:
            return None
        if ctx.token is None:
            if not ctx.hosts.allows(request.scope["headers"]):
                return error_response(403, "host_not_allowed", HOST_NOT_ALLOWED_MESSAGE)
            return None
        if request.path in PUBLIC_PATHS:  # the console's files hold no data
            return None
        if not bearer_matches(request.headers.get("authorization", ""), ctx.token):
            return error_response(401, "unauthorized", UNAUTHORIZED_MESSAGE)
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
            405: method_not_allowed_message(request.method, request.path),
        }.get(err.code or 500, err.description or "bad request")
        response = error_response(err.code or 500, code, message)
        if isinstance(err, MethodNotAllowed) and err.valid_methods:
            # RFC 9110 15.5.6: a 405 names the methods the target allows.
            response.headers["Allow"] = allow_header(err.valid_methods)
        return response

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the daemon's log")

    @app.get("/health")
    async def health() -> Response:
        status, body = ctx.health()
        return json_response(body, status=status)

    @app.get("/health/live")
    async def health_live() -> Response:
        # The process runs and answers: all a liveness probe asks.
        return json_response({"status": "alive"})

    @app.get("/health/ready")
    async def health_ready() -> Response:
        status, body = ctx.readiness()
        return json_response(body, status=status)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return json_response(openapi_spec())

    @app.get("/metrics")
    async def metrics_text() -> Response:
        if metrics is None:
            raise ApiError(404, "not_found", "metrics are not enabled")
        return Response(metrics.render(), content_type=CONTENT_TYPE)

    @app.get("/events/_status")
    async def events_status() -> Response:
        hub = _require_hub(ctx)
        body = hub.status()
        body.update(ctx.status_extra())
        return json_response(body)

    async def events_by_conid(family: str) -> Response:
        hub = _require_hub(ctx)
        conid = int_arg("conid", None, minimum=1)
        if conid is None:
            raise ApiError(
                400, "invalid_query", f"conid is required: /events/{family}?conid=265598"
            )
        topic = keyed_topic(family, conid)
        want_topic(ctx, topic)
        return await _poll(hub, topic)

    for family in CONID_FAMILIES:
        # /events/marketdata?conid=N, /events/bars?conid=N, /events/book?conid=N
        app.add_url_rule(
            f"/events/{family}",
            f"events_{family}",
            functools.partial(events_by_conid, family),
            methods=["GET"],
        )

    @app.get("/events/<topic>")
    async def events_topic(topic: str) -> Response:
        hub = _require_hub(ctx)
        check_topic(topic)
        want_topic(ctx, topic)
        return await _poll(hub, topic)

    @app.get("/events/<topic>/history")
    async def events_history(topic: str) -> Response:
        hub = _require_hub(ctx)
        check_topic(topic)
        if hub.event_log is None:
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
        events = await hub.history(topic, since_ts=since_ts, since_cursor=since_cursor, limit=limit)
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

    @app.get("/state/orders")
    async def state_orders() -> Response:
        hub = _require_hub(ctx)
        return json_response(hub.state.answer(hub.state.orders, hub.reset_epoch))

    @app.get("/state/orders/<orderId>")
    async def state_order(orderId: str) -> Response:  # the name of DESIGN's path
        order_id = orderId
        hub = _require_hub(ctx)
        view = hub.state.orders
        hub.state.prune()
        record = view.items.get(order_id)
        if record is None:
            raise ApiError(
                404,
                "unknown_order",
                f"no order {order_id[:40]!r} in the state (finished orders are kept for "
                "events.finished_orders_ttl); see GET /state/orders",
            )
        return json_response(
            {"cursor": view.cursor, "reset_epoch": hub.reset_epoch, "item": record}
        )

    @app.get("/state/marketdata")
    async def state_marketdata() -> Response:
        hub = _require_hub(ctx)
        conid = int_arg("conid", None, minimum=1)
        if conid is None:
            hub.state.prune()
            items = {
                str(c): v.items.get("quote", {})
                for c, v in sorted(hub.state.quotes.items())
                if c in ctx.wants
            }
            cursors = {
                str(c): v.cursor for c, v in sorted(hub.state.quotes.items()) if c in ctx.wants
            }
            return json_response(
                {"cursors": cursors, "reset_epoch": hub.reset_epoch, "items": items}
            )
        want_conid(ctx.wants, conid)  # a quote asked for is subscribed, like a poll
        view = hub.state.quote(conid)
        return json_response(
            {
                "cursor": view.cursor if view is not None else 0,
                "reset_epoch": hub.reset_epoch,
                "conid": conid,
                "item": view.items.get("quote", {}) if view is not None else {},
            }
        )

    @app.get("/state/pnl")
    async def state_pnl() -> Response:
        hub = _require_hub(ctx)
        return json_response(hub.state.answer(hub.state.pnl, hub.reset_epoch))

    install_console(app)
    streams.install(app, ctx)
    if metrics is not None:
        metrics.install(app, fast_polls)
    fast_polls.install(app, ctx)
    return app


async def _poll(hub: Hub, topic: str) -> Response:
    # The fast path (http.fastpath) answers the same polls with the same calls.
    args = poll_args(request.args)
    return _answer(hub, topic, args.since, await read_poll(hub, topic, args))


def _answer(hub: Hub, topic: str, since: int, answer: HubRead) -> Response:
    if answer.expired:
        return expired_response(hub, topic, since, answer)
    if not answer.events and answer.known:
        return Response(b"", status=204, headers={"x-bezant-cursor": str(answer.next_cursor)})
    body = events_body(answer, hub.reset_epoch)
    return json_response(body, headers={"x-bezant-cursor": str(answer.next_cursor)})


def expired_response(hub: Hub, topic: str, since: int, answer: HubRead) -> Response:
    """The ``412 cursor_expired`` (docs/api.md, "Recovering from 412").

    ``head_cursor`` is the oldest cursor still available, as bezant-server
    means it: resuming with ``since = head_cursor - 1`` loses only what is gone.
    """
    oldest = answer.oldest_cursor if answer.oldest_cursor is not None else answer.head_cursor + 1
    if answer.ahead:
        message = (
            f"cursor {since} of {topic} is ahead of the newest event ({answer.head_cursor}); "
            "the daemon restarted without a log, so cursors started again: "
            f"resume with since={oldest - 1} to read everything kept"
        )
    else:
        message = (
            f"events of {topic} after cursor {since} up to {oldest - 1} are no longer kept; "
            f"resume with since={oldest - 1} (head_cursor - 1) to read everything still kept"
        )
    return error_response(
        412,
        "cursor_expired",
        message,
        head_cursor=oldest,
        newest_cursor=answer.head_cursor,
        reset_epoch=hub.reset_epoch,
    )


def _require_hub(ctx: HttpContext) -> Hub:
    if ctx.hub is None:
        raise ApiError(503, "events_disabled", "event capture is not running in this process")
    return ctx.hub
