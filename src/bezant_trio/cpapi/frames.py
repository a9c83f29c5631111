"""Classify inbound gateway frames and build outbound commands.

Pure functions, no I/O: ``classify`` never raises, whatever bytes arrive, so a
bad frame only moves a counter and never ends the connection.

A :class:`Frame` says two things: what the frame *is* (``kind``: an event, a
heartbeat, the echo, the ready greeting, a lost session...) and where it is
*captured* (``topic``, or None). They are independent: the greeting is
``READY`` and captured under ``system``; ``sts`` with ``authenticated: false``
is ``AUTH_LOST`` and captured under ``sts``. The connector publishes every
frame that has a topic, then acts on its kind. Heartbeats (``system`` hb,
``{}``, the raw ``ech+hb`` echo, ``tic`` answers) never have a topic.

Every shape handled here is in the frame corpus
(``bezant_trio/simulator/corpus/*.jsonl``), with the source it comes from;
``tests/cpapi/test_corpus.py`` holds this module to it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bezant_trio.model import (
    SYSTEM_TOPIC,
    account_summary_topic,
    bars_topic,
    book_topic,
    ledger_topic,
    marketdata_topic,
)

__all__ = [
    "CHANNEL_COMMANDS",
    "ECHO_TEXT",
    "Frame",
    "FrameKind",
    "account_summary_subscribe",
    "account_summary_unsubscribe",
    "bars_subscribe",
    "bars_unsubscribe",
    "book_subscribe",
    "book_unsubscribe",
    "classify",
    "ledger_subscribe",
    "ledger_unsubscribe",
    "md_subscribe",
    "md_unsubscribe",
]


class FrameKind(enum.StrEnum):
    """What a frame is; also the key of the ``frames`` counters in ``_status``."""

    EVENT = "event"  # a data frame, captured under ``Frame.topic``
    HEARTBEAT = "heartbeat"  # system hb, ``{}``, tic answers: liveness only
    ECHO = "echo"  # the raw text ``ech+hb``: the answer to our ``ech+hb``, the drain barrier
    READY = "ready"  # system + success: subscriptions are accepted from now on
    SYSTEM = "system"  # other system and topicless frames (Unsubscribed, results)
    AUTH_LOST = "auth_lost"  # sts authenticated:false (also captured as ``sts``)
    COMPETING = "competing"  # sts competing:true: another login holds the session
    WAITING_SESSION = "waiting_session"  # the socket wants {"session": ...}
    ERROR = "error"  # {"error": ...}
    MALFORMED = "malformed"  # not JSON, or JSON that is not an object
    NON_UTF8 = "non_utf8"
    UNKNOWN = "unknown"  # an object with a topic we do not capture


#: The gateway answers ``ech+hb`` with this raw text, not JSON
#: (corpus: ws_system.jsonl ``echo-raw-text``).
ECHO_TEXT = "ech+hb"

#: Account-wide channels without a target: name -> (subscribe, unsubscribe) commands.
CHANNEL_COMMANDS: dict[str, tuple[str, str]] = {
    "orders": ("sor+{}", "uor+{}"),
    "pnl": ("spl+{}", "upl+{}"),
    "trades": ("str+{}", "utr+{}"),
}
_CHANNEL_TOPICS = {"sor": "orders", "spl": "pnl", "str": "trades"}
#: Topics captured under their own names when ``events.capture_other`` is on.
_OTHER_TOPICS = frozenset({"sts", "act", "ntf", "blt"})
#: Answers to our own pings: liveness, never events (corpus: ``tic-answer``).
_HEARTBEAT_TOPICS = frozenset({"tic", "ech"})
_SIMPLE_TOPIC = re.compile(r"^[a-z]{2,16}$")


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~0.5 us a frame
class Frame:
    kind: FrameKind
    #: The topic to capture under, or None (heartbeats, bad frames, uncaptured topics).
    topic: str | None = None
    #: The payload bytes to capture (the frame itself, as received).
    payload_json: bytes | None = None
    #: The decoded object (for the connector's own decisions).
    data: dict[str, Any] | None = None


# smd/smh/sbd topic -> captured topic, so a hot stream costs one dict hit
# instead of a parse and an f-string (also one shared topic string per conid).
_TOPIC_CACHE: dict[str, str] = {}
_TOPIC_CACHE_MAX = 10_000
_HEARTBEAT = Frame(FrameKind.HEARTBEAT)
_MALFORMED = Frame(FrameKind.MALFORMED)
_ECHO = Frame(FrameKind.ECHO)


def classify(raw: str | bytes, *, capture_other: bool = True, per_account: bool = False) -> Frame:
    """Classify one frame. Text and binary frames holding UTF-8 JSON are alike.

    ``per_account`` captures ``ssd+<acct>`` / ``sld+<acct>`` under
    ``account_summary:<acct>`` / ``ledger:<acct>`` (for a connector that
    subscribes several accounts) instead of ``account_summary`` / ``ledger``.
    """
    if isinstance(raw, bytes):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return Frame(FrameKind.NON_UTF8)
        payload_json = raw
    else:
        if raw == ECHO_TEXT:
            return _ECHO
        try:
            payload_json = raw.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates cannot come off a socket, but be total
            return Frame(FrameKind.NON_UTF8)
    if payload_json == b"ech+hb":
        return _ECHO
    try:
        data = orjson.loads(payload_json)
    except orjson.JSONDecodeError:
        return _MALFORMED
    if not isinstance(data, dict):
        return _MALFORMED
    if not data:
        return _HEARTBEAT  # a bare ``{}`` keepalive
    topic = data.get("topic")
    if not isinstance(topic, str):
        return _classify_topicless(data, payload_json)
    cached = _TOPIC_CACHE.get(topic)
    if cached is not None:
        return Frame(FrameKind.EVENT, cached, payload_json, data)
    channel = _CHANNEL_TOPICS.get(topic)
    if channel is not None:
        return Frame(FrameKind.EVENT, channel, payload_json, data)
    head = topic[:4]
    if head in _TARGETED:
        name = _TARGETED[head](topic, data, per_account)
        if name is None:
            return Frame(FrameKind.UNKNOWN, data=data)
        return Frame(FrameKind.EVENT, name, payload_json, data)
    if topic == "system":
        if "hb" in data:
            return Frame(FrameKind.HEARTBEAT, data=data)
        if "success" in data:
            return Frame(FrameKind.READY, SYSTEM_TOPIC, payload_json, data)
        return Frame(FrameKind.SYSTEM, SYSTEM_TOPIC, payload_json, data)
    if topic in _HEARTBEAT_TOPICS:
        # A JSON ``ech`` answer is not what the gateway sends (it echoes raw
        # text), but one would still be the answer to our barrier.
        return _ECHO if topic == "ech" else Frame(FrameKind.HEARTBEAT, data=data)
    if topic == "sts":
        return _classify_sts(data, payload_json, capture_other)
    if capture_other and (topic in _OTHER_TOPICS or _SIMPLE_TOPIC.match(topic)):
        return Frame(FrameKind.EVENT, topic, payload_json, data)
    return Frame(FrameKind.UNKNOWN, data=data)


def _classify_sts(data: dict[str, Any], payload_json: bytes, capture_other: bool) -> Frame:
    # The gateway splits sts into several frames ({"authenticated":..},
    # {"competing":..}, {"message":""}) or sends them together (corpus:
    # ws_system.jsonl sts-*); a lost session outranks a competing one.
    topic = "sts" if capture_other else None
    args = data.get("args")
    if isinstance(args, dict):
        if args.get("authenticated") is False:
            return Frame(FrameKind.AUTH_LOST, topic, payload_json, data)
        if args.get("competing") is True:
            return Frame(FrameKind.COMPETING, topic, payload_json, data)
    if topic is None:
        return Frame(FrameKind.UNKNOWN, data=data)
    return Frame(FrameKind.EVENT, topic, payload_json, data)


def _classify_topicless(data: dict[str, Any], payload_json: bytes) -> Frame:
    # Topicless frames are captured under ``system`` so a consumer sees them
    # in order with the rest; the kind still tells the connector what they mean.
    message = data.get("message")
    if isinstance(message, str) and "waiting for session" in message.lower():
        return Frame(FrameKind.WAITING_SESSION, SYSTEM_TOPIC, payload_json, data)
    if "error" in data:
        return Frame(FrameKind.ERROR, SYSTEM_TOPIC, payload_json, data)
    if message is not None or "result" in data:
        return Frame(FrameKind.SYSTEM, SYSTEM_TOPIC, payload_json, data)
    return Frame(FrameKind.UNKNOWN, data=data)


def _digits(text: str) -> int | None:
    """A positive conid written as digits, else None."""
    if text.isascii() and text.isdigit() and 0 < len(text) <= 18 and int(text) > 0:
        return int(text)
    return None


def _remember(topic: str, name: str) -> str:
    if len(_TOPIC_CACHE) < _TOPIC_CACHE_MAX:
        _TOPIC_CACHE[topic] = name
    return name


def _conid_topic(topic: str, data: dict[str, Any], build: Any) -> str | None:
    # smd+<conid> and smh+<conid>: the conid is in the topic; a topic with
    # an exchange suffix (conid@EXCHANGE) still carries "conid" in the body.
    key = topic[4:]
    conid = _digits(key)
    if conid is not None:
        return _remember(topic, build(conid))
    body = data.get("conid")
    if isinstance(body, int) and not isinstance(body, bool):
        conid = body if 0 < body < 2**63 else None
    else:
        conid = _digits(body) if isinstance(body, str) else None
    return build(conid) if conid is not None else None


def _marketdata(topic: str, data: dict[str, Any], per_account: bool) -> str | None:
    return _conid_topic(topic, data, marketdata_topic)


def _bars(topic: str, data: dict[str, Any], per_account: bool) -> str | None:
    return _conid_topic(topic, data, bars_topic)


def _book(topic: str, data: dict[str, Any], per_account: bool) -> str | None:
    # sbd+<acctId>+<conid> (corpus: ws_marketdata.jsonl sbd-ladder).
    parts = topic.split("+")
    conid = _digits(parts[2]) if len(parts) >= 3 else None
    return _remember(topic, book_topic(conid)) if conid is not None else None


def _summary(topic: str, data: dict[str, Any], per_account: bool) -> str | None:
    return account_summary_topic(topic[4:] if per_account else None)


def _ledger(topic: str, data: dict[str, Any], per_account: bool) -> str | None:
    return ledger_topic(topic[4:] if per_account else None)


_TARGETED = {
    "smd+": _marketdata,
    "smh+": _bars,
    "sbd+": _book,
    "ssd+": _summary,
    "sld+": _ledger,
}


# ------------------------------------------------------------------ commands


def _args(mapping: Mapping[str, Any]) -> str:
    return orjson.dumps({k: v for k, v in mapping.items() if v is not None}).decode()


def md_subscribe(conid: int, fields: Iterable[str]) -> str:
    """``smd+<conid>+{"fields":[...]}``: top-of-book market data for ``conid``."""
    return f"smd+{conid}+" + orjson.dumps({"fields": list(fields)}).decode()


def md_unsubscribe(conid: int) -> str:
    """``umd+<conid>+{}``."""
    return f"umd+{conid}+{{}}"


def account_summary_subscribe(
    account: str, *, keys: Sequence[str] | None = None, fields: Sequence[str] | None = None
) -> str:
    """``ssd+<account>+{"keys":[...],"fields":[...]}``; no keys/fields: everything."""
    return f"ssd+{account}+" + _args(
        {"keys": list(keys) if keys else None, "fields": list(fields) if fields else None}
    )


def account_summary_unsubscribe(account: str) -> str:
    """``usd+<account>+{}``; answered once with ``{"result":"unsubscribed from summary"}``."""
    return f"usd+{account}+{{}}"


def ledger_subscribe(
    account: str, *, keys: Sequence[str] | None = None, fields: Sequence[str] | None = None
) -> str:
    """``sld+<account>+{"keys":["LedgerListBASE",...],"fields":[...]}``; none: everything."""
    return f"sld+{account}+" + _args(
        {"keys": list(keys) if keys else None, "fields": list(fields) if fields else None}
    )


def ledger_unsubscribe(account: str) -> str:
    """``uld+<account>+{}``; answered once with ``{"result":"unsubscribed from ledger"}``."""
    return f"uld+{account}+{{}}"


def bars_subscribe(
    conid: int,
    *,
    exchange: str | None = None,
    period: str | None = None,
    bar: str | None = None,
    outside_rth: bool | None = None,
    source: str | None = None,
    format: str | None = None,
) -> str:
    """``smh+<conid>+{"exchange","period","bar","outsideRth","source","format"}``.

    The gateway allows five of these at once; the answer carries the
    ``serverId`` that :func:`bars_unsubscribe` needs.
    """
    return f"smh+{conid}+" + _args(
        {
            "exchange": exchange,
            "period": period,
            "bar": bar,
            "outsideRth": outside_rth,
            "source": source,
            "format": format,
        }
    )


def bars_unsubscribe(server_id: str) -> str:
    """``umh+<serverId>`` (the id from the ``smh`` answer, not the conid)."""
    return f"umh+{server_id}"


def book_subscribe(account: str, conid: int, exchange: str | None = None) -> str:
    """``sbd+<account>+<conid>[+<exchange>]``: the BookTrader price ladder (needs L2 data)."""
    return f"sbd+{account}+{conid}" + (f"+{exchange}" if exchange else "")


def book_unsubscribe(account: str) -> str:
    """``ubd+<account>``: ends the account's price ladder stream."""
    return f"ubd+{account}"
