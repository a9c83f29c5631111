"""A small REST poller for bezant-trio (and bezant-server): sync and Trio flavours.

Both follow one topic with long-polls and turn the protocol into a plain
stream of events:

- ``200``: the events; the cursor moves to ``next_cursor``.
- ``204``: caught up; poll again.
- ``412 cursor_expired``: events were dropped before we read them. The
  poller yields one synthetic event, ``{"cursor": null, "topic", ...,
  "payload": {"reason": "cursor_expired", "skipped_from", "resumed_at",
  "new_reset_epoch"}}``, and resumes with ``since = head_cursor - 1``:
  ``head_cursor`` is the oldest event still kept, so only what is gone is
  skipped. (After a restart without the durable log it is below our cursor:
  a new cursor space, read from its start.)
- ``reset_epoch`` changes (reconnects, restarts) are tracked in
  :attr:`reset_epoch`; the daemon itself puts a ``gap`` event into the
  topic for each, so the stream shows them in order.
- Connection errors and 5xx (the daemon restarting) are retried with
  backoff; other 4xx (bad token, bad topic) raise :class:`PollError`.

``state_then_follow()`` takes a topic's latest state (``/state/...``) and
positions the poller at the cursor it reflects, so following from there
loses nothing and applies nothing twice.

``bezant-trio tail`` is :func:`tail_forever` on the sync :class:`Poller`;
:class:`AsyncPoller` is the same on ``httpx.AsyncClient`` for Trio (or asyncio) bots.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson

from bezant_trio.model import GapReason, format_ts

__all__ = ["AsyncPoller", "PollError", "Poller", "tail_forever"]

log = logging.getLogger(__name__)

#: ``since`` far beyond any real cursor: the answer (412) tells the head in one request.
_PROBE_CURSOR = 999_999_999_999_999_999
_RETRY_MIN = 0.5
_RETRY_MAX = 10.0


class PollError(Exception):
    """An answer retrying cannot fix (401, 400, 404): the message says which."""


class _PollState:
    """The cursor logic both pollers share: interpret one answer, no I/O."""

    def __init__(self, topic: str, since: int | None, wait: float, limit: int) -> None:
        self.topic = topic
        self.cursor = since
        self.wait = wait
        self.limit = limit
        self.reset_epoch: int | None = None

    def params(self, since: int, wait: float) -> dict[str, Any]:
        return {"since": since, "limit": self.limit, "wait": wait}

    def head_from(self, response: httpx.Response) -> int:
        """The head cursor told by the answer to a ``since=_PROBE_CURSOR`` poll."""
        if response.status_code == 412:
            body = response.json()
            # bezant-trio says the newest; bezant-server only the oldest kept.
            return int(body.get("newest_cursor", body["head_cursor"]))
        if response.status_code == 204:
            return int(response.headers.get("x-bezant-cursor", 0))
        _raise_unless_retryable(response)
        # A topic that never had an event answers 200 with next_cursor=since.
        next_cursor = int(response.json()["next_cursor"])
        return 0 if next_cursor == _PROBE_CURSOR else next_cursor

    def accept(self, response: httpx.Response) -> list[dict[str, Any]]:
        """Apply one poll's answer; returns its events (maybe one synthetic gap)."""
        assert self.cursor is not None
        if response.status_code == 204:
            return []
        if response.status_code == 412:
            body = response.json()
            # head_cursor is the oldest event still kept: resume just before it,
            # so only what is really gone is skipped (also after a restart
            # without the log, when it is below our cursor).
            resumed = max(0, int(body["head_cursor"]) - 1)
            epoch = body.get("reset_epoch")
            gap = {
                "cursor": None,
                "topic": self.topic,
                "received_at": format_ts(),
                "reset_epoch": epoch,
                "payload": {
                    "reason": str(GapReason.CURSOR_EXPIRED),
                    "skipped_from": self.cursor,
                    "resumed_at": resumed,
                    "new_reset_epoch": epoch,
                },
            }
            self._note_epoch(epoch)
            self.cursor = resumed
            return [gap]
        _raise_unless_retryable(response)
        body = response.json()
        events = list(body["events"])
        self._note_epoch(body.get("reset_epoch"))
        self.cursor = int(body["next_cursor"])
        return events

    def state_request(self) -> tuple[str, dict[str, Any]]:
        """The path and query of the state view of this topic (docs/api.md, "State views")."""
        topic = self.topic
        if topic in ("orders", "pnl"):
            return f"/state/{topic}", {}
        family, _, conid = topic.partition(":")
        if family == "marketdata" and conid.isdigit():
            return "/state/marketdata", {"conid": conid}
        raise PollError(f"{topic} has no state view (orders, pnl and marketdata:<conid> have)")

    def take_state(self, response: httpx.Response) -> dict[str, Any]:
        """Apply a state answer: the cursor moves to what the state reflects."""
        _raise_unless_retryable(response)
        body: dict[str, Any] = response.json()
        self.cursor = int(body["cursor"])
        self._note_epoch(body.get("reset_epoch"))
        return body

    def _note_epoch(self, epoch: int | None) -> None:
        if epoch is not None and self.reset_epoch is not None and epoch != self.reset_epoch:
            log.info("%s: reset_epoch %s -> %s", self.topic, self.reset_epoch, epoch)
        if epoch is not None:
            self.reset_epoch = epoch


