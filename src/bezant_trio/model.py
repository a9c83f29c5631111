"""Pure data: events, gap reasons, timestamps, the topic grammar. No I/O lives here.

An :class:`Event` is encoded to its wire JSON exactly once, when it is
published; every HTTP response, SSE frame, sink and log row reuses those bytes.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "ACCOUNT_SUMMARY",
    "BARS",
    "BOOK",
    "CONID_FAMILIES",
    "GAP_TOPIC",
    "LEDGER",
    "MARKETDATA",
    "SYSTEM_TOPIC",
    "TOPIC_RE",
    "Event",
    "GapReason",
    "account_summary_topic",
    "bars_topic",
    "book_topic",
    "conid_of",
    "encode_payload",
    "format_ts",
    "keyed_topic",
    "ledger_topic",
    "marketdata_topic",
    "parse_ts",
    "topic_family",
    "wanted_conid",
]

# ------------------------------------------------------------------ topics
#
# A topic name is a family, optionally followed by ``:`` and a key:
# ``orders``, ``gap``, ``marketdata:265598``, ``account_summary:DU1234``.
# Every module builds and parses topic names with these functions only.

#: The topic every gap event also goes to.
GAP_TOPIC = "gap"
#: Topicless gateway frames and non-heartbeat ``system`` frames.
SYSTEM_TOPIC = "system"
#: Market data for one conid is captured under ``marketdata:<conid>``.
MARKETDATA = "marketdata"
#: Streaming bars (``smh``) and the BookTrader ladder (``sbd``) of one conid.
BARS = "bars"
BOOK = "book"
#: Account summary (``ssd``) and ledger (``sld``); ``:<acct>`` with several accounts.
ACCOUNT_SUMMARY = "account_summary"
LEDGER = "ledger"
#: Families whose key is a conid that readers ask for (subscribed lazily).
CONID_FAMILIES = (MARKETDATA, BARS, BOOK)
#: Well-formed topic names: a lowercase family, optionally ``:`` and a key.
#: ``\Z``, not ``$``: ``$`` also matches before a trailing newline ("orders\n").
TOPIC_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}(:[A-Za-z0-9_.\-]{1,64})?\Z")
#: Conids are positive and fit in a signed 64-bit integer.
_MAX_CONID = 2**63


def keyed_topic(family: str, key: object) -> str:
    """The topic of ``family`` for one key: ``keyed_topic("bars", 265598) == "bars:265598"``."""
    return f"{family}:{key}"


def marketdata_topic(conid: int) -> str:
    """The topic market data for ``conid`` is captured under."""
    return f"marketdata:{conid}"


def bars_topic(conid: int) -> str:
    """The topic streaming bars (``smh``) for ``conid`` are captured under."""
    return keyed_topic(BARS, conid)


def book_topic(conid: int) -> str:
    """The topic the BookTrader price ladder (``sbd``) for ``conid`` is captured under."""
    return keyed_topic(BOOK, conid)


def _account_topic(family: str, account: str | None) -> str:
    # An account id that cannot be a topic key (TOPIC_RE) leaves the family alone.
    if account and TOPIC_RE.match(keyed_topic(family, account)):
        return keyed_topic(family, account)
    return family


def account_summary_topic(account: str | None = None) -> str:
    """``account_summary``, or ``account_summary:<account>`` when several accounts are captured."""
    return _account_topic(ACCOUNT_SUMMARY, account)


def ledger_topic(account: str | None = None) -> str:
    """``ledger``, or ``ledger:<account>`` when several accounts are captured."""
    return _account_topic(LEDGER, account)


def topic_family(topic: str) -> str:
    """The family of a topic: ``"marketdata"`` for ``"marketdata:265598"``, else the topic."""
    return topic.partition(":")[0]


def wanted_conid(topic: str) -> tuple[str, int] | None:
    """``(family, conid)`` of a per-instrument topic (``bars:265598``), else None."""
    family = topic.partition(":")[0]
    if family not in CONID_FAMILIES:
        return None
    conid = conid_of(topic, family)
    return (family, conid) if conid is not None else None


def conid_of(topic: str, family: str = MARKETDATA) -> int | None:
    """The conid of a ``<family>:<conid>`` topic (market data by default), else None."""
    head, sep, key = topic.partition(":")
    if not sep or head != family or not (key.isascii() and key.isdigit()):
        return None
    conid = int(key)
    return conid if 0 < conid < _MAX_CONID else None


class GapReason(enum.StrEnum):
    """Why a ``gap`` event was injected: consumers may have missed events."""

    RECONNECTED_AFTER_DISCONNECT = "reconnected_after_disconnect"
    PROCESS_RESTART = "process_restart"
    #: A sink fell behind what retention kept and was moved to the head.
    SINK_LAGGED = "sink_lagged"
    #: A REST/SSE/tail consumer got 412 and resumed at the head (client side).
    CURSOR_EXPIRED = "cursor_expired"


def format_ts(epoch_seconds: float | None = None) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``, e.g. ``2026-11-30T03:02:23.123Z``."""
    if epoch_seconds is None:
        epoch_seconds = time.time()
    ms = int(epoch_seconds * 1000)
    secs, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def parse_ts(text: str) -> float:
    """Parse an RFC 3339 timestamp to epoch seconds; raises ``ValueError``.

    A timezone is required (``Z`` or ``+hh:mm``): a naive time is ambiguous.
    """
    if not isinstance(text, str) or len(text) < 20 or text[10] not in "Tt ":
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    value = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp needs a timezone (Z or +hh:mm): {text!r}")
    try:
        return parsed.astimezone(UTC).timestamp()
    except OverflowError:
        # An offset can push year 1 or 9999 out of datetime's range.
        raise ValueError(f"timestamp out of range: {text!r}") from None


