"""The ``webhook`` sink: each batch POSTed as ``{"events": [...]}``, signed per Standard Webhooks.

Ids, built in the hub's cursor space (``hub.cursor_space``: one per durable
log file, a fresh one at every start without the log, where cursors start at
1 again):

- each event of the body carries its own ``id``,
  ``<cursor space>:<topic>:<cursor>`` (:func:`~bezant_trio.sinks.interface.event_id`),
  put in front of the event's own JSON bytes, which are never re-encoded. It
  is the same whenever that event is delivered again (a retry, or a restart
  on the same log that groups the events into other batches) and never the
  id of another event: receivers deduplicate on it;
- ``webhook-id`` (https://www.standardwebhooks.com) names the batch,
  ``<cursor space>:<topic>:<first cursor>-<last cursor>``: the same on every
  retry of the batch, never reused for other content after a restart, but
  a batch regrouped after a restart gets a new one, so deduplicate per event.

``webhook-timestamp`` is unix seconds; ``webhook-signature`` is
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the
base64-decoded part of the ``whsec_...`` secret (no signature without a
secret).

Answers: 2xx delivered; 410 disables the sink; 429 and 5xx are retried
honouring ``Retry-After``; other statuses, timeouts and connection errors are
retried with backoff. The secret never leaves this object: not in logs, not in
``status()``, not in exception messages.

Owns one ``httpx.AsyncClient``; knows nothing about the hub.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import secrets
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import orjson

from bezant_trio.model import Event
from bezant_trio.sinks.interface import DeliveryError, Option, SinkDisabled, event_id
from bezant_trio.util import first_line, verifying_tls_context

if TYPE_CHECKING:
    import httpx

__all__ = ["WebhookSink", "decode_secret", "sign"]

SECRET_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError (without the secret) if bad."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("must be whsec_ followed by base64 (it is empty)")
    return key


def sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` value for one message."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _secret(value: str) -> str:
    decode_secret(value)
    return value


def _http_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"must be more than 0 seconds, got {value}")
    return value


def _headers(value: dict[Any, Any]) -> dict[str, str]:
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ValueError("must map header names to string values")
        if key.lower().startswith("webhook-") or key.lower() == "content-type":
            raise ValueError(f"must not set {key!r}: the sink sets it")
    return dict(value)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class WebhookSink:
    """POSTs each batch to ``url`` (see the module docstring)."""

    type_name = "webhook"
    options = {
        "url": Option(str, check=_http_url),
        "secret": Option(str, default=None, check=_secret, secret=True),
        "timeout": Option(float, default=10.0, check=_positive),
        "headers": Option(dict, default={}, check=_headers),
    }

    def __init__(
        self,
        name: str,
        *,
        url: str,
        secret: str | None = None,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.timeout = timeout
        self.extra_headers = dict(headers or {})
        self._key = decode_secret(secret) if secret is not None else None
        #: The status of the last answer (None before the first, or after a network error).
        self.last_http_status: int | None = None
        self._client: httpx.AsyncClient | None = None
        # Replaced by the manager's (set_cursor_space); a fresh one keeps ids
        # unique when the sink is used on its own.
        self._cursor_space = secrets.token_hex(8)
        # For messages: no userinfo, no query string (either may carry credentials).
        parts = urllib.parse.urlsplit(url)
        self._where = f"{parts.scheme}://{parts.hostname}" + (
            f":{parts.port}" if parts.port else ""
        )
        self._where += parts.path

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, url={self._where!r}, signed={self.signed})"

    @property
    def signed(self) -> bool:
        return self._key is not None

    def set_cursor_space(self, cursor_space: str) -> None:
        """The hub's cursor space, which every id is built in (see the module docstring)."""
        self._cursor_space = cursor_space

    def encode(self, batch: list[Event]) -> tuple[str, bytes]:
        """The ``webhook-id`` and the body of ``batch`` (one topic, in cursor order)."""
        space = self._cursor_space
        # Each event's wire JSON with its id put in front: '{"id":"...",' + json[1:].
        events = [
            b'{"id":' + orjson.dumps(event_id(space, event)) + b"," + event.json[1:]
            for event in batch
        ]
        body = b'{"events":[' + b",".join(events) + b"]}"
        return f"{space}:{batch[0].topic}:{batch[0].cursor}-{batch[-1].cursor}", body

    async def deliver(self, batch: list[Event]) -> None:
        """POST ``batch``; raise DeliveryError to retry, SinkDisabled on 410."""
        msg_id, body = self.encode(batch)
        timestamp = str(int(time.time()))
        headers = {
            **self.extra_headers,
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, timestamp, body)
        # httpx is imported by the first delivery: checking a config
        # (``bezant-trio check-config``) never loads it.
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, verify=verifying_tls_context()
            )
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            self.last_http_status = None
            raise DeliveryError(
                f"POST {self._where} timed out after {self.timeout:g}s; is the receiver up?"
            ) from None
        except httpx.HTTPError as exc:
            self.last_http_status = None
            raise DeliveryError(f"POST {self._where} failed: {first_line(exc)}") from None
        status = response.status_code
        self.last_http_status = status
        if 200 <= status < 300:
            return
        if status == 410:
            raise SinkDisabled(
                f"POST {self._where} answered 410 Gone: the receiver asked to stop;"
                " fix the url and reload (SIGHUP) to start again"
            )
        hint = None
        if status == 429 or status >= 500:
            hint = _retry_after(response.headers.get("retry-after"))
        raise DeliveryError(f"POST {self._where} answered HTTP {status}", retry_after=hint)

    def status(self) -> dict[str, Any]:
        """Extra fields for ``/events/_status`` (never the secret)."""
        return {"last_http_status": self.last_http_status, "signed": self.signed}

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
