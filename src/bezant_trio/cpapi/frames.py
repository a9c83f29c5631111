"""Classify inbound gateway frames and build outbound commands.

Pure functions, no I/O: ``classify`` never raises, whatever bytes arrive, so a
bad frame only moves a counter and never ends the connection.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "CHANNEL_COMMANDS",
    "Frame",
    "FrameKind",
    "classify",
    "md_subscribe",
    "md_unsubscribe",
]


class FrameKind(enum.StrEnum):
    """What a frame is; also the key of the ``frames`` counters in ``_status``."""

    EVENT = "event"  # captured under ``Frame.topic``
    HEARTBEAT = "heartbeat"
    READY = "ready"  # system + success: subscriptions are accepted from now on
    SYSTEM = "system"  # other system/info frames (unsubscribed notices, echo)
    AUTH_LOST = "auth_lost"  # sts authenticated:false (also captured as ``sts``)
    WAITING_SESSION = "waiting_session"
    ERROR = "error"  # {"error": ...} e.g. a refused subscription
    MALFORMED = "malformed"  # not JSON, or JSON that is not an object
    NON_UTF8 = "non_utf8"
    UNKNOWN = "unknown"  # an object with a topic we do not capture


#: Account-wide channels: name -> (subscribe, unsubscribe) commands.
CHANNEL_COMMANDS: dict[str, tuple[str, str]] = {
    "orders": ("sor+{}", "uor+{}"),
    "pnl": ("spl+{}", "upl+{}"),
    "trades": ("str+{}", "utr+{}"),
}
_CHANNEL_TOPICS = {"sor": "orders", "spl": "pnl", "str": "trades"}
#: Topics captured under their own names when ``events.capture_other`` is on.
_OTHER_TOPICS = frozenset({"sts", "act", "ntf", "blt"})
_SIMPLE_TOPIC = re.compile(r"^[a-z]{2,16}$")


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~0.5 us a frame
class Frame:
    kind: FrameKind
    #: The topic to capture under, for EVENT and captured AUTH_LOST frames.
    topic: str | None = None
    #: The payload bytes to capture (the frame itself, as received).
    payload_json: bytes | None = None
    #: The decoded object (for the connector's own decisions).
    data: dict[str, Any] | None = None


_MD_TOPICS: dict[str, str] = {}
_HEARTBEAT = Frame(FrameKind.HEARTBEAT)
_MALFORMED = Frame(FrameKind.MALFORMED)


def classify(raw: str | bytes, *, capture_other: bool = True) -> Frame:
    """Classify one frame. Text and binary frames holding UTF-8 JSON are alike."""
    if isinstance(raw, bytes):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return Frame(FrameKind.NON_UTF8)
        payload_json = raw
    else:
        try:
            payload_json = raw.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates cannot come off a socket, but be total
            return Frame(FrameKind.NON_UTF8)
    try:
        data = orjson.loads(payload_json)
    except orjson.JSONDecodeError:
        return _MALFORMED
    if not isinstance(data, dict):
        return _MALFORMED
    if not data:
        return _HEARTBEAT  # the gateway's bare ``{}`` keepalive
    topic = data.get("topic")
    if not isinstance(topic, str):
        return _classify_topicless(data)
    cached = _MD_TOPICS.get(topic)  # one dict hit instead of a parse and an f-string
    if cached is not None:
        return Frame(FrameKind.EVENT, cached, payload_json, data)
    if topic.startswith("smd+"):
        conid = topic[4:]
        if not (conid.isascii() and conid.isdigit()):
            conid = str(data.get("conid", ""))
        if not (conid.isascii() and conid.isdigit()):
            return Frame(FrameKind.UNKNOWN, data=data)
        name = f"marketdata:{int(conid)}"
        if topic[4:] == conid and len(_MD_TOPICS) < 10_000:
            _MD_TOPICS[topic] = name  # also one shared topic string per conid
        return Frame(FrameKind.EVENT, name, payload_json, data)
    channel = _CHANNEL_TOPICS.get(topic)
    if channel is not None:
        return Frame(FrameKind.EVENT, channel, payload_json, data)
    if topic == "system":
        if "hb" in data:
            return Frame(FrameKind.HEARTBEAT, data=data)
        if "success" in data:
            return Frame(FrameKind.READY, data=data)
        return Frame(FrameKind.SYSTEM, data=data)
    if topic == "ech" or topic == "tic":
        return Frame(FrameKind.HEARTBEAT, data=data)
    if topic == "sts":
        args = data.get("args")
        if isinstance(args, dict) and args.get("authenticated") is False:
            return Frame(FrameKind.AUTH_LOST, "sts" if capture_other else None, payload_json, data)
    if capture_other and (topic in _OTHER_TOPICS or _SIMPLE_TOPIC.match(topic)):
        return Frame(FrameKind.EVENT, topic, payload_json, data)
    return Frame(FrameKind.UNKNOWN, data=data)


def _classify_topicless(data: dict[str, Any]) -> Frame:
    message = data.get("message")
    if isinstance(message, str) and "waiting for session" in message.lower():
        return Frame(FrameKind.WAITING_SESSION, data=data)
    if "error" in data:
        return Frame(FrameKind.ERROR, data=data)
    if message is not None or "result" in data:
        return Frame(FrameKind.SYSTEM, data=data)
    return Frame(FrameKind.UNKNOWN, data=data)


def md_subscribe(conid: int, fields: Iterable[str]) -> str:
    """The ``smd`` command for ``conid`` with the given field ids."""
    return f"smd+{conid}+" + orjson.dumps({"fields": list(fields)}).decode()


def md_unsubscribe(conid: int) -> str:
    """The ``umd`` command for ``conid``."""
    return f"umd+{conid}+{{}}"
