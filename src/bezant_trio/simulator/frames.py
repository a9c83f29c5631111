"""The simulated gateway's wire shapes: the frames and REST bodies it sends.

Pure functions, no I/O and no simulator state: every builder takes the values
that vary (sequence number, time, conid) as arguments, so the same inputs give
the same frame. Values are derived from the sequence number instead of a random
generator so that a failing test shows the same frame on every run.

Every shape follows an entry of the frame corpus (``simulator/corpus``), cited
next to the builder as ``corpus: <file> <id>``; where the corpus has only a
documented template (BookTrader) the values are illustrative.

This module mirrors the real gateway, not the daemon's classifier in
``bezant_trio.cpapi.frames``; it must not import from ``cpapi``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ACCOUNT",
    "DEFAULT_CONID",
    "DEFAULT_MD_FIELDS",
    "ECHO_TEXT",
    "MD_ALWAYS",
    "account_frame",
    "accounts_body",
    "auth_status_body",
    "auth_status_frame",
    "bars_channel",
    "bars_frame",
    "book_channel",
    "book_frame",
    "competing_frame",
    "heartbeat_frame",
    "ledger_channel",
    "ledger_frame",
    "ledger_unsubscribed_frame",
    "marketdata_channel",
    "marketdata_frame",
    "marketdata_values",
    "new_session_id",
    "now_ms",
    "order_frame",
    "pnl_frame",
    "quote_frame",
    "ready_status_frame",
    "ssodh_init_body",
    "summary_channel",
    "summary_frame",
    "summary_unsubscribed_frame",
    "system_ready_frame",
    "tic_frame",
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
#: Fields the gateway adds to every market-data frame, first and delta alike
#: (corpus: ws_marketdata.jsonl smd-first-captured, smd-delta-captured-*).
MD_ALWAYS = ("conid", "conidEx", "server_id", "6119", "_updated", "topic")
#: The gateway answers ``ech+hb`` with this raw text, not JSON
#: (corpus: ws_system.jsonl echo-raw-text).
ECHO_TEXT = "ech+hb"
_SERVER_INFO = {"serverName": "SimGw00001", "serverVersion": "Build 10.45.1a, simulator"}
_MAC = "AA:BB:CC:DD:EE:FF"


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds, the unit of every gateway timestamp."""
    return int(time.time() * 1000)


def new_session_id() -> str:
    """A fresh 32-hex-digit session id, the shape ``/tickle`` returns."""
    return secrets.token_hex(16)


def marketdata_channel(conid: int) -> str:
    """The simulator's sequence channel name for one conid's market data."""
    return f"marketdata:{conid}"


def bars_channel(conid: int) -> str:
    """The sequence channel of one conid's ``smh`` bars."""
    return f"bars:{conid}"


def book_channel(conid: int) -> str:
    """The sequence channel of one conid's ``sbd`` price ladder."""
    return f"book:{conid}"


def summary_channel(account: str) -> str:
    """The sequence channel of one account's ``ssd`` summary."""
    return f"account_summary:{account}"


def ledger_channel(account: str) -> str:
    """The sequence channel of one account's ``sld`` ledger."""
    return f"ledger:{account}"


# --------------------------------------------------------------------------- REST


def auth_status_body(
    *, authenticated: bool, competing: bool = False, connected: bool = True
) -> dict[str, Any]:
    """``/iserver/auth/status``, also tickle's ``iserver.authStatus``.

    corpus: rest.jsonl auth-status-captured (up) and auth-status-down-captured
    (a brokerage session that is down answers 200 with every flag false).
    """
    if not authenticated and not competing and not connected:
        return {
            "authenticated": False,
            "established": False,
            "competing": False,
            "connected": False,
            "MAC": None,
        }
    return {
        "authenticated": authenticated,
        "established": authenticated,
        "competing": competing,
        "connected": connected,
        "message": "",
        "MAC": _MAC,
        "serverInfo": dict(_SERVER_INFO),
        "hardware_info": f"00000000|{_MAC}",
        "fail": "",
    }


