"""The asyncio side of the sink: one nats-py connection, the stream, pipelined publishes.

Everything here runs on the sink's asyncio thread (see ``bridge``); the Trio
side only calls :meth:`JetStreamPublisher.publish` and
:meth:`JetStreamPublisher.close` through it.

Choices that matter for "nothing lost, nothing twice, in order":

- nats-py's own reconnect is off. After a reconnect it would flush what it had
  buffered for the dead socket to the new server, so later messages of a batch
  could be stored while earlier ones (lost with the socket) are not. Instead a
  lost connection fails the batch at once; the manager retries it, and the next
  attempt connects afresh and sends the whole batch again, in order; the
  ``Nats-Msg-Id`` duplicate window drops what was already stored.
- A batch is published pipelined (every message sent before any ack is
  awaited), then every ack is awaited up to ``ack_timeout``. Any missing or
  failed ack fails the batch, so the checkpoint never passes an unstored event.
- A duplicate ack is checked against the message the server kept under that
  id: the same event again is fine; a *different* event (a daemon without its
  durable log starts its cursors at 1 again) is a collision, reported instead
  of silently dropped.

Owns the connection; never touches Trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from bezant_trio_nats.settings import (
    BatchReport,
    ConnectSettings,
    PublishSetupError,
    StreamSettings,
    TlsSettings,
)
from bezant_trio_nats.wire import MSG_ID_HEADER, OutboundMessage

__all__ = [
    "Ack",
    "AckError",
    "BatchReport",
    "ConnectSettings",
    "JetStreamPublisher",
    "PublishSetupError",
    "StreamSettings",
    "TlsSettings",
    "tally",
]

log = logging.getLogger(__name__)

#: The JetStream API error code for "stream name already in use" (a create race).
_STREAM_NAME_IN_USE = 10058
_EXPECTED_STREAM = "Nats-Expected-Stream"


class AckError(Exception):
    """The stream answered a publish with an error (``str()`` has code and description)."""


@dataclass(frozen=True, slots=True)
class Ack:
    """A positive ack: the stream sequence, and whether it was a duplicate."""

    seq: int
    duplicate: bool


@dataclass
class _Connection:
    """One nats-py connection and the acks it is waiting for.

    Acks are matched here rather than by nats-py's ``publish_async``, which
    leaves the future of an error ack unresolved (it raises inside its reply
    handler), so a rejected message would look like a timeout.
    """

    nc: NatsClient
    js: JetStreamContext
    #: Done once the connection is gone (nats-py's reconnect is off).
    lost: asyncio.Future[None]
    #: Reply subjects are ``<inbox>.<n>``; one wildcard subscription takes every ack.
    inbox: str = ""
    pending: dict[str, asyncio.Future[Ack]] = field(default_factory=dict)
    sent: int = 0

    async def listen(self) -> None:
        self.inbox = self.nc.new_inbox()
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        future = self.pending.pop(msg.subject[len(self.inbox) + 1 :], None)
        if future is None or future.done():
            return  # a late ack of an abandoned batch
        status = (msg.headers or {}).get("Status")
        if status == "503":
            future.set_exception(AckError("no stream takes this subject (no responders)"))
            return
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            future.set_exception(AckError(f"unreadable ack {msg.data[:80]!r}"))
            return
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is not None:
            future.set_exception(
                AckError(
                    f"{error.get('code')} (err_code {error.get('err_code')}):"
                    f" {error.get('description')}"
                )
            )
        elif isinstance(answer, dict) and "seq" in answer:
            future.set_result(Ack(int(answer["seq"]), bool(answer.get("duplicate", False))))
        else:
            future.set_exception(AckError(f"unexpected ack {msg.data[:80]!r}"))

    async def send(
        self, message: OutboundMessage, stream: str, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[Ack]:
        self.sent += 1
        token = str(self.sent)
        future: asyncio.Future[Ack] = loop.create_future()
        self.pending[token] = future
        headers = dict(message.headers)
        headers[_EXPECTED_STREAM] = stream  # a subject some other stream takes is an error
        try:
            await self.nc.publish(
                message.subject, message.body, reply=f"{self.inbox}.{token}", headers=headers
            )
        except BaseException:
            self.pending.pop(token, None)
            raise
        return future

    def forget(self, futures: Sequence[asyncio.Future[Ack]]) -> None:
        """Stop waiting for these acks (the batch is over)."""
        for future in futures:
            if not future.done():
                future.cancel()
        self.pending = {token: f for token, f in self.pending.items() if not f.done()}


class JetStreamPublisher:
    """Publishes batches into one stream over one connection (asyncio thread only)."""

    def __init__(
        self, connect: ConnectSettings, stream: StreamSettings, *, ack_timeout: float
    ) -> None:
        self.connect_settings = connect
        self.stream = stream
        self.ack_timeout = ack_timeout
        #: ``host:port`` of the server in use, for the status page.
        self.connected_url: str | None = None
        self._conn: _Connection | None = None

    # ------------------------------------------------------------ connection

    async def _connection(self) -> _Connection:
        if self._conn is not None and not self._conn.lost.done():
            return self._conn
        await self._drop_connection()
        settings = self.connect_settings
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()

        async def on_gone() -> None:
            if not lost.done():
                lost.set_result(None)

        async def on_error(exc: Exception) -> None:
            log.debug("nats (%s): %s", settings.connection_name, _describe(exc))

        options: dict[str, Any] = {
            "servers": list(settings.servers),
            "name": settings.connection_name,
            "allow_reconnect": False,
            "connect_timeout": settings.connect_timeout,
            # Without reconnects these only pace the first connect through the
            # server list: each server is tried twice, briefly apart.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.1,
            "disconnected_cb": on_gone,
            "closed_cb": on_gone,
            "error_cb": on_error,
        }
        if settings.creds is not None:
            options["user_credentials"] = settings.creds
        if settings.tls is not None:
            try:
                options["tls"] = settings.tls.context()
            except (OSError, ssl.SSLError) as exc:
                raise PublishSetupError(f"tls: cannot load the certificates: {exc}") from None
            if settings.tls.hostname is not None:
                options["tls_hostname"] = settings.tls.hostname
        budget = 2 * settings.connect_timeout * len(settings.servers) + 1
        try:
            async with asyncio.timeout(budget):
                nc = await nats.connect(**options)
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            raise PublishSetupError(
                f"cannot connect to NATS at {', '.join(map(_redact, settings.servers))}:"
                f" {_describe(exc)}"
                " (is nats-server running with -js? are creds/tls right?)"
            ) from None
        js = nc.jetstream(timeout=self.ack_timeout)
        try:
            await self._prepare_stream(js)
            conn = _Connection(nc, js, lost)
            await conn.listen()
        except BaseException:
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        self._conn = conn
        self.connected_url = nc.connected_url.netloc if nc.connected_url else None
        log.info("nats sink connected to %s", self.connected_url)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.connected_url = None
        if conn is None or conn.nc.is_closed:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.connect_settings.connect_timeout):
                await conn.nc.close()

    async def _prepare_stream(self, js: JetStreamContext) -> None:
        """Create or update the stream (``create_stream: true``), else check it exists."""
        stream = self.stream
        try:
            try:
                info = await js.stream_info(stream.name)
            except nats.js.errors.NotFoundError:
                if not stream.create:
                    raise PublishSetupError(
                        f"stream {stream.name!r} does not exist; create it"
                        f" (subjects {stream.subjects!r}) or set create_stream: true"
                    ) from None
                try:
                    await js.add_stream(self._wanted_config())
                    log.info("created stream %s (%s)", stream.name, stream.subjects)
                    return
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code != _STREAM_NAME_IN_USE:
                        raise
                    info = await js.stream_info(stream.name)  # another daemon was faster
            if stream.create:
                wanted = self._wanted_config(info.config)
                if _differs(info.config, wanted):
                    await js.update_stream(wanted)
                    log.info("updated stream %s", stream.name)
        except (nats.errors.Error, TimeoutError) as exc:
            raise PublishSetupError(
                f"preparing stream {stream.name!r} failed: {_describe(exc)}"
            ) from None

    def _wanted_config(self, current: StreamConfig | None = None) -> StreamConfig:
        stream = self.stream
        if current is None:
            return StreamConfig(
                name=stream.name,
                subjects=[stream.subjects],
                storage=StorageType.FILE,
                max_age=stream.max_age,
                num_replicas=stream.replicas,
                duplicate_window=stream.duplicate_window,
            )
        subjects = list(current.subjects or [])
        if stream.subjects not in subjects:
            subjects.append(stream.subjects)
        return current.evolve(
            subjects=subjects,
            max_age=stream.max_age,
            num_replicas=stream.replicas,
            duplicate_window=stream.duplicate_window,
        )

    # ------------------------------------------------------------ publishing

    async def publish(self, messages: Sequence[OutboundMessage]) -> BatchReport:
        """Publish ``messages`` pipelined and await every ack (at most ``ack_timeout``).

        Raises :class:`PublishSetupError` if no connection could be made; every
        other failure is in the report.
        """
        conn = await self._connection()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Ack]] = []
        unsent_reason = ""
        try:
            for message in messages:
                try:
                    futures.append(await conn.send(message, self.stream.name, loop))
                except (nats.errors.Error, OSError) as exc:
                    unsent_reason = f"not sent: {_describe(exc)}"
                    break
            if futures:
                acks = asyncio.gather(*futures, return_exceptions=True)
                await asyncio.wait(
                    {acks, conn.lost}, timeout=self.ack_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            report = await self._report(conn, messages, futures, unsent_reason)
        finally:
            conn.forget(futures)
        if conn.lost.done() or (report.failed and len(report.failed) == len(messages)):
            # Gone, or silent (a half-open socket answers nothing): reconnect
            # next time, maybe to another server of the list.
            await self._drop_connection()
        return report

    async def _report(
        self,
        conn: _Connection,
        messages: Sequence[OutboundMessage],
        futures: Sequence[asyncio.Future[Ack]],
        unsent_reason: str,
    ) -> BatchReport:
        no_ack = "connection lost" if conn.lost.done() else f"no ack in {self.ack_timeout:g}s"
        report, duplicates = tally(messages, futures, unsent_reason=unsent_reason, no_ack=no_ack)
        if duplicates:
            verdicts = await asyncio.gather(
                *(self._same_as_stored(conn, message, seq) for message, seq in duplicates)
            )
            for (message, _seq), same in zip(duplicates, verdicts, strict=True):
                if same:
                    report.duplicates += 1
                else:
                    report.collisions.append(message.label)
        return report

    async def _same_as_stored(self, conn: _Connection, message: OutboundMessage, seq: int) -> bool:
        """Whether the message stored under ``message``'s id is this very event."""
        try:
            stored = await conn.js.get_msg(self.stream.name, seq)
        except nats.js.errors.NotFoundError:
            return True  # removed since (limits); nothing to compare with
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("could not check duplicate %s: %s", message.label, _describe(exc))
            return True  # assume the common case, a retry
        if (stored.headers or {}).get(MSG_ID_HEADER) != message.msg_id:
            return True  # the id's original is gone; seq now names something else
        if stored.data == message.body:
            return True
        try:
            return orjson.loads(stored.data or b"null") == orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return False

    async def close(self) -> None:
        """Close the connection (nothing is in flight: ``publish`` awaited every ack)."""
        await self._drop_connection()


