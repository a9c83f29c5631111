"""The HTTP surface's bounds, and the answers given at them.

Every resource a client can make the daemon hold is bounded, so that no
client, however many connections or streams it opens, can exhaust file
descriptors or memory, or keep ``/health`` from answering:

- **connections** (``http.max_connections``): beyond the cap a connection is
  still accepted into a small reserve (:data:`RESERVE`), where ``/health``
  is answered and everything else gets ``503 too_many_connections`` with
  ``Retry-After``; over HTTP/1.1 a reserve connection is closed after each
  answer, and any reserve connection after :data:`RESERVE_IDLE` seconds
  idle. Beyond the reserve a connection is closed as soon as it is
  accepted: the process never holds more descriptors than the caps, and a
  health check never waits behind a queue of connections.
- **streams** (``http.max_streams``): requests being answered at once, over
  all connections (HTTP/1.1 requests, HTTP/2 streams, long-polls and SSE
  alike). Beyond the cap: ``503 too_many_streams`` with ``Retry-After``,
  except for ``/health``, which has :data:`RESERVE` streams of its own.
- **request bodies**: no route takes one. A body is dropped as it arrives;
  one larger than :data:`MAX_BODY` bytes, or still arriving
  :data:`BODY_TIMEOUT` seconds after the request began, ends the request:
  ``413 payload_too_large`` or ``408 body_timeout`` if nothing was answered
  yet, else the response is cut off.

Which layer enforces what: ``http.server`` counts connections and picks the
reserve; ``http.gate`` does the rest, in front of the fast path and Quart.
Data and answers only; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

__all__ = [
    "BODY_TIMEOUT",
    "MAX_BODY",
    "REFUSAL_REASONS",
    "RESERVE",
    "RESERVE_IDLE",
    "RETRY_AFTER",
    "HttpLimits",
    "Refusal",
    "body_timeout",
    "body_too_large",
    "too_many_connections",
    "too_many_streams",
]

#: Connections beyond ``max_connections``, and streams beyond ``max_streams``,
#: kept so that ``/health`` answers while the caps are reached.
RESERVE = 16
#: Seconds a connection in the reserve may stay idle (normal ones: Hypercorn's keep-alive).
RESERVE_IDLE = 1.0
#: The most bytes of request body the daemon reads (and drops) before ending the request.
MAX_BODY = 64 * 1024
#: Seconds after a request began by which its body must have ended.
BODY_TIMEOUT = 10.0
#: What a ``503`` at a cap asks the client to wait, in seconds.
RETRY_AFTER = 5


@dataclass(frozen=True)
class HttpLimits:
    """The caps of one HTTP service (``http.max_connections``, ``http.max_streams``)."""

    max_connections: int = 1000
    max_streams: int = 1000
    reserve: int = RESERVE
    max_body: int = MAX_BODY
    body_timeout: float = BODY_TIMEOUT
    retry_after: int = RETRY_AFTER


@dataclass(frozen=True)
class Refusal:
    """An error answer given before any route runs: status, envelope, extra headers."""

    status: int
    code: str
    message: str
    #: ``Retry-After`` seconds, for the 503s at a cap.
    retry_after: int | None = None
    #: The counter it is reported under (``bezant_http_refused_total{reason=...}``).
    reason: str = ""

    def body(self) -> bytes:
        return orjson.dumps({"code": self.code, "message": self.message})

    def headers(self, http_version: str) -> list[tuple[bytes, bytes]]:
        """Headers as Quart's error answers send them, plus ``Retry-After`` and, over
        HTTP/1.x, ``Connection: close`` (HTTP/2 forbids the header; its stream just ends)."""
        body = self.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if self.retry_after is not None:
            headers.append((b"retry-after", b"%d" % self.retry_after))
        if http_version in ("1.0", "1.1"):
            headers.append((b"connection", b"close"))
        return headers


def too_many_connections(limits: HttpLimits) -> Refusal:
    return Refusal(
        503,
        "too_many_connections",
        f"the daemon serves at most {limits.max_connections} connections at once "
        f"(http.max_connections); retry in {limits.retry_after} s",
        limits.retry_after,
        "max_connections",
    )


def too_many_streams(limits: HttpLimits) -> Refusal:
    return Refusal(
        503,
        "too_many_streams",
        f"the daemon answers at most {limits.max_streams} requests at once, long-polls and "
        f"streams included (http.max_streams); retry in {limits.retry_after} s",
        limits.retry_after,
        "max_streams",
    )


def body_too_large(limits: HttpLimits) -> Refusal:
    return Refusal(
        413,
        "payload_too_large",
        f"requests to this API carry no body; this one sent more than {limits.max_body} bytes",
        reason="body_too_large",
    )


def body_timeout(limits: HttpLimits) -> Refusal:
    return Refusal(
        408,
        "body_timeout",
        f"requests to this API carry no body; this one was still sending one "
        f"{limits.body_timeout:g} s after it began",
        reason="body_timeout",
    )


#: Every ``reason`` a refusal is counted under (the metric's label values).
REFUSAL_REASONS = ("max_connections", "max_streams", "body_too_large", "body_timeout")