def encode_payload(payload: Any) -> bytes:
    """JSON-encode a payload object (used when a payload is not raw frame bytes)."""
    return orjson.dumps(payload)


#: ``topic`` -> the bytes between an event's cursor and its ``received_at``
#: (``,"topic":"orders","received_at":"``): one encode per topic, not per event.
_TOPIC_HEADS: dict[str, bytes] = {}
#: Past this many topics, heads are encoded per event instead of cached.
_MAX_TOPIC_HEADS = 100_000


def _topic_head(topic: str) -> bytes:
    head = b',"topic":' + orjson.dumps(topic) + b',"received_at":"'
    if len(_TOPIC_HEADS) < _MAX_TOPIC_HEADS:
        _TOPIC_HEADS[topic] = head
    return head


# Not frozen: a frozen dataclass's __init__ goes through object.__setattr__ for
# every field, ~0.5 µs an event on the ingest path. Nothing hashes events.
@dataclass(slots=True)
class Event:
    """One captured event, in the wire shape of ``GET /events/{topic}``.

    ``json`` is the whole event object, built once by :meth:`build`; the
    payload's bytes (for gateway frames, the frame's own bytes, so nothing is
    re-encoded) are the slice of it that :attr:`payload_json` returns. Keeping
    only one copy of the bytes is what keeps 100k buffered events small.
    Treat an event as immutable: its ``json`` is shared by every reader.
    """

    topic: str
    cursor: int
    received_at: str
    reset_epoch: int
    json: bytes
    #: Where the payload starts inside ``json`` (it ends before the final ``}``).
    payload_at: int
    #: ``received_at`` in epoch milliseconds, when the builder knew it (the hub
    #: does); -1 otherwise, and the log parses ``received_at`` instead.
    received_ms: int = field(default=-1, compare=False)

    @classmethod
    def build(
        cls,
        topic: str,
        cursor: int,
        received_at: str,
        reset_epoch: int,
        payload_json: bytes,
        received_ms: int = -1,
    ) -> Event:
        """Create an event and encode its wire JSON (the only encode it gets)."""
        head = _TOPIC_HEADS.get(topic)
        if head is None:
            head = _topic_head(topic)
        data = b'{"cursor":%d%s%s","reset_epoch":%d,"payload":%s}' % (
            cursor,
            head,
            received_at.encode(),
            reset_epoch,
            payload_json,
        )
        return cls(
            topic,
            cursor,
            received_at,
            reset_epoch,
            data,
            len(data) - len(payload_json) - 1,
            received_ms,
        )

    @property
    def payload_json(self) -> bytes:
        """The payload's JSON bytes."""
        return self.json[self.payload_at : -1]

    @property
    def payload(self) -> Any:
        """The decoded payload (decodes on every access; cache it if hot)."""
        return orjson.loads(self.payload_json)

    def to_dict(self) -> dict[str, Any]:
        """The event as a plain dict, the same as ``orjson.loads(event.json)``."""
        return {
            "cursor": self.cursor,
            "topic": self.topic,
            "received_at": self.received_at,
            "reset_epoch": self.reset_epoch,
            "payload": self.payload,
        }
