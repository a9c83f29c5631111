"""The gateway's REST subset, answered the way the real one answers.

``/v1/api/tickle``, ``/iserver/auth/status``, ``/iserver/auth/ssodh/init``,
``/iserver/accounts`` and the three endpoints a consumer resyncs from
(``/iserver/account/orders``, ``/iserver/account/trades``,
``/iserver/account/pnl/partitioned``), which answer from the account's truth
(``truth.py``): the orders, fills and PnL the simulator has streamed. Shapes
follow the corpus (``corpus/rest.jsonl``). Every call is counted per endpoint
(``sim.rest_calls``) and logged with its time (``sim.rest_log``), so tests can
check a client's pacing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

from bezant_trio.simulator import frames
from bezant_trio.simulator.httpserver import Request, Response

if TYPE_CHECKING:
    from bezant_trio.simulator.gateway import GatewaySimulator

__all__ = ["API", "answer"]

API = "/v1/api"
#: Where ``GET /`` sends a browser (corpus: behaviour.jsonl offline-root-redirects).
LOGIN_LOCATION = "/sso/Login?forwardTo=22&RL=1&ip2loc=US"
_NOT_AUTHENTICATED = {"error": "not authenticated", "statusCode": 401}

_Handler = Callable[["GatewaySimulator", Request], Awaitable[Response]]


def _unavailable(sim: GatewaySimulator) -> Response | None:
    if sim.down:
        return Response(503, {"error": "gateway restarting"})
    if not sim.authenticated:
        return Response(401, dict(_NOT_AUTHENTICATED))
    return None


def _brokerage_status(sim: GatewaySimulator) -> dict[str, object]:
    if sim.competing:
        return frames.auth_status_body(authenticated=False, competing=True)
    if not sim.brokerage_up:
        # corpus: rest.jsonl auth-status-down-captured
        return frames.auth_status_body(authenticated=False, connected=False)
    return frames.auth_status_body(authenticated=True)


async def _tickle(sim: GatewaySimulator, request: Request) -> Response:
    sim.tickle_count += 1
    sim._notify()
    return _unavailable(sim) or Response(
        200, frames.tickle_body(sim.session, _brokerage_status(sim))
    )


async def _auth_status(sim: GatewaySimulator, request: Request) -> Response:
    return _unavailable(sim) or Response(200, _brokerage_status(sim))


async def _ssodh_init(sim: GatewaySimulator, request: Request) -> Response:
    refused = _unavailable(sim)
    if refused is not None:
        return refused
    try:
        body = orjson.loads(request.body) if request.body.strip() else {}
    except orjson.JSONDecodeError:
        body = {}
    compete = isinstance(body, dict) and body.get("compete") is True
    up = sim.init_brokerage_session(compete=compete)
    return Response(200, frames.ssodh_init_body(authenticated=up, competing=sim.competing))


def _iserver(
    answer: Callable[[GatewaySimulator, Request], object],
) -> _Handler:
    """An ``/iserver`` endpoint: needs the brokerage session up."""

    async def handler(sim: GatewaySimulator, request: Request) -> Response:
        refused = _unavailable(sim)
        if refused is not None:
            return refused
        if not sim.brokerage_up:
            return Response(401, dict(_NOT_AUTHENTICATED))
        return Response(200, answer(sim, request))

    return handler


_ROUTES: dict[str, tuple[frozenset[str], _Handler]] = {
    f"{API}/tickle": (frozenset({"GET", "POST"}), _tickle),
    f"{API}/iserver/auth/status": (frozenset({"GET", "POST"}), _auth_status),
    f"{API}/iserver/auth/ssodh/init": (frozenset({"POST"}), _ssodh_init),
    f"{API}/iserver/accounts": (
        frozenset({"GET"}),
        _iserver(lambda sim, _: frames.accounts_body(sim.session)),
    ),
    # force=true is answered like a plain request: the documentation's example
    # shows the orders (corpus: rest.jsonl orders-force-campus), although the
    # OpenAPI reference says it answers empty (behaviour.jsonl orders-force-empty).
    f"{API}/iserver/account/orders": (
        frozenset({"GET"}),
        _iserver(lambda sim, _: sim.truth.orders_body()),
    ),
    f"{API}/iserver/account/trades": (
        frozenset({"GET"}),
        _iserver(lambda sim, _: sim.truth.trades_body()),
    ),
    f"{API}/iserver/account/pnl/partitioned": (
        frozenset({"GET"}),
        _iserver(lambda sim, _: sim.truth.pnl_body()),
    ),
}


async def answer(sim: GatewaySimulator, request: Request, path: str) -> Response | None:
    """The answer to a gateway request, or None if ``path`` is not the gateway's."""
    if path == "/" and request.method == "GET":
        return Response(302, None, [("location", LOGIN_LOCATION)])
    if path != API and not path.startswith(API + "/"):
        return None
    endpoint = path[len(API) :] or "/"
    sim._count_rest(request.method, endpoint)
    if sim.rest_hang:
        # Read, never answered: the client's timeout is the only way out.
        await sim._wait_rest_released()
    if sim.replay is not None and endpoint != "/tickle" and endpoint in sim.replay.rest:
        status, body = sim.replay.rest[endpoint]
        return Response(status, body)
    route = _ROUTES.get(path)
    if route is None:
        return Response(404, {"error": "not found", "path": request.path})
    methods, handler = route
    if request.method not in methods:
        return Response(405, {"error": f"method {request.method} not allowed"})
    return await handler(sim, request)