def tally(
    messages: Sequence[OutboundMessage],
    futures: Sequence[asyncio.Future[Any]],
    *,
    unsent_reason: str,
    no_ack: str,
) -> tuple[BatchReport, list[tuple[OutboundMessage, int]]]:
    """Sort a batch's outcomes: stored, failed (with why), reordered, and duplicates to check.

    ``futures[i]`` is the ack of ``messages[i]``; messages past the end of
    ``futures`` were never sent. Duplicates come back as ``(message, seq)``.
    """
    report = BatchReport()
    duplicates: list[tuple[OutboundMessage, int]] = []
    first_failure = math.inf
    for index, message in enumerate(messages):
        reason = None
        if index >= len(futures):
            reason = unsent_reason
        else:
            future = futures[index]
            if not future.done() or future.cancelled():
                reason = no_ack
            elif future.exception() is not None:
                reason = _describe(future.exception())
            elif future.result().duplicate:
                duplicates.append((message, future.result().seq))
                continue
        if reason is not None:
            report.failed.append((message.label, reason))
            first_failure = min(first_failure, index)
        else:
            report.stored += 1
            if index > first_failure:
                report.reordered += 1
    return report, duplicates


def _redact(url: str) -> str:
    """The URL without a user or password (they may be in it), for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    return (
        sorted(current.subjects or []) != sorted(wanted.subjects or [])
        or (current.num_replicas or 1) != wanted.num_replicas
        or not math.isclose(current.max_age or 0.0, wanted.max_age or 0.0, abs_tol=1e-3)
        or not math.isclose(
            current.duplicate_window or 0.0, wanted.duplicate_window or 0.0, abs_tol=1e-3
        )
    )


def _describe(exc: BaseException | type[BaseException] | None) -> str:
    if isinstance(exc, type):  # nats-py sets some exceptions as classes
        return exc.__name__
    if exc is None:
        return "unknown error"
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
