"""The simulated gateway's wire shapes: frames it emits and commands it parses.

Pure functions, no I/O and no simulator state: every builder takes the values
that vary (sequence number, time, conid) as arguments, so the same inputs give
the same frame. Values are derived from the sequence number instead of a random
generator so that a failing test shows the same frame on every run.

This module mirrors the real gateway, not the daemon's classifier in
``bezant_trio.cpapi.frames``; it must not import from ``cpapi``.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "ACCOUNT",
    "ACCOUNT_CHANNELS",
    "DEFAULT_CONID",
    "DEFAULT_MD_FIELDS",
    "Command",
    "account_frame",
    "auth_status_body",
    "auth_status_frame",
    "heartbeat_frame",
    "marketdata_channel",
    "marketdata_frame",
    "new_session_id",
    "now_ms",
    "order_frame",
    "parse_command",
    "parse_session_cookie",
    "pnl_frame",
    "system_ready_frame",
    "tickle_body",
    "trade_frame",
    "unsubscribed_frame",
    "waiting_for_session_frame",
]

ACCOUNT = "DU1234"
USER = "simuser"
DEFAULT_CONID = 265598
#: last, bid, ask, ask size, bid size, volume: what the daemon subscribes by default.
DEFAULT_MD_FIELDS: tuple[str, ...] = ("31", "84", "86", "85", "88", "87")

#: Account-wide channels and the three-letter verbs that (un)subscribe them.
ACCOUNT_CHANNELS: dict[str, tuple[str, str]] = {
    "orders": ("sor", "uor"),
    "pnl": ("spl", "upl"),
    "trades": ("str", "utr"),
}
_VERB_TO_CHANNEL: dict[str, tuple[str, bool]] = {
    verb: (channel, verb == verbs[0])
    for channel, verbs in ACCOUNT_CHANNELS.items()
    for verb in verbs
}


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds, the unit of every gateway timestamp."""
    return int(time.time() * 1000)


def new_session_id() -> str:
    """A fresh 32-hex-digit session id, the shape ``/tickle`` returns."""
    return secrets.token_hex(16)


def marketdata_channel(conid: int) -> str:
    """The simulator's sequence channel name for one conid's market data."""
    return f"marketdata:{conid}"


# --------------------------------------------------------------------------- REST


def auth_status_body(*, authenticated: bool) -> dict[str, Any]:
    """The ``authStatus`` object of ``/iserver/auth/status`` and ``/tickle``."""
    return {
        "authenticated": authenticated,
        "competing": False,
        "connected": True,
        "message": "",
        "MAC": "00:00:00:00:00:00",
        "serverInfo": {"serverName": "sim", "serverVersion": "sim"},
    }


def tickle_body(session: str) -> dict[str, Any]:
    """The 200 body of ``POST /tickle`` while the brokerage session is up."""
    return {
        "session": session,
        "ssoExpires": 0,
        # The gateway really spells it this way.
        "collission": False,
        "userId": 1,
        "hmds": {"error": "no bridge"},
        "iserver": {"authStatus": auth_status_body(authenticated=True)},
    }


# --------------------------------------------------------------- control frames


def waiting_for_session_frame() -> dict[str, Any]:
    """Sent when a socket opened without a valid ``api`` session cookie."""
    return {"message": "waiting for session"}


def system_ready_frame() -> dict[str, Any]:
    """The frame after which subscribes are honoured (the "ready" frame)."""
    return {"topic": "system", "success": USER, "isFT": False, "isPaper": True}


def account_frame() -> dict[str, Any]:
    """The ``act`` frame that follows the ready frame."""
    return {"topic": "act", "args": {"accounts": [ACCOUNT], "selectedAccount": ACCOUNT}}


def auth_status_frame(*, authenticated: bool) -> dict[str, Any]:
    """An ``sts`` frame; ``authenticated: false`` is the gateway's auth flap."""
    return {"topic": "sts", "args": {"authenticated": authenticated}}


def heartbeat_frame(now_ms: int) -> dict[str, Any]:
    """The periodic ``system`` heartbeat."""
    return {"topic": "system", "hb": now_ms}


def unsubscribed_frame(server_id: str) -> dict[str, Any]:
    """The gateway's reply to ``umd+<conid>+{}``."""
    return {"message": f"Unsubscribed {server_id}"}


# ---------------------------------------------------------------- stream frames

_ORDER_STATUSES = ("PreSubmitted", "Submitted", "Filled")
_BASE_ORDER_ID = 352055828


def order_frame(seq: int, now_ms: int) -> dict[str, Any]:
    """One ``sor`` frame carrying one order; ``seq`` sits inside the order dict.

    Orders cycle PreSubmitted → Submitted → Filled, three frames per order id,
    so a consumer sees the same order move through its lifecycle.
    """
    order_index, step = divmod(seq - 1, len(_ORDER_STATUSES))
    status = _ORDER_STATUSES[step]
    filled = 100 if status == "Filled" else 0
    return {
        "topic": "sor",
        "args": [
            {
                "acct": ACCOUNT,
                "orderId": _BASE_ORDER_ID + order_index,
                "conid": DEFAULT_CONID,
                "conidex": str(DEFAULT_CONID),
                "ticker": "AAPL",
                "secType": "STK",
                "side": "BUY",
                "orderType": "LMT",
                "price": "190.00",
                "timeInForce": "DAY",
                "status": status,
                "totalSize": 100,
                "filledQuantity": filled,
                "remainingQuantity": 100 - filled,
                "lastExecutionTime_r": now_ms,
                "seq": seq,
            }
        ],
    }


