"""How one bezant-trio event becomes one JetStream message: subject, headers, body.

- subject: ``<subject_prefix>.<topic>`` with ``:`` mapped to ``.``
  (``marketdata:265598`` -> ``bezant.marketdata.265598``);
- body: the event exactly as ``GET /events/{topic}`` serves it (``event.json``);
- ``Nats-Msg-Id: <reset_epoch>:<topic>:<cursor>``, so a batch sent again after a
  failure or a daemon restart is dropped by the server's duplicate window;
- ``Bezant-Topic``, ``Bezant-Cursor``, ``Bezant-Reset-Epoch``,
  ``Bezant-Received-At``: the event's identity without parsing the body.

Pure functions and data; no I/O, no asyncio, no Trio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bezant_trio.model import Event

__all__ = [
    "CURSOR_HEADER",
    "EPOCH_HEADER",
    "MSG_ID_HEADER",
    "RECEIVED_AT_HEADER",
    "TOPIC_HEADER",
    "OutboundMessage",
    "check_subject_prefix",
    "message_for",
    "msg_id",
    "subject_for",
]

MSG_ID_HEADER = "Nats-Msg-Id"
TOPIC_HEADER = "Bezant-Topic"
CURSOR_HEADER = "Bezant-Cursor"
EPOCH_HEADER = "Bezant-Reset-Epoch"
RECEIVED_AT_HEADER = "Bezant-Received-At"

# A subject token may hold anything but whitespace, `.` (the separator) and the
# wildcards; the prefix follows the stricter usual style.
_PREFIX = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_UNSAFE = re.compile(r"[\s*>~]")


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message ready for ``publish``: what the asyncio side gets from Trio."""

    subject: str
    body: bytes
    headers: dict[str, str]
    #: ``(topic, cursor)``, for error messages and the status page.
    label: str

    @property
    def msg_id(self) -> str:
        return self.headers[MSG_ID_HEADER]


def check_subject_prefix(value: str) -> str:
    """The ``subject_prefix`` option: dot-separated tokens, no wildcards."""
    if not _PREFIX.match(value):
        raise ValueError(
            f"must be dot-separated tokens of letters, digits, '_' or '-' (e.g. bezant), got {value!r}"
        )
    return value


def subject_for(prefix: str, topic: str) -> str:
    """``bezant.marketdata.265598`` for ``marketdata:265598``.

    Topics are ``name`` or ``name:suffix``; a suffix may hold dots, which
    become further subject tokens. The few characters a subject cannot carry
    (whitespace, ``*``, ``>``, and empty tokens) are escaped as ``~XX`` so every
    topic gets a valid, distinct subject.
    """
    tokens = topic.replace(":", ".").split(".")
    return ".".join([prefix, *(_escape(token) for token in tokens)])


def _escape(token: str) -> str:
    if not token:
        return "~"
    if _UNSAFE.search(token) is None:
        return token
    return _UNSAFE.sub(lambda m: f"~{ord(m.group()):02X}", token)


def msg_id(event: Event) -> str:
    """``<reset_epoch>:<topic>:<cursor>``: the same event always gets the same id."""
    return f"{event.reset_epoch}:{event.topic}:{event.cursor}"


def message_for(prefix: str, event: Event) -> OutboundMessage:
    """The JetStream message that carries ``event``."""
    return OutboundMessage(
        subject=subject_for(prefix, event.topic),
        body=event.json,
        headers={
            MSG_ID_HEADER: msg_id(event),
            TOPIC_HEADER: event.topic,
            CURSOR_HEADER: str(event.cursor),
            EPOCH_HEADER: str(event.reset_epoch),
            RECEIVED_AT_HEADER: event.received_at,
        },
        label=f"{event.topic}@{event.cursor}",
    )