def tickle_body(session: str, auth_status: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The 200 body of ``POST /tickle`` (corpus: rest.jsonl tickle-captured)."""
    status = dict(auth_status) if auth_status is not None else auth_status_body(authenticated=True)
    status.pop("fail", None)  # tickle's copy has no "fail" (tickle-captured)
    return {
        "session": session,
        "ssoExpires": 460311,
        # The gateway really spells it this way.
        "collission": False,
        "userId": 123456789,
        "hmds": {"error": "no bridge"},
        "iserver": {"authStatus": status},
    }


def ssodh_init_body(*, authenticated: bool, competing: bool) -> dict[str, Any]:
    """``POST /iserver/auth/ssodh/init`` (corpus: rest.jsonl ssodh-init-openapi)."""
    body = auth_status_body(authenticated=authenticated, competing=competing)
    body.pop("fail", None)
    body.pop("hardware_info", None)
    return body


def accounts_body(session: str) -> dict[str, Any]:
    """``GET /iserver/accounts``: the same object as the ``act`` frame's args.

    corpus: rest.jsonl accounts-captured, ws_system.jsonl act-captured.
    """
    return {
        "accounts": [ACCOUNT],
        "acctProps": {
            ACCOUNT: {
                "hasChildAccounts": False,
                "supportsCashQty": True,
                "liteUnderPro": False,
                "noFXConv": False,
                "isProp": False,
                "supportsFractions": True,
                "allowCustomerTime": False,
                "autoFx": False,
            }
        },
        "aliases": {ACCOUNT: ACCOUNT},
        "allowFeatures": {"allowedAssetTypes": "STK,OPT,FUT,CASH", "snapshotRefreshTimeout": 30},
        "chartPeriods": {"STK": ["*"]},
        "groups": [],
        "profiles": [],
        "selectedAccount": ACCOUNT,
        "serverInfo": dict(_SERVER_INFO),
        "sessionId": session[:8] + "." + session[8:16],
        "isFT": False,
        # DU accounts are paper accounts.
        "isPaper": True,
    }


# --------------------------------------------------------------- control frames


def waiting_for_session_frame() -> dict[str, Any]:
    """Sent when a socket opened without a valid ``api`` session cookie.

    corpus: ws_system.jsonl waiting-for-session.
    """
    return {"message": "waiting for session"}


def system_ready_frame() -> dict[str, Any]:
    """The greeting after which subscribes are honoured (the "ready" frame).

    corpus: ws_system.jsonl system-greeting-captured.
    """
    return {"topic": "system", "success": USER, "isFT": False, "isPaper": True}


def account_frame(session: str) -> dict[str, Any]:
    """The ``act`` frame that follows the greeting (corpus: ws_system.jsonl act-captured)."""
    return {"topic": "act", "args": accounts_body(session)}


def ready_status_frame(*, authenticated: bool, competing: bool = False) -> dict[str, Any]:
    """The ``sts`` frame that follows ``act`` (corpus: ws_system.jsonl sts-full-captured)."""
    return {
        "topic": "sts",
        "args": {
            "connected": True,
            "authenticated": authenticated,
            "established": authenticated,
            "competing": competing,
            "message": "",
            "fail": "",
            **_SERVER_INFO,
            "username": USER,
        },
    }


def auth_status_frame(*, authenticated: bool) -> dict[str, Any]:
    """A split ``sts`` frame; ``authenticated: false`` is the gateway's auth flap.

    corpus: ws_system.jsonl sts-authenticated-false, sts-authenticated-doc.
    """
    return {"topic": "sts", "args": {"authenticated": authenticated}}


def competing_frame() -> dict[str, Any]:
    """``sts`` when another login takes the session (corpus: sts-competing-lost)."""
    return {"topic": "sts", "args": {"authenticated": False, "competing": True, "fail": ""}}


def heartbeat_frame(now: int) -> dict[str, Any]:
    """The periodic ``system`` heartbeat (corpus: ws_system.jsonl system-heartbeat-captured)."""
    return {"topic": "system", "hb": now}


def tic_frame(session: str, now: int) -> dict[str, Any]:
    """The answer to a client ``tic`` (corpus: ws_system.jsonl tic-answer-captured)."""
    return {"topic": "tic", "alive": True, "id": session, "lastAccessed": now}


def unsubscribed_frame(server_id: str) -> dict[str, Any]:
    """The answer to ``umh+<serverId>`` (corpus: ws_system.jsonl unsubscribed-server-id)."""
    return {"message": f"Unsubscribed {server_id}"}


def summary_unsubscribed_frame() -> dict[str, Any]:
    """The answer to ``usd`` (corpus: ws_system.jsonl unsubscribed-from-summary)."""
    return {"result": "unsubscribed from summary"}


def ledger_unsubscribed_frame() -> dict[str, Any]:
    """The answer to ``uld`` (corpus: ws_system.jsonl unsubscribed-from-ledger)."""
    return {"result": "unsubscribed from ledger"}


# ---------------------------------------------------------------- stream frames

_BASE_ORDER_ID = 352055828
_ORDER_STEPS = 3


def _order_record(order_id: int, now: int, seq: int) -> dict[str, Any]:
    # corpus: ws_account.jsonl sor-full-doc, sor-full-captured (a new order's
    # first frame carries the whole record).
    return {
        "acct": ACCOUNT,
        "conidex": str(DEFAULT_CONID),
        "conid": DEFAULT_CONID,
        "account": ACCOUNT,
        "orderId": order_id,
        "cashCcy": "USD",
        "sizeAndFills": "0/100",
        "orderDesc": "Buy 100 AAPL Limit 190.00, Day",
        "description1": "AAPL",
        "ticker": "AAPL",
        "secType": "STK",
        "listingExchange": "NASDAQ.NMS",
        "remainingQuantity": 100.0,
        "filledQuantity": 0.0,
        "totalSize": 100.0,
        "companyName": "APPLE INC",
        "status": "PreSubmitted",
        "order_ccp_status": "PreSubmitted",
        "origOrderType": "LIMIT",
        "supportsTaxOpt": "1",
        "lastExecutionTime": time.strftime("%y%m%d%H%M%S", time.gmtime(now / 1000)),
        "orderType": "Limit",
        "bgColor": "#FFFFFF",
        "fgColor": "#0000CC",
        "price": "190.00",
        "timeInForce": "CLOSE",
        "lastExecutionTime_r": now // 1000 * 1000,
        "side": "BUY",
        "seq": seq,
    }


def order_frame(seq: int, now: int) -> dict[str, Any]:
    """One ``sor`` frame carrying one order; ``seq`` sits inside the order dict.

    Each order id takes three frames: the full record (PreSubmitted), then
    updates carrying only ``acct``, ``orderId`` and what changed: Submitted,
    then Filled (corpus: ws_account.jsonl sor-status-changes-doc,
    sor-partial-fills-doc, behaviour.jsonl sor-full-then-deltas).
    """
    order_index, step = divmod(seq - 1, _ORDER_STEPS)
    order_id = _BASE_ORDER_ID + order_index
    if step == 0:
        item = _order_record(order_id, now, seq)
    elif step == 1:
        item = {
            "acct": ACCOUNT,
            "orderId": order_id,
            "status": "Submitted",
            "order_ccp_status": "Submitted",
            "bgColor": "#000000",
            "fgColor": "#00F000",
            "seq": seq,
        }
    else:
        item = {
            "acct": ACCOUNT,
            "orderId": order_id,
            "sizeAndFills": "100",
            "orderDesc": "Bought 100 AAPL Limit 190.00, Day",
            "remainingQuantity": 0.0,
            "filledQuantity": 100.0,
            "avgPrice": "190.00",
            "status": "Filled",
            "order_ccp_status": "Filled",
            "bgColor": "#FFFFFF",
            "fgColor": "#000000",
            "seq": seq,
        }
    return {"topic": "sor", "args": [item]}


def pnl_frame(seq: int) -> dict[str, Any]:
    """One ``spl`` frame; ``seq`` sits inside the account's PnL row.

    corpus: ws_account.jsonl spl-captured (rowType, dpl, nl, upl, el, uel, mv).
    """
    drift = (seq % 200) - 100
    return {
        "topic": "spl",
        "args": {
            f"{ACCOUNT}.Core": {
                "rowType": 1,
                "dpl": round(-57.5 + drift * 0.25, 2),
                "nl": 100000.0,
                "upl": round(972.1 + drift * 0.5, 2),
                "el": 99000.0,
                "uel": 98950.0,
                "mv": 19000.0,
                "seq": seq,
            }
        },
    }


def trade_frame(seq: int, now: int) -> dict[str, Any]:
    """One ``str`` frame carrying one execution; ``seq`` sits inside the trade dict.

    corpus: ws_account.jsonl str-execution-commission-captured, str-doc.
    """
    price = f"{190 + (seq % 100) / 100:.2f}"
    return {
        "topic": "str",
        "args": [
            {
                "execution_id": f"0000e0d5.{seq:08x}.01.01",
                "symbol": "AAPL",
                "supports_tax_opt": "1",
                "side": "B",
                "order_description": f"Bot 100 @ {price} on ISLAND",
                "trade_time": time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(now / 1000)),
                "trade_time_r": now,
                "size": 100.0,
                "price": price,
                "exchange": "ISLAND",
                "commission": "1.0",
                "net_amount": round(100 * float(price), 2),
                "account": ACCOUNT,
                "accountCode": ACCOUNT,
                "account_allocation_name": ACCOUNT,
                "company_name": "APPLE INC",
                "contract_description_1": "AAPL",
                "sec_type": "STK",
                "listing_exchange": "NASDAQ.NMS",
                "conid": DEFAULT_CONID,
                "conidEx": str(DEFAULT_CONID),
                "clearing_id": "IB",
                "clearing_name": "IB",
                "liquidation_trade": "0",
                "is_event_trading": "0",
                "order_id": _BASE_ORDER_ID + seq,
                "seq": seq,
            }
        ],
    }


# Market-data field values. Each field changes on its own cadence (in seqs),
# so a delta frame carries a different subset each time, as real deltas do
# (corpus: ws_marketdata.jsonl smd-delta-captured-*). 6509 (availability) and
# the day's open/high/low never change.
_FIELD_PERIODS = {"31": 1, "84": 2, "86": 3, "85": 5, "88": 5, "87": 4, "83": 7}
_STATIC_FIELDS = {
    "6509": "RpB",
    "55": "AAPL",
    "7295": "380.00",
    "70": "384.10",
    "71": "379.55",
}


def marketdata_values(seq: int) -> dict[str, Any]:
    """Every simulated field's value at ``seq`` (fields not listed read "0")."""

    # Built once per frame, not per field: burst mode encodes millions of these.
    def step(field: str) -> int:
        return seq // _FIELD_PERIODS[field]

    bid = 382.80 + step("84") % 100 / 100
    return {
        "31": f"{382.89 + step('31') % 100 / 100:.2f}",  # last
        "84": f"{bid:.2f}",  # bid
        # ask: the bid plus a spread of its own cadence, so it is never below the bid
        "86": f"{bid + 0.01 + step('86') % 5 / 100:.2f}",
        "85": str(100 + step("85") % 10 * 100),  # ask size
        "88": str(200 + step("88") % 10 * 100),  # bid size
        "87": f"{1 + step('87') % 90 / 10:.1f}M",  # volume
        "83": round(step("83") % 50 / 100, 2),  # change %, a number as the gateway sends it
        **_STATIC_FIELDS,
    }


def quote_frame(
    conid: int, seq: int, now: int, *, server_id: str, values: Mapping[str, Any]
) -> dict[str, Any]:
    """One ``smd+<conid>`` frame carrying ``values`` and the fields every frame has.

    The first frame of a subscription carries every subscribed field (plus
    6509); later ones only what changed (corpus: behaviour.jsonl
    smd-deltas-only-changed). ``seq`` is a top-level key.
    """
    frame: dict[str, Any] = dict(values)
    frame["conidEx"] = str(conid)
    frame["conid"] = conid
    frame["_updated"] = now
    frame["6119"] = server_id
    frame["server_id"] = server_id
    frame["topic"] = f"smd+{conid}"
    frame["seq"] = seq
    return frame


def marketdata_frame(
    conid: int, seq: int, now: int, *, server_id: str, fields: Sequence[str]
) -> dict[str, Any]:
    """A full ``smd+<conid>`` frame (every field in ``fields``): a first frame.

    About 200 bytes with the default fields; the benchmarks build their
    stamped frames with it.
    """
    values = marketdata_values(seq)
    chosen = {field: values.get(field, "0") for field in fields}
    chosen.setdefault("6509", values["6509"])
    return quote_frame(conid, seq, now, server_id=server_id, values=chosen)


def summary_frame(account: str, seq: int, now: int, *, first: bool) -> dict[str, Any]:
    """One ``ssd+<account>`` frame: rows under ``result``, the account only in the topic.

    The first frame carries every key; later ones the keys whose value
    changed. corpus: ws_account.jsonl ssd-captured, ssd-nonmonetary-row (the
    cadence of updates is not documented: source thin).
    """
    ts = now // 1000
    rows = [
        {
            "key": "ExcessLiquidity-S",
            "currency": "USD",
            "monetaryValue": round(98000 + (seq % 100) * 12.5, 2),
            "severity": 0,
            "timestamp": ts,
        }
    ]
    if first or seq % 5 == 0:
        rows.append(
            {
                "key": "AccruedCash-S",
                "currency": "USD",
                "monetaryValue": round(12.5 + (seq // 5 % 20) * 0.01, 2),
                "severity": 0,
                "timestamp": ts,
            }
        )
    if first:
        rows.append({"key": "Cushion", "value": "1", "severity": 0, "timestamp": ts})
    return {"result": rows, "topic": f"ssd+{account}", "seq": seq}


def ledger_frame(account: str, seq: int, now: int) -> dict[str, Any]:
    """One ``sld+<account>`` frame: one entry per currency, "blank" when unchanged.

    corpus: ws_account.jsonl sld-captured, sld-blank-currencies-campus (a
    currency with no change carries only ``key`` and ``timestamp``).
    """
    ts = now // 1000
    cash = round(976920.88 + (seq % 100) * 1.5, 2)
    result: list[dict[str, Any]] = [
        {
            "acctCode": account,
            "cashbalance": cash,
            "key": "LedgerListBASE",
            "exchangeRate": 1.0,
            "netLiquidationValue": round(cash + 40432.28, 2),
            "unrealizedPnl": round(4598.91 + (seq % 7) * 0.5, 2),
            "secondKey": "BASE",
            "settledCash": cash,
            "severity": 0,
            "stockMarketValue": 37910.67,
            "timestamp": ts,
        }
    ]
    if seq % 2 == 1:
        result.append(
            {
                "acctCode": account,
                "cashbalance": cash,
                "key": "LedgerListUSD",
                "exchangeRate": 1.0,
                "secondKey": "USD",
                "settledCash": cash,
                "severity": 0,
                "timestamp": ts,
            }
        )
    else:
        result.append({"key": "LedgerListUSD", "timestamp": ts})
    result.append({"key": "LedgerListEUR", "timestamp": ts})
    return {"result": result, "topic": f"sld+{account}", "seq": seq}


def bars_frame(
    conid: int, seq: int, now: int, *, server_id: str, bars: int, bar_seconds: int = 300
) -> dict[str, Any]:
    """One ``smh+<conid>`` answer: ``bars`` OHLCV bars ending now.

    corpus: ws_marketdata.jsonl smh-doc (fields) and smh-bars-openapi-shape
    (bars as o/c/h/l/v/t). The gateway answers once (behaviour.jsonl
    smh-answers-once); later frames of the simulator carry the newest bar.
    """
    end = now // (bar_seconds * 1000) * bar_seconds * 1000
    data = []
    for index in range(bars):
        base = 382.0 + ((seq + index) % 50) / 10
        data.append(
            {
                "o": round(base, 2),
                "c": round(base + 0.12, 2),
                "h": round(base + 0.3, 2),
                "l": round(base - 0.2, 2),
                "v": float(1000 + (seq + index) % 17 * 100),
                "t": end - (bars - 1 - index) * bar_seconds * 1000,
            }
        )
    # "high"/"low": price x priceFactor, then two more numbers, as documented
    # ("12586/14469/65"; their meaning is not).
    high = max(range(bars), key=lambda i: data[i]["h"])
    low = min(range(bars), key=lambda i: data[i]["l"])
    return {
        "serverId": server_id,
        "symbol": "AAPL",
        "text": "APPLE INC",
        "priceFactor": 100,
        "high": f"{round(data[high]['h'] * 100)}/{int(data[high]['v'])}/{high}",
        "low": f"{round(data[low]['l'] * 100)}/{int(data[low]['v'])}/{low}",
        "startTime": time.strftime(
            "%Y%m%d-%H:%M:%S", time.gmtime((end - (bars - 1) * bar_seconds * 1000) / 1000)
        ),
        "timePeriod": f"{bars * bar_seconds}s",
        "barLength": bar_seconds,
        "mdAvailability": "S",
        "mktDataDelay": 0,
        "outsideRth": False,
        "volumeFactor": 1,
        "priceDisplayRule": 1,
        "priceDisplayValue": "2",
        "negativeCapable": False,
        "messageVersion": 2,
        "data": data,
        "points": len(data),
        "topic": f"smh+{conid}",
        "seq": seq,
    }


def book_frame(account: str, conid: int, seq: int) -> dict[str, Any]:
    """One ``sbd+<account>+<conid>`` price ladder.

    corpus: ws_marketdata.jsonl sbd-ladder-campus (a documented template; the
    numbers are illustrative).
    """
    mid = 271.70 + (seq % 20) / 100
    rows: list[dict[str, Any]] = [{"row": 0, "focus": 0, "price": f"{mid + 0.04:.2f}"}]
    rows.append({"row": 1, "focus": 1, "price": f"{100 + seq % 5 * 100} @ {mid:.2f}"})
    for index in range(2):
        rows.append(
            {
                "row": 2 + index * 2,
                "focus": 0,
                "price": f"{mid - 0.01 * (index + 1):.2f}",
                "bid": str(300 + (seq + index) % 4 * 100),
            }
        )
        rows.append(
            {
                "row": 3 + index * 2,
                "focus": 0,
                "price": f"{mid + 0.01 * (index + 1):.2f}",
                "ask": str(200 + (seq + index) % 3 * 100),
            }
        )
    return {"topic": f"sbd+{account}+{conid}", "data": rows, "seq": seq}
