"""What the NATS sink is configured with, and what a batch came to: no nats-py here.

The sink module reads these when a config is checked and a sink is built;
nats-py (``publisher``) is imported only when a ``nats`` sink exists, so a
daemon with the plugin installed and no NATS sink never loads it (66 ms of
CPU at every start).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

__all__ = ["BatchReport", "ConnectSettings", "PublishSetupError", "StreamSettings", "TlsSettings"]


class PublishSetupError(Exception):
    """Connecting or preparing the stream failed; ``str()`` says what to check."""


@dataclass(frozen=True)
class TlsSettings:
    """Client TLS: a CA bundle to trust (else the system's), an optional client certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: The name to verify the server certificate against, if not the URL's host.
    hostname: str | None = None

    def context(self) -> ssl.SSLContext:
        """A verifying client context (reads the files: call it off the Trio thread)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True)
class ConnectSettings:
    """How to reach the NATS servers."""

    servers: tuple[str, ...]
    connection_name: str
    connect_timeout: float
    #: A ``.creds`` file (user JWT and NKey seed).
    creds: str | None = None
    tls: TlsSettings | None = None


@dataclass(frozen=True)
class StreamSettings:
    """The stream the sink publishes into, and whether the sink may create or update it."""

    name: str
    subjects: str
    create: bool
    max_age: float
    replicas: int
    duplicate_window: float


@dataclass
class BatchReport:
    """What the server said about one batch."""

    stored: int = 0
    duplicates: int = 0
    #: ``(label, reason)`` of every message without a positive ack.
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Labels of messages whose id already names a *different* stored message.
    collisions: list[str] = field(default_factory=list)
    #: Messages stored after an earlier message of the same batch failed: the
    #: retry will store that one after them (see the README, "Ordering").
    reordered: int = 0
