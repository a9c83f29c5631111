"""HTTP routes of the simulator: the ``/sim`` controls, and the dispatch to the gateway's REST.

``/v1/api/...`` answers like the real gateway (``rest.py``).
``/sim/...`` drives the same faults as the :class:`GatewaySimulator` methods,
for out-of-process users (the demo, benchmarks, subprocess tests). Control
requests take an optional JSON object body and answer JSON; bad input gets
``400 {"error": "..."}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from bezant_trio.simulator import frames, rest
from bezant_trio.simulator.errors import SimulatorTimeout
from bezant_trio.simulator.httpserver import Request, Response
from bezant_trio.simulator.streams import STREAM_CHANNELS

if TYPE_CHECKING:
    from bezant_trio.simulator.gateway import GatewaySimulator

__all__ = ["dispatch"]

logger = logging.getLogger(__name__)


class _BadRequest(Exception):
    """Raised by body helpers; becomes a 400."""


# --------------------------------------------------------------- body helpers


def _body(request: Request) -> dict[str, Any]:
    if not request.body.strip():
        return {}
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    return body


def _number(
    body: dict[str, Any], key: str, default: float | None, *, minimum: float = 0
) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _BadRequest(f"{key} must be a number")
    if value < minimum:
        raise _BadRequest(f"{key} must be >= {minimum}")
    return float(value)


def _int(body: dict[str, Any], key: str, default: int | None, *, minimum: int = 0) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRequest(f"{key} must be an integer")
    if value < minimum:
        raise _BadRequest(f"{key} must be >= {minimum}")
    return value


def _bool(body: dict[str, Any], key: str, default: bool | None) -> bool | None:
    value = body.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise _BadRequest(f"{key} must be true or false")
    return value


def _required_bool(body: dict[str, Any], key: str) -> bool:
    value = _bool(body, key, None)
    if value is None:
        raise _BadRequest(f"{key} is required (true or false)")
    return value


# ------------------------------------------------------------------ controls

_Control = Callable[["GatewaySimulator", dict[str, Any]], Awaitable[Response]]


async def _state(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    return Response(200, sim.state())


async def _wait(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    """Long-poll until every given condition holds (AND), or 408 after ``timeout``."""
    timeout = _number(body, "timeout", 10.0)
    connections = _int(body, "connections", None)
    ready = _int(body, "ready", None)
    tickles = _int(body, "tickles", None)
    subscribed = body.get("subscribed", [])
    if isinstance(subscribed, str):
        subscribed = [subscribed]
    if not isinstance(subscribed, list) or not all(isinstance(c, str) for c in subscribed):
        raise _BadRequest("subscribed must be a channel name or a list of them")
    written = body.get("written", {})
    if not isinstance(written, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in written.values()
    ):
        raise _BadRequest('written must map channel names to seqs, e.g. {"orders": 10}')
    rest_calls = body.get("rest_calls", {})
    if not isinstance(rest_calls, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in rest_calls.values()
    ):
        raise _BadRequest('rest_calls must map REST paths to counts, e.g. {"/tickle": 2}')

    def holds(s: GatewaySimulator) -> bool:
        return (
            (connections is None or len(s.connections) == connections)
            and (ready is None or len(s.ready_connections()) >= ready)
            and (tickles is None or s.tickle_count >= tickles)
            and all(any(c.wants(ch) for c in s.connections) for ch in subscribed)
            and all(seq in s.written(ch) for ch, seq in written.items())
            and all(s.rest_calls[path] >= n for path, n in rest_calls.items())
        )

    try:
        await sim.wait_for(holds, timeout=timeout)
    except SimulatorTimeout as exc:
        return Response(408, {"error": str(exc), "state": sim.state()})
    return Response(200, {"ok": True})


async def _inject(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    if "frame" not in body:
        raise _BadRequest('"frame" is required (a JSON value, or a string sent as-is)')
    frame = body["frame"]
    if not isinstance(frame, dict | list | str):
        raise _BadRequest('"frame" must be an object, an array or a string')
    binary = _bool(body, "binary", False)
    return Response(200, {"connections": await sim.inject(frame, binary=bool(binary))})


_CHANNEL_NAMES = {
    "marketdata": frames.marketdata_channel,
    "bars": frames.bars_channel,
    "book": frames.book_channel,
}


async def _emit(sim: GatewaySimulator, body: dict[str, Any], channel: str) -> Response:
    count = _int(body, "count", 1)
    conid = _int(body, "conid", frames.DEFAULT_CONID if channel in _CHANNEL_NAMES else None)
    account = body.get("account", frames.ACCOUNT)
    if not isinstance(account, str) or not account:
        raise _BadRequest("account must be a non-empty string")
    assert count is not None
    seqs = await sim.emit(channel, count, conid=conid, account=account)
    if channel in _CHANNEL_NAMES and conid:
        name = _CHANNEL_NAMES[channel](conid)
    elif channel == "account_summary":
        name = frames.summary_channel(account)
    elif channel == "ledger":
        name = frames.ledger_channel(account)
    else:
        name = channel
    return Response(
        200,
        {
            "channel": name,
            "sent": len(seqs),
            "first_seq": seqs[0] if seqs else None,
            "last_seq": seqs[-1] if seqs else None,
        },
    )


async def _burst(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    conid = _int(body, "conid", frames.DEFAULT_CONID)
    count = _int(body, "count", None, minimum=1)
    if count is None:
        raise _BadRequest("count is required")
    assert conid is not None
    result = await sim.burst_marketdata(conid, count)
    return Response(200, result.as_dict())


async def _drop(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    mode = body.get("mode", "abrupt")
    if mode not in ("abrupt", "close", "reset"):
        raise _BadRequest("mode must be abrupt, close or reset")
    code = _int(body, "code", 1001, minimum=1000)
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise _BadRequest("reason must be a string")
    assert code is not None
    return Response(200, {"dropped": await sim.drop_connections(mode, code=code, reason=reason)})


async def _stall(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    sim.stall(_number(body, "seconds", None))
    return Response(200, {"stalled": True})


async def _unstall(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    sim.unstall()
    return Response(200, {"stalled": False})


async def _malformed(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    return Response(200, {"connections": await sim.send_malformed()})


async def _binary(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise _BadRequest("text must be a string (sent UTF-8 encoded in a binary frame)")
    data = None if text is None else text.encode()
    return Response(200, {"connections": await sim.send_binary(data)})


async def _invalid_utf8(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    as_text = _bool(body, "as_text", False)
    return Response(200, {"connections": await sim.send_invalid_utf8(as_text=bool(as_text))})


async def _auth(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    sim.set_authenticated(_required_bool(body, "authenticated"))
    return Response(200, {"authenticated": sim.authenticated})


async def _sts(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    authenticated = _required_bool(body, "authenticated")
    return Response(200, {"connections": await sim.send_auth_status(authenticated=authenticated)})


async def _restart(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    down_for = _number(body, "down_for", 0.0)
    assert down_for is not None
    return Response(200, {"session": await sim.restart(down_for=down_for)})


async def _rest_hang(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    sim.hang_rest(bool(_bool(body, "hang", True)))
    return Response(200, {"rest_hang": sim.rest_hang})


async def _ws_silent(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    sim.silence_websocket(bool(_bool(body, "silent", True)))
    return Response(200, {"ws_silent": sim.ws_silent})


async def _session(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    told = await sim.set_session_down(bool(_bool(body, "down", True)))
    return Response(200, {"brokerage_up": sim.brokerage_up, "connections": told})


async def _competing(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    told = await sim.set_competing(bool(_bool(body, "competing", True)))
    return Response(200, {"competing": sim.competing, "connections": told})


async def _truth(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    truth = sim.truth
    return Response(
        200,
        {
            "orders": truth.orders_body()["orders"],
            "trades": truth.trades_body(),
            "pnl": truth.pnl_body()["upnl"],
            "quotes": {str(conid): quote for conid, quote in sorted(truth.quotes.items())},
        },
    )


async def _slow(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    delay = _number(body, "delay", None)
    if delay is None:
        raise _BadRequest("delay is required (seconds; 0 turns slow mode off)")
    sim.set_slow(delay)
    return Response(200, {"slow_delay": sim.slow_delay})


async def _stream(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    rates = body.get("rates")
    if not isinstance(rates, dict):
        raise _BadRequest('rates is required, e.g. {"orders": 5, "marketdata": 20}')
    try:
        sim.start_stream(rates)
    except (ValueError, TypeError) as exc:
        raise _BadRequest(str(exc)) from None
    return Response(200, sim.state()["stream"])


async def _stream_stop(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    sim.stop_stream()
    return Response(200, sim.state()["stream"])


async def _config(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
    known = {
        "heartbeat_interval",
        "ready_delay",
        "binary_frames",
        "send_timeout",
        "marketdata_expiry",
    }
    unknown = sorted(set(body) - known)
    if unknown:
        raise _BadRequest(f"unknown setting(s) {unknown}; known: {sorted(known)}")
    sim.configure(
        heartbeat_interval=_number(body, "heartbeat_interval", None),
        ready_delay=_number(body, "ready_delay", None),
        binary_frames=_bool(body, "binary_frames", None),
        send_timeout=_number(body, "send_timeout", None),
    )
    if "marketdata_expiry" in body:
        # null: the gateway never ends a market-data stream by itself.
        sim.marketdata_expiry = _number(body, "marketdata_expiry", None)
    state = sim.state()
    return Response(200, {key: state[key] for key in sorted(known)})


def _emit_route(channel: str) -> _Control:
    async def emit(sim: GatewaySimulator, body: dict[str, Any]) -> Response:
        return await _emit(sim, body, channel)

    return emit


_CONTROL_ROUTES: dict[tuple[str, str], _Control] = {
    ("GET", "/sim/state"): _state,
    ("POST", "/sim/wait"): _wait,
    ("POST", "/sim/inject"): _inject,
    ("POST", "/sim/burst"): _burst,
    ("POST", "/sim/drop"): _drop,
    ("POST", "/sim/stall"): _stall,
    ("POST", "/sim/unstall"): _unstall,
    ("POST", "/sim/malformed"): _malformed,
    ("POST", "/sim/binary"): _binary,
    ("POST", "/sim/invalid-utf8"): _invalid_utf8,
    ("POST", "/sim/auth"): _auth,
    ("POST", "/sim/sts"): _sts,
    ("POST", "/sim/restart"): _restart,
    ("POST", "/sim/slow"): _slow,
    ("POST", "/sim/rest/hang"): _rest_hang,
    ("POST", "/sim/ws/silent"): _ws_silent,
    ("POST", "/sim/session"): _session,
    ("POST", "/sim/competing"): _competing,
    ("GET", "/sim/truth"): _truth,
    ("POST", "/sim/stream"): _stream,
    ("POST", "/sim/stream/stop"): _stream_stop,
    ("DELETE", "/sim/stream"): _stream_stop,
    ("POST", "/sim/config"): _config,
    **{("POST", f"/sim/emit/{channel}"): _emit_route(channel) for channel in STREAM_CHANNELS},
}
_CONTROL_PATHS = {path for _, path in _CONTROL_ROUTES}


async def dispatch(sim: GatewaySimulator, request: Request) -> Response:
    """Route one plain HTTP request."""
    path = request.path.rstrip("/") or "/"
    gateway = await rest.answer(sim, request, path)
    if gateway is not None:
        return gateway
    control = _CONTROL_ROUTES.get((request.method, path))
    if control is not None:
        try:
            return await control(sim, _body(request))
        except _BadRequest as exc:
            return Response(400, {"error": str(exc)})
        except Exception as exc:
            # A control-route bug must not take down the gateway the demo or a
            # benchmark is running against; it is logged with its traceback and
            # reported to the caller, never silently dropped.
            logger.exception("simulator control %s %s failed", request.method, path)
            return Response(500, {"error": f"simulator bug: {exc!r}"})
    if path in _CONTROL_PATHS:
        return Response(405, {"error": f"method {request.method} not allowed"})
    return Response(404, {"error": "not found", "path": request.path})
