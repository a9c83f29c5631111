"""The REST poll (``GET /events/{topic}``): its arguments, its hub calls, its body.

Shared by the Quart route (``http.app``) and the ASGI fast path
(``http.fastpath``), so both parse ``since``/``limit``/``wait`` with the same
code, call the hub in the same order and answer the same bytes. Reads the
hub only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bezant_trio.http.errors import ApiError
from bezant_trio.http.params import parse_int
from bezant_trio.store.hub import Hub, HubRead

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_WAIT",
    "PollArgs",
    "events_body",
    "parse_limit",
    "parse_wait",
    "poll_args",
    "read_poll",
    "should_wait",
    "wait_and_read",
]

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class PollArgs:
    """A poll's validated query: read after ``since``, at most ``limit``, wait up to ``wait`` s."""

    since: int
    limit: int
    wait: float


def poll_args(args: Mapping[str, str]) -> PollArgs:
    """``since``, ``limit`` and ``wait`` from a query; 400 ``invalid_query`` naming the bad one."""
    raw_since = args.get("since")
    since = 0 if raw_since is None else parse_int("since", raw_since, minimum=0)
    return PollArgs(since, parse_limit(args.get("limit")), parse_wait(args.get("wait")))


def parse_limit(raw: str | None) -> int:
    """``limit`` (default 100); 0 is 1 and more than 1000 is 1000, as bezant-server does."""
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(
            400,
            "invalid_query",
            f"limit must be an integer from 0 to {MAX_LIMIT} (0 counts as 1), got {raw[:40]!r}",
        )
    return max(1, min(int(raw), MAX_LIMIT))


def parse_wait(raw: str | None) -> float:
    """``wait``: long-poll seconds from 0 to 30 (default 0: answer at once)."""
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT:  # also rejects NaN
        raise ApiError(
            400, "invalid_query", f"wait must be seconds from 0 to {MAX_WAIT:g}, got {raw[:40]!r}"
        )
    return value


async def read_poll(hub: Hub, topic: str, args: PollArgs) -> HubRead:
    """Read ``topic`` after ``args.since``; with ``wait``, long-poll for a batch first."""
    answer = await hub.read(topic, args.since, args.limit)
    if should_wait(args, answer):
        answer = await wait_and_read(hub, topic, args)
    return answer


def should_wait(args: PollArgs, answer: HubRead) -> bool:
    """Whether a poll's first read calls for a long-poll: ``wait``, and fewer than ``limit``."""
    # Also with a few events ready: the hub paces hot topics into batches.
    return args.wait > 0 and not answer.expired and len(answer.events) < args.limit


async def wait_and_read(hub: Hub, topic: str, args: PollArgs) -> HubRead:
    """The long-poll: wait up to ``args.wait`` for events (or a batch), then read again."""
    await hub.wait(topic, args.since, args.wait, limit=args.limit)
    return await hub.read(topic, args.since, args.limit)


def events_body(answer: HubRead, reset_epoch: int) -> bytes:
    """The 200 body: ``{"events": [...], "next_cursor": N, "reset_epoch": E}``.

    Reuses each event's pre-encoded JSON: nothing is re-serialised per request.
    """
    return b"".join(
        (
            b'{"events":[',
            b",".join([e.json for e in answer.events]),
            b'],"next_cursor":',
            str(answer.next_cursor).encode(),
            b',"reset_epoch":',
            str(reset_epoch).encode(),
            b"}",
        )
    )
