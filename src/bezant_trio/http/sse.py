"""``GET /events/{topic}/stream``: a topic's events as Server-Sent Events.

Each event is one SSE message: ``id:`` its cursor, ``event:`` its topic,
``data:`` its wire JSON (the pre-encoded ``event.json`` bytes). A stream
starts after ``Last-Event-ID`` (what a reconnecting ``EventSource`` sends) or
``since`` (default 0, as for the REST poll), and reads the hub exactly like a
long-poll: from the ring, else from the log. So a client that reconnects with
its last id loses nothing, whatever happened in between.

- A cursor older than what the daemon keeps gets one ``event: gap`` message
  (payload reason ``cursor_expired``, with ``skipped_from`` and
  ``resumed_at``) whose ``id:`` is the cursor just before the oldest event
  still kept, and the stream goes on from there: only what is gone is skipped.
- ``: heartbeat`` comments every ``heartbeat`` seconds keep proxies from
  closing an idle stream.
- Memory is bounded per stream and in total: a stream reads the next chunk
  from the hub only once the previous one was handed to the socket, and a
  chunk holds at most ``chunk_bytes`` (or one event, if that is larger): the
  hub's ring and log are the buffer, not this process's heap. The number of
  events read at once follows the sizes seen, so a read back into the log
  brings no more than a chunk into memory either. All streams together
  hold at most ``read_ahead_total`` bytes of chunks: a stream waits for its
  turn when that is taken (by clients that read slowly). When streams end,
  the memory they used is handed back to the OS (``bezant_trio.memory``).
- A client so slow that one chunk takes longer than ``slow_client_timeout``
  to be accepted while more events wait for it gets a final ``: slow
  client`` comment and is disconnected; it resumes with ``Last-Event-ID``. A
  client that accepts nothing at all is dropped by the kernel
  (``TCP_USER_TIMEOUT``, see ``http.server``).
- At shutdown (``hub.closing``) every stream ends promptly with a
  ``: shutting down`` comment.

Reads the hub only; never imports the connector.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio

from bezant_trio.http.context import HttpContext
from bezant_trio.http.errors import ApiError
from bezant_trio.http.params import check_topic, int_arg, parse_int, want_topic
from bezant_trio.memory import MemoryTrimmer
from bezant_trio.model import Event, GapReason, format_ts
from bezant_trio.store.hub import Hub
from bezant_trio.wants import TooManyConids, Wants

__all__ = ["SseSettings", "SseStreams"]


@dataclass(frozen=True)
class SseSettings:
    """Timing and bounds of the SSE streams."""

    #: Seconds between ``: heartbeat`` comments on an idle stream.
    heartbeat: float = 15.0
    #: Most events read from the hub and written as one chunk.
    batch: int = 500
    #: Most bytes of events in one chunk, so in memory per stream (one larger event goes alone).
    chunk_bytes: int = 32 * 1024
    #: Most bytes of chunks all streams hold at once; the default covers 1,000 streams.
    read_ahead_total: int = 32 * 1024 * 1024
    #: A chunk the client takes longer than this to accept, with more events
    #: waiting, ends the stream with a final comment.
    slow_client_timeout: float = 10.0
    #: The ``retry:`` (milliseconds) an ``EventSource`` waits before reconnecting.
    retry_ms: int = 1000


class SseStreams:
    """The stream route and its live client count (for ``/metrics``)."""

    def __init__(
        self, settings: SseSettings | None = None, *, trimmer: MemoryTrimmer | None = None
    ) -> None:
        self.settings = settings = settings or SseSettings()
        #: Streams open right now.
        self.clients = 0
        #: Streams ended because the client was too slow (since start).
        self.slow_disconnects = 0
        #: Told when a stream ends, to give the memory it used back to the OS.
        self.trimmer = trimmer
        # One token per chunk that may be in memory at once.
        self._turns = trio.Semaphore(max(1, settings.read_ahead_total // settings.chunk_bytes))

    def install(self, app: QuartTrio, ctx: HttpContext) -> None:
        """Register ``GET /events/<topic>/stream`` on ``app``."""

        @app.get("/events/<topic>/stream")
        async def events_stream(topic: str) -> Response:
            hub = ctx.hub
            if hub is None:
                raise ApiError(
                    503, "events_disabled", "event capture is not running in this process"
                )
            check_topic(topic)
            last_event_id = request.headers.get("last-event-id")
            if last_event_id is not None and last_event_id.strip():
                since = parse_int("Last-Event-ID", last_event_id.strip(), minimum=0)
            else:
                since = int_arg("since", 0, minimum=0) or 0
            wanted = want_topic(ctx, topic)
            demand = (ctx.demand(wanted[0]), wanted[1]) if wanted is not None else None
            response = Response(
                self._frames(hub, topic, since, demand),
                status=200,
                content_type="text/event-stream; charset=utf-8",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
            # Quart's default RESPONSE_TIMEOUT (60 s) would cut every stream.
            response.timeout = None
            return response

    async def _frames(
        self, hub: Hub, topic: str, cursor: int, demand: tuple[Wants, int] | None
    ) -> AsyncIterator[bytes]:
        # No cancel scope or nursery spans a `yield` here: Quart drives this
        # generator from its own task, and Trio scopes must not cross a yield.
        settings = self.settings
        reader = _ChunkReader(hub, topic, settings)
        self.clients += 1
        try:
            yield (
                f"retry: {settings.retry_ms}\n: {topic} events after cursor {cursor}\n\n".encode()
            )
            while True:
                if demand is not None:
                    _keep_wanted(*demand)
                # Take a turn before reading: what is read stays in memory
                # until the socket has taken its chunk.
                await self._turns.acquire()
                try:
                    chunk, cursor = await reader.read(cursor)
                    if chunk:
                        handed_at = trio.current_time()
                        yield chunk
                        del chunk
                        took = trio.current_time() - handed_at
                        if took > settings.slow_client_timeout and hub.head(topic) > cursor:
                            self.slow_disconnects += 1
                            yield _slow_client(took, hub.head(topic) - cursor)
                            return
                        continue
                finally:
                    self._turns.release()
                if hub.closing:
                    yield b": shutting down; reconnect with Last-Event-ID\n\n"
                    return
                if await hub.wait(topic, cursor, settings.heartbeat, limit=settings.batch):
                    continue
                if hub.closing:
                    continue  # woken by shutdown: read what is left, then end
                yield b": heartbeat\n\n"
        finally:
            self.clients -= 1
            if self.trimmer is not None:
                self.trimmer.request()


class _ChunkReader:
    """Reads one stream's next chunk, as many events at once as ``chunk_bytes`` holds."""

    __slots__ = ("_event_size", "_hub", "_settings", "_topic")

    #: A guess at an event's size before any was read (a small order update).
    FIRST_GUESS = 1024

    def __init__(self, hub: Hub, topic: str, settings: SseSettings) -> None:
        self._hub = hub
        self._topic = topic
        self._settings = settings
        self._event_size = self.FIRST_GUESS

    async def read(self, cursor: int) -> tuple[bytes, int]:
        """The next chunk after ``cursor`` and the cursor after it (``b""``: nothing new).

        The events read are local to this call, so once it returns only the
        chunk is held while the socket takes it.
        """
        settings, hub, topic = self._settings, self._hub, self._topic
        limit = max(1, min(settings.batch, settings.chunk_bytes // self._event_size))
        answer = await hub.read(topic, cursor, limit)
        if answer.expired:
            # Go on from the oldest event still kept: only what is gone is skipped.
            # (A cursor beyond the newest comes from another cursor space, a
            # restart without the log: everything kept is new to the client.)
            resume = max(0, (answer.oldest_cursor or answer.head_cursor + 1) - 1)
            return _gap_message(hub, topic, cursor, resume), resume
        events = answer.events
        if not events:
            return b"", cursor
        taken, size = 0, 0
        for event in events:
            if taken and size + len(event.json) > settings.chunk_bytes:
                break
            size += len(event.json)
            taken += 1
        self._event_size = max(64, size // taken)
        return b"".join(map(_event_message, events[:taken])), events[taken - 1].cursor


def _slow_client(took: float, waiting: int) -> bytes:
    return (
        f": slow client: a chunk took {took:.0f} s to send and {waiting} events are "
        "waiting; reconnect with Last-Event-ID\n\n"
    ).encode()


def _keep_wanted(wants: Wants, conid: int) -> None:
    # A stream is a poll that never ends: keep its conid from going idle.
    try:
        wants.want(conid)
    except TooManyConids:
        pass  # it was wanted when the stream began; the events keep coming if it still is


def _event_message(event: Event) -> bytes:
    return b"".join(
        (
            b"id: ",
            str(event.cursor).encode(),
            b"\nevent: ",
            event.topic.encode(),
            b"\n",
            _data_lines(event.json),
            b"\n",
        )
    )


def _data_lines(data: bytes) -> bytes:
    # Gateway frames are stored as received; one that holds a newline must be
    # split over several data: lines, which the client joins back with "\n".
    if b"\n" not in data and b"\r" not in data:
        return b"data: " + data + b"\n"
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines)


def _gap_message(hub: Hub, topic: str, since: int, head: int) -> bytes:
    """The ``event: gap`` notice for a cursor the daemon no longer keeps."""
    body = orjson.dumps(
        {
            "cursor": None,
            "topic": topic,
            "received_at": format_ts(),
            "reset_epoch": hub.reset_epoch,
            "payload": {
                "reason": str(GapReason.CURSOR_EXPIRED),
                "skipped_from": since,
                "resumed_at": head,
                "new_reset_epoch": hub.reset_epoch,
            },
        }
    )
    return b"id: %d\nevent: gap\ndata: %s\n\n" % (head, body)
