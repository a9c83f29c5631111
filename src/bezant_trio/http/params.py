"""Request parameters shared by the routes: topic names, integers, conids, the token.

Every check raises :class:`ApiError` with a message naming the parameter, so
bad input answers 400 with the error envelope, never a stack trace.
"""

from __future__ import annotations

import hmac

from quart import request

from bezant_trio.http.context import HttpContext
from bezant_trio.http.errors import ApiError
from bezant_trio.model import TOPIC_RE, wanted_conid
from bezant_trio.wants import TooManyConids, Wants

__all__ = [
    "OPEN_PATHS",
    "bearer_matches",
    "check_topic",
    "int_arg",
    "parse_int",
    "want_conid",
    "want_topic",
]

#: Paths answered without the token and without the Host check: health probes
#: carry neither, and what they answer tells a page nothing worth reading.
OPEN_PATHS = frozenset(("/health", "/health/live", "/health/ready"))


def check_topic(topic: str) -> None:
    """400 ``invalid_topic`` unless ``topic`` is a well-formed topic name."""
    if not TOPIC_RE.match(topic):
        raise ApiError(
            400,
            "invalid_topic",
            "topic must look like 'orders' or 'marketdata:265598' (lowercase family, optional ':key')",
        )


def want_topic(ctx: HttpContext, topic: str) -> tuple[str, int] | None:
    """Record a reader's want of a per-instrument topic's conid; 429 past the limit.

    Returns ``(family, conid)``, or None for a topic that is not per instrument.
    """
    found = wanted_conid(topic)
    if found is not None:
        want_conid(ctx.demand(found[0]), found[1])
    return found


def want_conid(wants: Wants, conid: int) -> None:
    """Record that a reader wants ``conid``; 429 ``too_many_conids`` past the limit."""
    try:
        wants.want(conid)
    except TooManyConids as exc:
        raise ApiError(429, "too_many_conids", str(exc)) from None


def parse_int(name: str, raw: str, *, minimum: int) -> int:
    """``raw`` as an integer >= ``minimum`` (at most 18 digits); 400 naming ``name`` if not."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < minimum:
        raise ApiError(
            400, "invalid_query", f"{name} must be an integer >= {minimum}, got {raw[:40]!r}"
        )
    return int(raw)


def int_arg(name: str, default: int | None, *, minimum: int) -> int | None:
    """The query parameter ``name`` as an integer, or ``default`` when absent."""
    raw = request.args.get(name)
    if raw is None:
        return default
    return parse_int(name, raw, minimum=minimum)


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>``, in constant time."""
    scheme, _, presented = authorization.partition(" ")
    # Compare even a malformed header against the token so the timing and
    # the answer do not tell a missing header from a wrong token.
    ok = hmac.compare_digest(presented.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and ok