def _raise_unless_retryable(response: httpx.Response) -> None:
    """Raise PollError for a final 4xx; HTTPStatusError (retried) for 5xx/408/429."""
    code = response.status_code
    if 400 <= code < 500 and code not in (408, 429):
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        raise PollError(f"{response.request.url.path} answered {code}: {message}")
    response.raise_for_status()


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _backoff(delay: float) -> float:
    return min(delay * 2, _RETRY_MAX)


class _PollerBase:
    """What both pollers share: the arguments, the cursor logic, the requests they make."""

    def __init__(
        self,
        url: str,
        topic: str,
        *,
        since: int | None = None,
        token: str | None = None,
        wait: float = 25.0,
        limit: int = 1000,
        on_retry: Callable[[Exception, float], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._state = _PollState(topic, since, wait, limit)
        self._on_retry = on_retry
        self._client_options: dict[str, Any] = {
            "headers": _headers(token),
            "timeout": wait + 10,
        }

    @property
    def topic(self) -> str:
        return self._state.topic

    @property
    def cursor(self) -> int | None:
        """The cursor the next poll asks after."""
        return self._state.cursor

    @property
    def reset_epoch(self) -> int | None:
        return self._state.reset_epoch

    def _events_request(self, since: int, wait: float) -> tuple[str, dict[str, Any]]:
        return f"{self.url}/events/{self.topic}", self._state.params(since, wait)

    def _state_request(self) -> tuple[str, dict[str, Any]]:
        path, params = self._state.state_request()
        return f"{self.url}{path}", params

    def _retrying(self, exc: Exception, delay: float) -> float:
        """Report a retryable failure; the next delay."""
        if self._on_retry is not None:
            self._on_retry(exc, delay)
        return _backoff(delay)


class Poller(_PollerBase):
    """Follow ``topic`` on a bezant-trio (or bezant-server) events surface, synchronously.

    ``since=None`` starts at the head (only new events); ``since=0`` from the
    oldest event the daemon keeps.
    """

    def __init__(self, url: str, topic: str, **options: Any) -> None:
        super().__init__(url, topic, **options)
        self._client = httpx.Client(**self._client_options)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Poller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, since: int, wait: float) -> httpx.Response:
        url, params = self._events_request(since, wait)
        return self._client.get(url, params=params)

    def head(self) -> int:
        """The topic's newest cursor (0 for a topic that never had an event)."""
        return self._state.head_from(self._get(_PROBE_CURSOR, 0))

    def state_then_follow(self) -> dict[str, Any]:
        """Take the topic's latest state; iterating afterwards follows from its cursor.

        Returns the state answer (``{"cursor", "reset_epoch", "items"}``, or
        ``"item"`` for one quote). Nothing is lost or applied twice between the two.
        """
        url, params = self._state_request()
        return self._state.take_state(self._client.get(url, params=params))

    def poll(self) -> list[dict[str, Any]]:
        """One long-poll; returns events (maybe a synthetic gap) and advances the cursor."""
        if self._state.cursor is None:
            self._state.cursor = self.head()
        return self._state.accept(self._get(self._state.cursor, self._state.wait))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events forever; connection errors and 5xx are retried with backoff."""
        delay = _RETRY_MIN
        while True:
            try:
                events = self.poll()
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                next_delay = self._retrying(exc, delay)
                time.sleep(delay)
                delay = next_delay
                continue
            delay = _RETRY_MIN
            yield from events


class AsyncPoller(_PollerBase):
    """:class:`Poller` on ``httpx.AsyncClient``: ``async for event in poller``.

    Runs under Trio (and asyncio). Use it as an async context manager, or
    call :meth:`aclose`.
    """

    def __init__(self, url: str, topic: str, **options: Any) -> None:
        super().__init__(url, topic, **options)
        self._client = httpx.AsyncClient(**self._client_options)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncPoller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _get(self, since: int, wait: float) -> httpx.Response:
        url, params = self._events_request(since, wait)
        return await self._client.get(url, params=params)

    async def head(self) -> int:
        """The topic's newest cursor (0 for a topic that never had an event)."""
        return self._state.head_from(await self._get(_PROBE_CURSOR, 0))

    async def state_then_follow(self) -> dict[str, Any]:
        """Take the topic's latest state; iterating afterwards follows from its cursor."""
        url, params = self._state_request()
        return self._state.take_state(await self._client.get(url, params=params))

    async def poll(self) -> list[dict[str, Any]]:
        """One long-poll; returns events (maybe a synthetic gap) and advances the cursor."""
        if self._state.cursor is None:
            self._state.cursor = await self.head()
        return self._state.accept(await self._get(self._state.cursor, self._state.wait))

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """Events forever; connection errors and 5xx are retried with backoff."""
        import sniffio

        sleep = _async_sleep(sniffio.current_async_library())
        delay = _RETRY_MIN
        while True:
            try:
                events = await self.poll()
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                next_delay = self._retrying(exc, delay)
                await sleep(delay)
                delay = next_delay
                continue
            delay = _RETRY_MIN
            for event in events:
                yield event


def _async_sleep(library: str) -> Callable[[float], Any]:
    if library == "trio":
        import trio

        return trio.sleep
    import asyncio

    return asyncio.sleep


def tail_forever(
    url: str,
    topic: str,
    *,
    since: int | None,
    token: str | None,
    wait: float = 25.0,
    state: bool = False,
    out: Any = None,
) -> int:
    """Print ``topic``'s events as JSON lines until interrupted; 1 on a final error.

    With ``state``, the first line is the topic's latest state (``{"state": ...}``)
    and the events printed after it are those after the state's cursor.
    """
    out = out if out is not None else sys.stdout

    def report(exc: Exception, delay: float) -> None:
        print(f"bezant-trio tail: {_describe(exc)}; retrying in {delay:g} s", file=sys.stderr)

    try:
        with Poller(url, topic, since=since, token=token, wait=wait, on_retry=report) as poller:
            if state:
                out.write(orjson.dumps({"state": poller.state_then_follow()}).decode() + "\n")
                out.flush()
            for event in poller:
                out.write(orjson.dumps(event).decode() + "\n")
                out.flush()
    except PollError as exc:
        print(f"bezant-trio tail: {exc}", file=sys.stderr)
        return 1
    return 0


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.request.url.path} answered {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"
