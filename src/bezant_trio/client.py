"""A small REST poller for bezant-trio: sync (httpx) and Trio flavours.

``Poller`` follows one topic with long-polls, handles 204 (caught up), 412
(cursor expired: it yields a synthetic ``gap`` line and resumes at the head)
and epoch changes, so a bot only sees a stream of events.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from bezant_trio.model import GapReason, format_ts

__all__ = ["Poller", "tail_forever"]


class Poller:
    """Follow ``topic`` on a bezant-trio (or bezant-server) events surface."""

    def __init__(
        self,
        url: str,
        topic: str,
        *,
        since: int | None = None,
        token: str | None = None,
        wait: float = 25.0,
        limit: int = 1000,
    ) -> None:
        self.url = url.rstrip("/")
        self.topic = topic
        self.cursor = since
        self.wait = wait
        self.limit = limit
        self.reset_epoch: int | None = None
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(headers=headers, timeout=wait + 10)

    def close(self) -> None:
        self._client.close()

    def _get(self, since: int, wait: float) -> httpx.Response:
        return self._client.get(
            f"{self.url}/events/{self.topic}",
            params={"since": since, "limit": self.limit, "wait": wait},
        )

    def head(self) -> int:
        """The topic's newest cursor (from a 204's ``x-bezant-cursor`` or the last event)."""
        cursor = 0
        while True:
            response = self._get(cursor, 0)
            if response.status_code == 204:
                return int(response.headers.get("x-bezant-cursor", cursor))
            if response.status_code == 412:
                cursor = int(response.json()["head_cursor"])
                continue
            response.raise_for_status()
            body = response.json()
            if not body["events"]:
                return int(body["next_cursor"])
            cursor = int(body["next_cursor"])

    def poll(self) -> list[dict[str, Any]]:
        """One long-poll; returns events (maybe a synthetic gap) and advances the cursor."""
        if self.cursor is None:
            self.cursor = self.head()
        response = self._get(self.cursor, self.wait)
        if response.status_code == 204:
            return []
        if response.status_code == 412:
            body = response.json()
            head = int(body["head_cursor"])
            gap = {
                "cursor": None,
                "topic": self.topic,
                "received_at": format_ts(),
                "reset_epoch": body.get("reset_epoch"),
                "payload": {
                    "reason": str(GapReason.CURSOR_EXPIRED),
                    "skipped_from": self.cursor,
                    "resumed_at": head,
                    "new_reset_epoch": body.get("reset_epoch"),
                },
            }
            self.cursor = head
            return [gap]
        response.raise_for_status()
        body = response.json()
        self.reset_epoch = body.get("reset_epoch")
        self.cursor = int(body["next_cursor"])
        return list(body["events"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events forever; transient connection errors are retried with backoff."""
        delay = 0.5
        while True:
            try:
                events = self.poll()
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                print(f"bezant-trio tail: {type(exc).__name__}: {exc}; retrying", file=sys.stderr)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            yield from events


def tail_forever(url: str, topic: str, *, since: int | None, token: str | None, wait: float) -> int:
    """Print ``topic``'s events as JSON lines until interrupted."""
    poller = Poller(url, topic, since=since, token=token, wait=wait)
    try:
        for event in poller:
            sys.stdout.write(orjson.dumps(event).decode() + "\n")
            sys.stdout.flush()
    finally:
        poller.close()
    return 0
