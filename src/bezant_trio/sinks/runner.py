"""One sink's delivery task: read the hub like a REST poller, deliver, retry, advance.

A :class:`SinkRunner` drives one sink instance:

- it reads the hub from its own per-topic checkpoints, one topic's batch at a
  time, in cursor order, and advances a checkpoint only once ``deliver``
  returned (the manager stores the advanced ones, :meth:`SinkRunner.take_dirty`);
- it waits for new events with ``hub.wait`` (one small watcher per matching
  topic), never by polling reads, and picks up new matching topics as they
  appear (on ``hub.topics_changed``);
- a failed delivery is retried (same batch) with exponential backoff and
  jitter, so delivery is at-least-once; :class:`SinkDisabled` stops it;
- a checkpoint older than what the hub still holds yields a synthetic ``gap``
  event (reason ``sink_lagged``) and the sink goes on from the head.

A failing or blocked sink stalls only its own task. This module reads the hub
and calls one sink; it never publishes and never stores checkpoints itself.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
import trio

from bezant_trio.model import Event, GapReason, format_ts
from bezant_trio.sinks.interface import DeliveryError, SinkDisabled
from bezant_trio.sinks.specs import SinkSpec
from bezant_trio.util import backoff_delay, describe

if TYPE_CHECKING:
    from bezant_trio.store.hub import Hub

__all__ = ["SinkRunner"]

log = logging.getLogger(__name__)


class SinkRunner:
    """The delivery task of one sink instance, and its bookkeeping for ``status()``."""

    def __init__(
        self,
        spec: SinkSpec,
        sink: Any,
        hub: Hub,
        checkpoints: dict[str, int],
        on_progress: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.sink = sink
        self.hub = hub
        #: topic -> last cursor ``deliver`` acknowledged.
        self.checkpoints = checkpoints
        #: Checkpoints advanced since the last flush to the checkpoint store.
        self.dirty: dict[str, int] = {}
        self.delivered = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_delivered_at: str | None = None
        self.state = "starting"
        self.started = False
        #: Whether the sink's ``aclose()`` was called (it is called once).
        self.closed = False
        self.stopped = trio.Event()
        #: Set (then replaced) after every delivery, failure or state change.
        self.changed = trio.Event()
        self._on_progress = on_progress
        self._matches = spec.matcher()
        self._watched: set[str] = set()
        self._wake = trio.Event()
        self._stop = trio.Event()
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._random = random.Random()

    # -------------------------------------------------------------- control

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until stopped; started once the topics are being watched."""
        self.started = True
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._discover()
                    nursery.start_soon(self._discover_loop)
                    self.state = "running"
                    task_status.started()
                    await self._deliver_loop()
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if self.state != "disabled":
                self.state = "stopped"
            self.stopped.set()
            self._notify()

    def request_stop(self) -> None:
        """Stop after the delivery in flight (if any); pending retries are dropped."""
        self._stop.set()
        self._wake.set()

    def cancel(self) -> None:
        """Stop now, abandoning the delivery in flight (its checkpoint stays put)."""
        self._stop.set()
        self._scope.cancel()

    async def close_sink(self, deadline: float) -> None:
        """Call the sink's ``aclose()`` (once, however often asked), abandoned at ``deadline``."""
        if self.closed:
            return
        self.closed = True
        aclose = getattr(self.sink, "aclose", None)
        if not callable(aclose):
            return
        allowed = max(0.0, deadline - trio.current_time())
        with trio.move_on_at(deadline) as scope:
            try:
                await aclose()
            except Exception as exc:
                log.warning("sink %r: aclose() failed: %s", self.spec.name, describe(exc))
        if scope.cancelled_caught:
            log.warning("sink %r: aclose() took over %gs; abandoned", self.spec.name, allowed)

    def take_dirty(self) -> dict[str, int]:
        """The checkpoints advanced since the last call (the manager stores them)."""
        dirty, self.dirty = self.dirty, {}
        return dirty

    def restore_dirty(self, dirty: Mapping[str, int]) -> None:
        """Put back checkpoints whose storing failed, so the next flush stores them."""
        for topic, cursor in dirty.items():
            self.dirty.setdefault(topic, cursor)  # a newer value wins

    # -------------------------------------------------------------- status

    def topics(self) -> list[str]:
        return sorted(self._watched | {t for t in self.checkpoints if self._matches(t)})

    def lag(self) -> int:
        return sum(max(0, self.hub.head(t) - self.checkpoints.get(t, 0)) for t in self._watched)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.spec.type_name,
            "topics": list(self.spec.topics),
            "checkpoints": {t: self.checkpoints.get(t, 0) for t in self.topics()},
            "lag": self.lag(),
            "delivered": self.delivered,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_delivered_at": self.last_delivered_at,
            "state": self.state,
        }
        extra = getattr(self.sink, "status", None)
        if callable(extra):
            try:
                out["details"] = extra()
            except Exception as exc:  # a plugin's status bug must not break /_status
                out["details"] = {"error": describe(exc)}
        return out

    # -------------------------------------------------------------- topics

    def _discover(self) -> None:
        """Start a watcher for every matching topic not watched yet."""
        assert self._nursery is not None
        new = False
        for topic in self.hub.topics():
            if topic not in self._watched and self._matches(topic):
                self._watched.add(topic)
                # The head is taken now, not when the watcher first runs: an
                # event published in between must still wake the loop.
                self._nursery.start_soon(self._watch, topic, self.hub.head(topic))
                new = True
        if new:
            self._wake.set()

    async def _discover_loop(self) -> None:
        literal = not any(ch in glob for glob in self.spec.topics for ch in "*?[")
        while True:
            # Take the event before listing, so a topic born in between is not missed.
            announced = self.hub.topics_changed
            self._discover()
            if self.hub.closing or (literal and len(self._watched) == len(set(self.spec.topics))):
                return  # nothing new can match any more
            await announced.wait()

    async def _watch(self, topic: str, seen: int) -> None:
        """Wake the delivery loop whenever ``topic``'s head moves past ``seen``."""
        while True:
            if self.hub.closing:
                # hub.wait returns at once while closing: do not spin.
                await trio.sleep_forever()
            # A batch-sized limit lets the hub pace wake-ups of a hot topic
            # (at most one per WAKE_INTERVAL), so a burst is delivered in
            # batches rather than one call per event; a quiet topic wakes at once.
            await self.hub.wait(topic, seen, math.inf, limit=self.spec.batch_size)
            head = self.hub.head(topic)
            if head != seen:
                seen = head
                self._wake.set()

    # -------------------------------------------------------------- delivery

    async def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            # Re-armed before the pass: a head that moves during the pass sets it.
            wake = self._wake = trio.Event()
            progressed = False
            for topic in sorted(self._watched):
                if self._stop.is_set() or self.state == "disabled":
                    return
                if await self._step(topic):
                    progressed = True
            if self.state == "disabled":
                return
            if not progressed:
                await wake.wait()

    async def _step(self, topic: str) -> bool:
        """Deliver at most one batch of ``topic``; True if the checkpoint moved."""
        since = self.checkpoints.get(topic, 0)
        if self.hub.head(topic) == since:
            return False
        attempt = 0
        while True:
            try:
                read = await self.hub.read(topic, since, self.spec.batch_size)
                break
            except Exception as exc:  # a log read error: back off like a failed delivery
                self._record_failure(exc)
                if not await self._pause(self._delay(attempt, None)):
                    return False
                attempt += 1
        if read.expired:
            # Go on from the oldest event still kept: only what is gone is skipped.
            oldest = read.oldest_cursor if read.oldest_cursor is not None else read.head_cursor + 1
            # (Below the checkpoint when it came from before a restart without the log.)
            upto = oldest - 1
            batch = [self._lagged_gap(topic, since, upto)]
        elif read.events:
            batch = read.events
            upto = read.events[-1].cursor
        else:
            return False
        if not await self._deliver(batch):
            return False
        self.checkpoints[topic] = upto
        self.dirty[topic] = upto
        self._on_progress()
        return True

    def _lagged_gap(self, topic: str, since: int, head: int) -> Event:
        log.warning(
            "sink %r is behind what the hub keeps for %r (checkpoint %d); resuming at %d",
            self.spec.name,
            topic,
            since,
            head,
        )
        payload = orjson.dumps(
            {
                "reason": str(GapReason.SINK_LAGGED),
                "new_reset_epoch": self.hub.reset_epoch,
                "skipped_from": since,
                "resumed_at": head,
            }
        )
        return Event.build(topic, head, format_ts(), self.hub.reset_epoch, payload)

    async def _deliver(self, batch: list[Event]) -> bool:
        """Deliver ``batch`` until it is taken; False if stopped or disabled first."""
        attempt = 0
        while True:
            try:
                await self.sink.deliver(batch)
            except SinkDisabled as exc:
                self.failures += 1
                self.last_error = describe(exc)
                self.state = "disabled"
                log.error("sink %r disabled: %s", self.spec.name, self.last_error)
                self._notify()
                return False
            except Exception as exc:
                self._record_failure(exc, batch)
                retry_after = exc.retry_after if isinstance(exc, DeliveryError) else None
                if not await self._pause(self._delay(attempt, retry_after)):
                    return False
                attempt += 1
                continue
            self.delivered += len(batch)
            self.last_delivered_at = format_ts()
            self._notify()
            if attempt:
                log.info("sink %r delivers again", self.spec.name)
            self.state = "running"
            return True

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _record_failure(self, exc: BaseException, batch: list[Event] | None = None) -> None:
        self.failures += 1
        self.last_error = describe(exc)
        self.state = "retrying"
        self._notify()
        if batch:
            log.warning(
                "sink %r: delivering %s %d-%d failed, will retry: %s",
                self.spec.name,
                batch[0].topic,
                batch[0].cursor,
                batch[-1].cursor,
                self.last_error,
            )
        else:
            log.warning(
                "sink %r: reading the hub failed, will retry: %s", self.spec.name, self.last_error
            )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry ``attempt`` + 1 (0-based): ``retry_after``, or backoff."""
        low, high = self.spec.retry_min, self.spec.retry_max
        if retry_after is not None:
            return min(max(retry_after, 0.0), high)
        # Jitter spreads retries of many sinks hitting one receiver; never below min.
        return max(low, backoff_delay(attempt + 1, low, high, self._random))

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` unless asked to stop; True to go on."""
        with trio.move_on_after(delay):
            await self._stop.wait()
        return not self._stop.is_set()
