"""The ``nats`` sink: every event into a NATS JetStream stream, acknowledged.

``deliver`` turns a batch into JetStream messages (``wire``), publishes them
pipelined on the sink's asyncio thread (``bridge``, ``publisher``) and returns
only once the server acknowledged every one of them; otherwise it raises and
the manager retries the whole batch, which the server de-duplicates by
``Nats-Msg-Id``. So the checkpoint never passes an event the stream does not
hold, and a retry adds nothing twice inside the stream's duplicate window.

Owns the option checks and the Trio side of delivery; no socket work here.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from bezant_trio.model import Event
from bezant_trio.sinks import DeliveryError, Option
from bezant_trio_nats.bridge import AsyncioThread
from bezant_trio_nats.settings import (
    BatchReport,
    ConnectSettings,
    PublishSetupError,
    StreamSettings,
    TlsSettings,
)
from bezant_trio_nats.wire import check_subject_prefix, message_for

__all__ = ["NatsSink"]

log = logging.getLogger(__name__)

_STREAM_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")
_SCHEMES = ("nats", "tls")
_TLS_KEYS = ("ca_file", "cert_file", "key_file", "hostname")


def _check_servers(value: list[Any]) -> list[str]:
    if not value:
        raise ValueError("needs at least one URL, e.g. [nats://127.0.0.1:4222]")
    for url in value:
        if (
            not isinstance(url, str)
            or urlsplit(url).scheme not in _SCHEMES
            or not urlsplit(url).hostname
        ):
            raise ValueError(f"must be URLs like nats://host:4222 or tls://host:4222, got {url!r}")
    return list(value)


def _check_stream(value: str) -> str:
    if not _STREAM_NAME.match(value):
        raise ValueError(f"must be letters, digits, '_' or '-' (e.g. BEZANT), got {value!r}")
    return value


def _check_seconds(value: float) -> float:
    if not (value >= 0 and value < 10 * 365 * 86400):
        raise ValueError(f"must be a number of seconds >= 0, got {value:g}")
    return value


def _check_positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"must be more than 0 seconds, got {value:g}")
    return value


def _check_replicas(value: int) -> int:
    if not 1 <= value <= 5:
        raise ValueError(f"must be from 1 to 5 (JetStream's limit), got {value}")
    return value


def _check_file(value: str) -> str:
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isfile(path):
        raise ValueError(f"the file {path} does not exist")
    return path


def _check_creds(value: str) -> str:
    path = _check_file(value)
    if importlib.util.find_spec("nkeys") is None:
        raise ValueError("needs the nkeys package: pip install 'bezant-trio-nats[creds]'")
    return path


def _check_tls(value: Mapping[str, Any]) -> TlsSettings:
    unknown = [key for key in value if key not in _TLS_KEYS]
    if unknown:
        raise ValueError(f"has unknown key {unknown[0]!r} (keys: {', '.join(_TLS_KEYS)})")
    for key, item in value.items():
        if not isinstance(item, str) or not item:
            raise ValueError(f"{key} must be a non-empty string")
    if ("cert_file" in value) != ("key_file" in value):
        raise ValueError("cert_file and key_file go together (a client certificate)")
    files = {
        key: _check_file(value[key]) for key in ("ca_file", "cert_file", "key_file") if key in value
    }
    return TlsSettings(**files, hostname=value.get("hostname"))


class NatsSink:
    """Publishes events to NATS JetStream: one message per event, acked before the checkpoint moves."""

    type_name = "nats"
    options = {
        "servers": Option(
            list,
            default=["nats://127.0.0.1:4222"],
            check=_check_servers,
            help="NATS server URLs (nats:// or tls://); several for a cluster",
        ),
        "stream": Option(str, default="BEZANT", check=_check_stream, help="the JetStream stream"),
        "subject_prefix": Option(
            str, default="bezant", check=check_subject_prefix, help="subjects are <prefix>.<topic>"
        ),
        "create_stream": Option(
            bool, default=True, help="create the stream, or update its settings, at connect"
        ),
        "max_age": Option(
            float, default=7 * 86400.0, check=_check_seconds, help="seconds kept; 0 = forever"
        ),
        "replicas": Option(int, default=1, check=_check_replicas, help="copies in a cluster"),
        "duplicate_window": Option(
            float, default=120.0, check=_check_positive, help="seconds a Nats-Msg-Id is remembered"
        ),
        "creds": Option(str, default=None, check=_check_creds, help="a NATS .creds file"),
        "tls": Option(dict, default=None, check=_check_tls, help="ca_file, cert_file, key_file"),
        "ack_timeout": Option(float, default=5.0, check=_check_positive),
        "connect_timeout": Option(float, default=5.0, check=_check_positive),
    }

    def __init__(
        self,
        name: str,
        *,
        servers: list[str] | None = None,
        stream: str = "BEZANT",
        subject_prefix: str = "bezant",
        create_stream: bool = True,
        max_age: float = 7 * 86400.0,
        replicas: int = 1,
        duplicate_window: float = 120.0,
        creds: str | None = None,
        tls: TlsSettings | Mapping[str, Any] | None = None,
        ack_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if max_age and duplicate_window > max_age:
            raise ValueError(
                f"duplicate_window ({duplicate_window:g}s) cannot be longer than max_age"
                f" ({max_age:g}s)"
            )
        if tls is not None and not isinstance(tls, TlsSettings):
            tls = _check_tls(tls)  # the class used directly, without the manager's checks
        self.name = name
        self.stream = _check_stream(stream)
        self.subject_prefix = check_subject_prefix(subject_prefix)
        self.duplicate_window = duplicate_window
        # nats-py is loaded here, by the first NATS sink (settings.py).
        from bezant_trio_nats.publisher import JetStreamPublisher

        self._publisher = JetStreamPublisher(
            ConnectSettings(
                servers=tuple(_check_servers(servers or ["nats://127.0.0.1:4222"])),
                connection_name=f"bezant-trio sink {name}",
                connect_timeout=connect_timeout,
                creds=creds,
                tls=tls,
            ),
            StreamSettings(
                name=self.stream,
                subjects=f"{self.subject_prefix}.>",
                create=create_stream,
                max_age=max_age,
                replicas=replicas,
                duplicate_window=duplicate_window,
            ),
            ack_timeout=ack_timeout,
        )
        # Started on the first delivery: no thread, socket or file before that.
        self._thread = AsyncioThread(f"bezant-nats-{name}")
        self.published = 0
        self.duplicates = 0
        self.reordered = 0
        self.collisions = 0

    async def deliver(self, batch: list[Event]) -> None:
        """Publish the batch; return once every event is acked, raise to have it retried."""
        messages = [message_for(self.subject_prefix, event) for event in batch]
        try:
            report = await self._thread.run(self._publisher.publish, messages)
        except PublishSetupError as exc:
            raise DeliveryError(str(exc)) from None
        self._count(report)
        if report.collisions:
            # Waiting out the window is the only way to store these events under
            # their ids; the manager caps the delay at the sink's retry.max.
            raise DeliveryError(
                f"{len(report.collisions)} event(s) (first {report.collisions[0]}) have the"
                f" Nats-Msg-Id of a different message already in stream {self.stream}; the"
                " daemon restarted without its durable log (store.path) and reused cursors."
                f" Retrying once the {self.duplicate_window:g}s duplicate window has passed",
                retry_after=self.duplicate_window,
            )
        if report.failed:
            label, reason = report.failed[0]
            raise DeliveryError(
                f"stream {self.stream} acknowledged {len(batch) - len(report.failed)} of"
                f" {len(batch)} events; first missing {label}: {reason}"
            )

    def _count(self, report: BatchReport) -> None:
        self.published += report.stored
        self.duplicates += report.duplicates
        self.collisions += len(report.collisions)
        if report.reordered:
            self.reordered += report.reordered
            log.warning(
                "sink %r: %d event(s) were stored after an earlier event of their batch"
                " failed; the retry stores that one after them (consumers: order by"
                " Bezant-Cursor)",
                self.name,
                report.reordered,
            )

    def status(self) -> dict[str, Any]:
        """Extra fields for ``/events/_status``."""
        return {
            "stream": self.stream,
            "subject_prefix": self.subject_prefix,
            "connected_to": self._publisher.connected_url,
            "published": self.published,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "collisions": self.collisions,
        }

    async def aclose(self) -> None:
        """Close the NATS connection, then stop the asyncio thread (idempotent)."""
        if self._thread.running:
            try:
                await self._thread.run(self._publisher.close)
            except Exception as exc:  # closing is best effort; the thread still stops
                log.warning("sink %r: closing the NATS connection failed: %s", self.name, exc)
        await self._thread.aclose()