def pnl_frame(seq: int) -> dict[str, Any]:
    """One ``spl`` frame; ``seq`` sits inside the account's PnL row."""
    drift = (seq % 200) - 100
    return {
        "topic": "spl",
        "args": {
            f"{ACCOUNT}.Core": {
                "rowType": 1,
                "dpl": round(-57.5 + drift * 0.25, 2),
                "nl": 100000,
                "upl": round(972.1 + drift * 0.5, 2),
                "el": 0,
                "mv": 0,
                "seq": seq,
            }
        },
    }


def trade_frame(seq: int, now_ms: int) -> dict[str, Any]:
    """One ``str`` frame carrying one execution; ``seq`` sits inside the trade dict."""
    price = f"{190 + (seq % 100) / 100:.2f}"
    return {
        "topic": "str",
        "args": [
            {
                "execution_id": f"0000e0d5.{seq:08x}.01.01",
                "symbol": "AAPL",
                "side": "B",
                "order_description": f"Bot 100 @ {price} on ISLAND",
                "trade_time_r": now_ms,
                "size": "100",
                "price": price,
                "exchange": "ISLAND",
                "commission": "1.00",
                "account": ACCOUNT,
                "conid": DEFAULT_CONID,
                "sec_type": "STK",
                "seq": seq,
            }
        ],
    }


# Fields with fixed values; price and size fields below vary with the seq.
_STATIC_FIELDS = {"87": "1.2M", "55": "AAPL", "7295": "380.00", "70": "384.10", "71": "379.55"}


def _field_values(seq: int) -> dict[str, str]:
    # Built once per frame, not per field: burst mode encodes millions of these.
    tick = (seq % 100) / 100
    size_step = seq % 10 * 100
    return {
        "31": f"{382.89 + tick:.2f}",  # last
        "84": f"{382.80 + tick:.2f}",  # bid
        "86": f"{382.95 + tick:.2f}",  # ask
        "85": str(100 + size_step),  # ask size
        "88": str(200 + size_step),  # bid size
        **_STATIC_FIELDS,
    }


def marketdata_frame(
    conid: int, seq: int, now_ms: int, *, server_id: str, fields: Sequence[str]
) -> dict[str, Any]:
    """One ``smd+<conid>`` frame (about 150 bytes); ``seq`` is a top-level key."""
    values = _field_values(seq)
    frame: dict[str, Any] = {"topic": f"smd+{conid}"}
    for field in fields:
        frame[field] = values.get(field, "0")
    frame["conid"] = conid
    frame["_updated"] = now_ms
    frame["server_id"] = server_id
    frame["seq"] = seq
    return frame


# --------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed client text frame.

    ``kind`` is ``subscribe``, ``unsubscribe``, ``session``, ``echo``, ``tic``
    or ``unknown``; ``channel`` is ``orders``/``pnl``/``trades``/``marketdata``
    for (un)subscribes; ``fields`` is only set for ``smd``.
    """

    kind: str
    channel: str | None = None
    conid: int | None = None
    fields: tuple[str, ...] | None = None
    session: str | None = None
    error: str | None = None

    @property
    def is_subscription(self) -> bool:
        """True for the commands the gateway drops before its ready frame."""
        return self.kind in ("subscribe", "unsubscribe")


def _parse_marketdata(text: str, subscribe: bool) -> Command:
    kind = "subscribe" if subscribe else "unsubscribe"
    _, _, rest = text.partition("+")
    conid_text, _, args_text = rest.partition("+")
    try:
        conid = int(conid_text)
    except ValueError:
        return Command("unknown", error=f"bad conid {conid_text!r}")
    fields: tuple[str, ...] | None = None
    if subscribe:
        try:
            args = orjson.loads(args_text or "{}")
        except orjson.JSONDecodeError:
            return Command("unknown", error="smd arguments are not JSON")
        raw_fields = args.get("fields") if isinstance(args, dict) else None
        if isinstance(raw_fields, list) and raw_fields:
            fields = tuple(str(field) for field in raw_fields)
        else:
            fields = DEFAULT_MD_FIELDS
    return Command(kind, channel="marketdata", conid=conid, fields=fields)


def parse_command(text: str) -> Command:
    """Parse one client text frame the way the gateway reads it."""
    text = text.strip()
    if text.startswith("{"):
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            return Command("unknown", error="not JSON")
        if isinstance(body, dict) and isinstance(body.get("session"), str):
            return Command("session", session=body["session"])
        return Command("unknown", error="JSON without a session")
    if text == "tic":
        return Command("tic")
    if text.startswith("ech+"):
        return Command("echo")
    verb = text[:3]
    if text[3:4] == "+":
        if verb in _VERB_TO_CHANNEL:
            channel, subscribe = _VERB_TO_CHANNEL[verb]
            return Command("subscribe" if subscribe else "unsubscribe", channel=channel)
        if verb in ("smd", "umd"):
            return _parse_marketdata(text, subscribe=verb == "smd")
    return Command("unknown", error="unknown verb")


def parse_session_cookie(cookie_header: str) -> str | None:
    """The session id from a ``Cookie`` header's ``api`` cookie, or None.

    Clients send ``api={"session":"..."}`` either URL-encoded or as raw JSON;
    both are accepted. A bare id is not: the real gateway wants the JSON object,
    and accepting less here would hide a client bug until it met a real gateway.
    """
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if not sep or name.strip() != "api":
            continue
        value = urllib.parse.unquote(value.strip())
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if isinstance(body, dict) and isinstance(body.get("session"), str):
            return body["session"]
        return None
    return None
