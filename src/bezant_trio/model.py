"""Pure data: events, gap reasons, timestamps, the topic grammar. No I/O lives here.

An :class:`Event` is encoded to its wire JSON exactly once, when it is
published; every HTTP response, SSE frame, sink and log row reuses those bytes.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "ACCOUNT_SUMMARY_FAMILY",
    "BARS_FAMILY",
    "BOOK_FAMILY",
    "GAP_TOPIC",
    "LEDGER_FAMILY",
    "MARKETDATA_FAMILY",
    "SYSTEM_TOPIC",
    "Event",
    "GapReason",
    "account_summary_topic",
    "bars_topic",
    "book_topic",
    "conid_of",
    "encode_payload",
    "format_ts",
    "ledger_topic",
    "marketdata_topic",
    "parse_ts",
    "topic_family",
]

GAP_TOPIC = "gap"
#: Topicless gateway frames and non-heartbeat ``system`` frames are captured here.
SYSTEM_TOPIC = "system"
MARKETDATA_FAMILY = "marketdata"
BARS_FAMILY = "bars"
BOOK_FAMILY = "book"
ACCOUNT_SUMMARY_FAMILY = "account_summary"
LEDGER_FAMILY = "ledger"
# The key after ``:`` in a topic name (docs/architecture.md, topics): what an
# account id must look like to become part of one.
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


# --------------------------------------------------------------- topic grammar


def marketdata_topic(conid: int) -> str:
    """``marketdata:<conid>``: where ``smd+<conid>`` frames are captured."""
    return f"{MARKETDATA_FAMILY}:{conid}"


def bars_topic(conid: int) -> str:
    """``bars:<conid>``: where ``smh+<conid>`` (streaming bars) frames are captured."""
    return f"{BARS_FAMILY}:{conid}"


def book_topic(conid: int) -> str:
    """``book:<conid>``: where ``sbd`` (BookTrader price ladder) frames are captured."""
    return f"{BOOK_FAMILY}:{conid}"


def _account_topic(family: str, account: str | None) -> str:
    if account and len(account) <= 64 and _KEY_CHARS.issuperset(account):
        return f"{family}:{account}"
    return family


def account_summary_topic(account: str | None = None) -> str:
    """``account_summary``, or ``account_summary:<account>`` when several accounts are captured."""
    return _account_topic(ACCOUNT_SUMMARY_FAMILY, account)


def ledger_topic(account: str | None = None) -> str:
    """``ledger``, or ``ledger:<account>`` when several accounts are captured."""
    return _account_topic(LEDGER_FAMILY, account)


def topic_family(topic: str) -> str:
    """The part before ``:`` (``marketdata`` for ``marketdata:265598``)."""
    return topic.partition(":")[0]


def conid_of(topic: str) -> int | None:
    """The conid of a per-instrument topic (``marketdata:``, ``bars:``, ``book:``), else None."""
    family, _, key = topic.partition(":")
    if family not in (MARKETDATA_FAMILY, BARS_FAMILY, BOOK_FAMILY):
        return None
    if key.isascii() and key.isdigit() and 0 < int(key) < 2**63:
        return int(key)
    return None


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
    return parsed.astimezone(UTC).timestamp()


def encode_payload(payload: Any) -> bytes:
    """JSON-encode a payload object (used when a payload is not raw frame bytes)."""
    return orjson.dumps(payload)


@dataclass(frozen=True, slots=True)
class Event:
    """One captured event, in the wire shape of ``GET /events/{topic}``.

    ``json`` is the whole event object, built once by :meth:`build`; the
    payload's bytes (for gateway frames, the frame's own bytes, so nothing is
    re-encoded) are the slice of it that :attr:`payload_json` returns. Keeping
    only one copy of the bytes is what keeps 100k buffered events small.
    """

    topic: str
    cursor: int
    received_at: str
    reset_epoch: int
    json: bytes
    #: Where the payload starts inside ``json`` (it ends before the final ``}``).
    payload_at: int

    @classmethod
    def build(
        cls,
        topic: str,
        cursor: int,
        received_at: str,
        reset_epoch: int,
        payload_json: bytes,
    ) -> Event:
        """Create an event and encode its wire JSON (the only encode it gets)."""
        head = b"".join(
            (
                b'{"cursor":',
                str(cursor).encode(),
                b',"topic":',
                orjson.dumps(topic),
                b',"received_at":"',
                received_at.encode(),
                b'","reset_epoch":',
                str(reset_epoch).encode(),
                b',"payload":',
            )
        )
        return cls(topic, cursor, received_at, reset_epoch, head + payload_json + b"}", len(head))

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
