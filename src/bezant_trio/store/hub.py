"""The hub: assigns cursors, owns the rings, the epoch and the log writer.

Everything captured goes through :meth:`Hub.publish`; everything served
(HTTP, SSE, sinks) comes out of :meth:`Hub.read` and :meth:`Hub.wait`. The hub
knows nothing about the gateway protocol or HTTP.

Visibility rule: with the durable log on, an event becomes visible to readers
only once the transaction holding it has committed, so a cursor handed to a
reader always maps to the same event, even after ``kill -9``. If the log
fails while running (disk full, I/O error) the hub goes *degraded*: events
are made visible from memory and kept in a backlog the writer retries.
Because those cursors were shown before they were durable, a start after an
unclean stop moves every topic's cursor ahead by :data:`UNCLEAN_CURSOR_SKIP`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from bezant_trio.model import GAP_TOPIC, Event, GapReason, encode_payload
from bezant_trio.store.checkpoints import CheckpointStore, MemoryCheckpoints, SqliteCheckpoints
from bezant_trio.store.ring import ReadStatus, TopicRing
from bezant_trio.store.state import SNAPSHOT_KEY, StateViews
from bezant_trio.util import describe

if TYPE_CHECKING:
    from bezant_trio.store.log import EventLog

__all__ = ["UNCLEAN_CURSOR_SKIP", "Hub", "HubRead"]

log = logging.getLogger(__name__)

#: How far cursors jump after an unclean stop (see the module docstring).
UNCLEAN_CURSOR_SKIP = 1_000_000
#: At most this many events go into one log transaction, of all topics. The
#: writer commits whatever is pending when it is free, so a batch is as large
#: as what arrived during the previous commit: one event at a low rate (it is
#: visible at once), thousands in a burst (one transaction for all of them).
MAX_BATCH = 5000
#: ... and at most this share of a topic's ring: a batch larger than its ring
#: would push its own events out of memory before any reader saw them there,
#: sending every reader to the log.
MAX_BATCH_RING_SHARE = 0.5
#: Seconds between WAL checkpoints (:meth:`Hub.run_checkpoints`) while commits happen.
CHECKPOINT_INTERVAL = 1.0
#: A batch of at most this many events is committed on the Trio thread itself
#: (with ``synchronous: normal`` a commit writes the WAL and does not fsync: tens
#: of µs), when the writer is free: no hand-over to a worker thread and back,
#: each a wake-up the OS schedules, on the path of every event at a low rate.
#: Larger batches (a burst) go to a worker thread, so reading the socket goes on.
INLINE_COMMIT_MAX = 16
#: ... and only while the last commit took at most this long (seconds): a disk
#: that turns slow (an SD card throttling its writes, a device that stalls) gets
#: its commits in a worker thread again, so its stalls never hold up the loop.
INLINE_COMMIT_LATENCY_MAX = 0.002
#: Seconds between saves of the state views into the log (and at a clean stop).
STATE_SAVE_INTERVAL = 30.0
#: Pending (not yet committed) events above which publishers are asked to wait.
MAX_PENDING = 50_000
#: A reader asking for a batch (``limit`` > 1) that comes back within this long
#: of the topic's previous answer, while fewer than ``limit`` events are ready,
#: is held until the interval is over: under load each request then carries a
#: batch instead of one event, and a quiet topic still answers at once.
#: 0.5 ms: at 2 ms the pacing itself was the SSE latency floor (p50 2.5 ms at
#: 1,000 events/s; 0.75 ms at 0.5 ms, bench/ANALYSIS.md). Since the connector
#: reads whole socket buffers, a busy reader finds full batches ready anyway.
WAKE_INTERVAL = 0.0005
#: Only a hot topic is paced: one whose events arrive faster than this many
#: per second (measured between its answers). Below it every request already
#: carries what there is, and holding one would only add latency.
HOT_RATE = 2 / WAKE_INTERVAL


@dataclass(frozen=True, slots=True)
class HubRead:
    """The answer to a read: events after ``since``, or why there are none."""

    events: list[Event]
    #: The cursor to poll with next (the last event's, or ``since``).
    next_cursor: int
    #: The newest visible cursor of the topic (0 if it never had an event).
    head_cursor: int
    #: Events after ``since`` are gone (retention, ring eviction without log, or
    #: a cursor from another cursor space).
    expired: bool = False
    #: Whether the topic has ever had an event.
    known: bool = True
    #: When expired: the oldest cursor that can still be served (bezant-server's
    #: ``head_cursor``); resuming with ``since = oldest_cursor - 1`` loses only
    #: what is really gone. It may not be assigned yet (everything was pruned).
    oldest_cursor: int | None = None
    #: When expired: ``since`` was beyond the newest cursor, so it belongs to
    #: another cursor space (the daemon restarted without its durable log).
    ahead: bool = False


class _Timestamps:
    """RFC 3339 ms timestamps, formatting the seconds part once per second."""

    __slots__ = ("_last", "_prefix", "_sec", "ms")

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""
        #: Epoch milliseconds of the last :meth:`now` (the log stores them too).
        self.ms = -1
        self._last = ""

    def now(self) -> str:
        ms = int(time.time() * 1000)
        if ms == self.ms:  # the events of one millisecond share one string
            return self._last
        self.ms = ms
        sec, millis = divmod(ms, 1000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        self._last = f"{self._prefix}{millis:03d}Z"
        return self._last


@dataclass
class _LogState:
    degraded: bool = False
    last_error: str | None = None
    last_commit_at: str | None = None
    commit_latency_ms: float | None = None
    commits: int = 0
    committed_events: int = 0
    #: Events made visible without being durable (degraded mode), to retry.
    backlog: list[Event] = field(default_factory=list)


class Hub:
    """Per-topic cursor logs in memory, optionally backed by an ``EventLog``.

    ``capacity_for`` maps a topic to its ring capacity. ``event_log`` is the
    durable log (``None`` for memory only); its methods are called off the
    Trio thread. Sink checkpoints are kept next to the events, in
    :attr:`checkpoints`.
    """

    def __init__(
        self,
        capacity_for: Callable[[str], int],
        *,
        event_log: EventLog | None = None,
        state: StateViews | None = None,
    ) -> None:
        self._capacity_for = capacity_for
        self.event_log = event_log
        #: Latest-state views (orders, quotes, PnL), fed with every event made visible.
        self.state = state if state is not None else StateViews()
        self._observe = self.state.observe
        self._state_saved_at = 0.0
        #: Where sink checkpoints live: in the log's table, or in memory without a log.
        self.checkpoints: CheckpointStore = (
            SqliteCheckpoints(event_log) if event_log is not None else MemoryCheckpoints()
        )
        self._rings: dict[str, TopicRing] = {}
        #: Next cursor to assign, per topic (cursor of the last *assigned* event).
        self._assigned: dict[str, int] = {}
        self._wakeups: dict[str, trio.Event] = {}
        #: Events waiting for the writer, per topic in cursor order (not visible yet).
        self._pending: dict[str, list[Event]] = {}
        #: The batch being committed right now (older than what is in ``_pending``).
        self._in_flight: dict[str, list[Event]] | None = None
        #: Events not visible yet: pending plus in flight.
        self._pending_count = 0
        #: Per topic, the most events one commit may take (see MAX_BATCH_RING_SHARE).
        self._batch_caps: dict[str, int] = {}
        self._pending_ready = trio.Event()
        self._pending_drained = trio.Event()
        self._ts = _Timestamps()
        self._closing = False
        self.reset_epoch = 0
        #: Names the cursor space, so ids built from cursors stay unique across
        #: restarts: one per log file (kept in its ``meta`` table by :meth:`open`),
        #: or this fresh one per process without a log (cursors restart at 1).
        self.cursor_space = secrets.token_hex(8)
        self.started_at = time.time()
        self.published: dict[str, int] = {}
        #: Readers parked in :meth:`wait` right now (long-polls, sinks, SSE).
        self.waiting = 0
        #: Per topic: when a batch reader was last answered, the head then, and
        #: the topic's arrival rate between answers (events/s; see HOT_RATE).
        self._answered_at: dict[str, tuple[float, int, float]] = {}
        #: Commits since the last WAL checkpoint (see run_checkpoints).
        self._commits_since_checkpoint = 0
        #: How long the last commit took (s): inline commits only while it is short.
        self._last_commit_latency = 0.0
        self._committed_event = trio.Event()
        self.log_state = _LogState()
        self._log_stats: Any = None
        self._log_stats_at = 0.0
        #: Set (then replaced) when a topic gets its first visible event.
        self.topics_changed = trio.Event()
        #: Called with (latency_seconds, event_count) after every commit (metrics).
        self.commit_observers: list[Callable[[float, int], None]] = []

    # ------------------------------------------------------------------ start

    async def open(self, *, start_epoch: int | None = None) -> None:
        """Load state from the log (if any), bump the epoch, inject restart gaps.

        Without a log the epoch starts at 1 and no gap is injected. With one,
        cursors continue from the log, the rings are warmed from its newest
        events, and a ``process_restart`` gap goes into every known topic if
        the log held anything.
        """
        if self.event_log is None:
            self.reset_epoch = start_epoch if start_epoch is not None else 1
            return
        elog = self.event_log
        state = await trio.to_thread.run_sync(_load_log_state, elog, self._capacity_for)
        unclean = state["run_state"] == "running"
        skip = UNCLEAN_CURSOR_SKIP if unclean and not state["empty"] else 0
        for topic, last in state["last_cursors"].items():
            newest = state["newest"].get(topic, [])
            # With no rows left (retention removed them all) the ring starts
            # empty at the topic's last cursor, so the cursor space continues.
            ring = TopicRing(topic, self._capacity_for(topic), last_cursor=0 if newest else last)
            for event in newest:
                ring.append(event)
            self._rings[topic] = ring
            self._assigned[topic] = last + skip
        await self._rebuild_state()
        self.reset_epoch = max(state["epoch"], start_epoch or 0) + 1
        new_space = state["cursor_space"] is None
        self.cursor_space = state["cursor_space"] or self.cursor_space
        await trio.to_thread.run_sync(
            _mark_running, elog, self.reset_epoch, self.cursor_space if new_space else None
        )
        if unclean:
            log.warning(
                "the event log was not closed cleanly; cursors continue %d past the last "
                "committed one so none shown before the crash is reused",
                skip,
            )
        if not state["empty"]:
            self._inject_gaps(GapReason.PROCESS_RESTART, disconnected_at=None)
        await self._refresh_log_stats(force=True)

    async def _rebuild_state(self) -> None:
        """The state views as they were: the snapshot saved in the log, then the events after it.

        Runs before anything new becomes visible (no writer yet), so the
        views continue exactly at the rings' heads.
        """
        elog = self.event_log
        assert elog is not None
        views = self.state
        for view in views.views():
            blob = await trio.to_thread.run_sync(elog.get_meta, SNAPSHOT_KEY.format(view.topic))
            if blob is not None:
                try:
                    view.restore(blob)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("state snapshot of %s unreadable, rebuilding: %s", view.topic, exc)
                    view.reset()
            while view.topic in self._rings:
                answer = await self.read(view.topic, view.cursor, 1000)
                if answer.expired:  # older than the log keeps: start from what is kept
                    view.cursor = (answer.oldest_cursor or 1) - 1
                    continue
                if not answer.events:
                    break
                for event in answer.events:
                    views.observe(event)
        for topic, ring in self._rings.items():
            if topic.startswith("marketdata:"):  # quotes come back from the warmed rings
                for event in ring.events():
                    views.observe(event)

    async def _save_state(self) -> None:
        """Save the order and PnL views into the log's meta table (their cursors included)."""
        elog = self.event_log
        if elog is None:
            return
        self._state_saved_at = time.monotonic()
        blobs = [(SNAPSHOT_KEY.format(v.topic), v.snapshot().decode()) for v in self.state.views()]
        try:
            for key, blob in blobs:
                await trio.to_thread.run_sync(elog.set_meta, key, blob)
        except Exception as exc:  # the views are rebuilt from the events next time anyway
            log.warning("saving the state views failed: %s", describe(exc))

    async def close(self) -> None:
        """Wake every waiter, flush what is pending and mark the log clean."""
        self._closing = True
        self.topics_changed.set()
        for event in self._wakeups.values():
            event.set()
        self._wakeups.clear()
        if self.event_log is not None:
            with trio.move_on_after(30):
                while self._pending_count and not self.log_state.degraded:
                    drained = self._drained_event()
                    self._pending_ready.set()
                    await drained.wait()
            if not self._pending_count and not self.log_state.backlog:
                await self._save_state()
                await trio.to_thread.run_sync(_mark_clean, self.event_log)

    @property
    def closing(self) -> bool:
        return self._closing

    # ---------------------------------------------------------------- publish

    def publish(self, topic: str, payload: Any) -> Event:
        """Capture ``payload`` (any JSON-able object) under ``topic``."""
        return self.publish_json(topic, encode_payload(payload))

    def publish_json(self, topic: str, payload_json: bytes, decoded: Any = None) -> Event:
        """Capture an already-encoded JSON payload (a gateway frame's bytes).

        Never blocks. With the log on, the event becomes visible once its batch
        commits; callers that produce fast should ``await wait_writable()``.
        ``decoded`` is the payload already decoded (the connector has it), which
        the hub then owns: without the log, the state views take it instead of
        decoding the bytes again. With the log they decode at visibility, so
        nothing decoded is held while events wait for their commit.
        """
        cursor = self._assigned.get(topic, 0) + 1
        self._assigned[topic] = cursor
        ts = self._ts
        event = Event.build(topic, cursor, ts.now(), self.reset_epoch, payload_json, ts.ms)
        self.published[topic] = self.published.get(topic, 0) + 1
        if self.event_log is None or self.log_state.degraded:
            if self.log_state.degraded:
                self.log_state.backlog.append(event)
            ring = self._rings.get(topic)
            if ring is None:
                self._make_visible((event,))
            else:
                # The per-frame path of memory-only capture: no set, no loop.
                ring.append(event)
                self._observe(event, decoded)
                waiter = self._wakeups.pop(topic, None)
                if waiter is not None:
                    waiter.set()
        else:
            queue = self._pending.get(topic)
            if queue is None:
                self._pending[topic] = [event]
            else:
                queue.append(event)
            self._pending_count += 1
            if self._pending_count == 1:
                self._pending_ready.set()
        return event

    @property
    def pending(self) -> int:
        """Events waiting for the log writer (not yet visible)."""
        return self._pending_count

    @property
    def backpressure(self) -> bool:
        """Whether publishers should ``await wait_writable()`` before going on."""
        return self._pending_count > MAX_PENDING

    async def wait_writable(self) -> None:
        """Wait while too many events are waiting for the log writer."""
        while self._pending_count > MAX_PENDING and not self._closing:
            await self._drained_event().wait()

    def _drained_event(self) -> trio.Event:
        # One shared event per drain: every waiter waits on the one the writer sets.
        if self._pending_drained.is_set():
            self._pending_drained = trio.Event()
        return self._pending_drained

    def _make_visible(self, events: Iterable[Event]) -> None:
        rings = self._rings
        observe = self._observe
        touched: set[str] = set()
        new_topic = False
        for event in events:
            ring = rings.get(event.topic)
            if ring is None:
                ring = rings[event.topic] = TopicRing(event.topic, self._capacity_for(event.topic))
                new_topic = True
            ring.append(event)
            observe(event)
            touched.add(event.topic)
        if new_topic:
            self.topics_changed.set()
            self.topics_changed = trio.Event()
        wakeups = self._wakeups
        for topic in touched:
            waiter = wakeups.pop(topic, None)
            if waiter is not None:
                waiter.set()

    # ------------------------------------------------------------------ epoch

    async def bump_epoch(
        self,
        reason: GapReason,
        *,
        disconnected_at: str | None = None,
        reconnected_at: str | None = None,
    ) -> int:
        """Start a new epoch and inject a gap event into every known topic and ``gap``."""
        self.reset_epoch += 1
        if self.event_log is not None:
            try:
                await trio.to_thread.run_sync(self.event_log.store_epoch, self.reset_epoch)
            except Exception as exc:  # any log failure degrades, never stops capture
                self._enter_degraded(exc)
        self._inject_gaps(reason, disconnected_at=disconnected_at, reconnected_at=reconnected_at)
        return self.reset_epoch

    def _inject_gaps(
        self,
        reason: GapReason,
        *,
        disconnected_at: str | None,
        reconnected_at: str | None = None,
    ) -> None:
        now = self._ts.now()
        payload = encode_payload(
            {
                "reason": str(reason),
                "new_reset_epoch": self.reset_epoch,
                "disconnected_at": disconnected_at,
                "reconnected_at": reconnected_at or now,
            }
        )
        for topic in sorted(self._assigned):
            if topic != GAP_TOPIC:
                self.publish_json(topic, payload)
        self.publish_json(GAP_TOPIC, payload)

    # ------------------------------------------------------------------ reads

    def head(self, topic: str) -> int:
        """The newest visible cursor of ``topic`` (0 if none)."""
        ring = self._rings.get(topic)
        return ring.last if ring is not None else 0

    def assigned(self, topic: str) -> int:
        """The newest cursor given to an event of ``topic``, visible or not yet (0 if none)."""
        return self._assigned.get(topic, 0)

    def published_since(self, topic: str, since: int) -> list[Event]:
        """Events of ``topic`` published after cursor ``since``, visible or still
        waiting for their commit, oldest first; from memory only (what the ring
        no longer holds is not among them)."""
        found: dict[int, Event] = {}
        ring = self._rings.get(topic)
        if ring is not None and len(ring):
            start = max(since, ring.first - 1)
            for event in ring.read_since(start, len(ring)).events:
                found[event.cursor] = event
        in_flight = self._in_flight or {}
        for queue in (in_flight.get(topic, ()), self._pending.get(topic, ())):
            for event in queue:
                if event.cursor > since:
                    found[event.cursor] = event
        return [found[cursor] for cursor in sorted(found)]

    def topics(self) -> list[str]:
        """Every topic that has visible events, sorted."""
        return sorted(self._rings)

    async def read(self, topic: str, since: int, limit: int) -> HubRead:
        """Events of ``topic`` with cursor strictly after ``since`` (at most ``limit``).

        Served from the ring when ``since`` is within it, else from the log.
        """
        ring = self._rings.get(topic)
        if ring is None:
            return HubRead([], since, 0, known=False)
        answer = ring.read_since(since, limit)
        if answer.status is ReadStatus.OK:
            events = answer.events
            return HubRead(events, events[-1].cursor if events else since, ring.last)
        elog = self.event_log
        if answer.status is ReadStatus.AHEAD:
            oldest = ring.first
            if elog is not None:
                oldest = await trio.to_thread.run_sync(elog.pruned_upto, topic) + 1
            return HubRead([], since, ring.last, expired=True, oldest_cursor=oldest, ahead=True)
        if elog is None:
            return HubRead([], since, ring.last, expired=True, oldest_cursor=ring.first)
        events, pruned_upto = await trio.to_thread.run_sync(_read_log, elog, topic, since, limit)
        if pruned_upto > since:
            # Retention keeps an unbroken run of cursors above what it pruned.
            return HubRead([], since, ring.last, expired=True, oldest_cursor=pruned_upto + 1)
        # The log may hold committed events the ring does not show yet; never
        # hand out more than is visible, so responses stay monotonic.
        events = [e for e in events if e.cursor <= ring.last]
        return HubRead(events, events[-1].cursor if events else since, ring.last)

    async def history(
        self,
        topic: str,
        *,
        since_ts: float | None = None,
        since_cursor: int | None = None,
        limit: int = 500,
    ) -> list[Event]:
        """Events of ``topic`` from the durable log, by received time and/or cursor.

        Both bounds are exclusive; with neither, from the oldest event kept.
        Only what is visible is returned (a committed event the ring does not
        show yet is left for the next call). Needs the log: raises
        ``RuntimeError`` without one (callers check :attr:`event_log`).
        """
        elog = self.event_log
        if elog is None:
            raise RuntimeError("history needs the durable log")
        events = await trio.to_thread.run_sync(
            lambda: elog.history(topic, since_ts=since_ts, since_cursor=since_cursor, limit=limit)
        )
        head = self.head(topic)
        return [e for e in events if e.cursor <= head]

    async def wait(self, topic: str, since: int, timeout: float, *, limit: int = 1) -> bool:
        """Wait up to ``timeout`` seconds for an event after ``since``; True if one exists.

        Returns early (False) when the hub is closing, so long-polls end at shutdown.
        """
        if self.head(topic) <= since:
            self.waiting += 1
            try:
                with trio.move_on_after(timeout):
                    while self.head(topic) <= since and not self._closing:
                        waiter = self._wakeups.get(topic)
                        if waiter is None:
                            waiter = self._wakeups[topic] = trio.Event()
                        await waiter.wait()
            finally:
                self.waiting -= 1
                self._forget_wakeup(topic)
        if self.head(topic) <= since:
            return False
        if limit > 1:
            await self._pace(topic, since, limit)
        return True

    def _forget_wakeup(self, topic: str) -> None:
        # A publish pops the topic's wake-up; a wait that timed out (or was
        # cancelled) must not leave it behind, or every topic name a client
        # ever long-polled would keep an entry, event or not.
        waiter = self._wakeups.get(topic)
        if waiter is not None and waiter.statistics().tasks_waiting == 0:
            del self._wakeups[topic]

    async def _pace(self, topic: str, since: int, limit: int) -> None:
        """Hold a batch reader of a hot topic until ``WAKE_INTERVAL`` since its last answer."""
        if self._closing or topic not in self._rings:
            return
        now = trio.current_time()
        head = self.head(topic)
        seen = self._answered_at.get(topic)
        rate = 0.0
        if seen is not None:
            last, last_head, rate = seen
            elapsed = now - last
            if elapsed > 0:
                # Half the weight to the newest interval: a burst is hot at its
                # second answer, a topic that went quiet is not after one.
                rate = (rate + (head - last_head) / elapsed) / 2
            if elapsed < WAKE_INTERVAL and rate > HOT_RATE and head - since < limit:
                await trio.sleep(last + WAKE_INTERVAL - now)
                now = trio.current_time()
                head = self.head(topic)
        self._answered_at[topic] = (now, head, rate)

    # ------------------------------------------------------------- log writer

    async def run_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit pending events in batches; make each batch visible once committed."""
        task_status.started()
        if self.event_log is None:
            await trio.sleep_forever()
        token = trio.lowlevel.current_trio_token()
        retry_delay = 0.05
        while True:
            if self.log_state.degraded:
                await trio.sleep(retry_delay)
                retry_delay = min(retry_delay * 2, 5.0)
                await self._retry_backlog()
                continue
            if not self._pending_count:
                self._pending_drained.set()
                self._pending_ready = trio.Event()
                await self._pending_ready.wait()
                continue
            batch, count = self._take_batch()
            if (
                count <= INLINE_COMMIT_MAX
                and self._last_commit_latency <= INLINE_COMMIT_LATENCY_MAX
                and self.event_log.synchronous == "normal"
            ):
                try:
                    latency = self.event_log.try_append_by_topic(batch)
                except Exception as exc:  # a failing log degrades, never stops capture
                    self._enter_degraded(exc)
                    retry_delay = 0.05
                    continue
                if latency is not None:
                    shown: list[BaseException | None] = []
                    self._committed(batch, count, latency, shown)
                    if shown[0] is not None:
                        raise shown[0]
                    await self._after_commit()
                    # Let the readers just woken (and the socket) run before the next batch.
                    await trio.lowlevel.checkpoint()
                    continue
            shown = []
            try:
                await trio.to_thread.run_sync(self._commit, token, batch, count, shown)
            except Exception as exc:  # a failing log degrades, never stops capture
                self._enter_degraded(exc)
                retry_delay = 0.05
                continue
            if not shown:  # cannot happen: the callback runs before this task resumes
                raise RuntimeError("a committed batch was not made visible")
            if shown[0] is not None:
                raise shown[0]  # a bug in the visibility path: fail loudly, here
            await self._after_commit()

    async def _after_commit(self) -> None:
        await self._refresh_log_stats()
        if time.monotonic() - self._state_saved_at >= STATE_SAVE_INTERVAL:
            await self._save_state()
        if self._pending_count <= MAX_PENDING:
            self._pending_drained.set()

    def _take_batch(self) -> tuple[dict[str, list[Event]], int]:
        """The oldest pending events of each topic, within MAX_BATCH and each topic's cap."""
        batch: dict[str, list[Event]] = {}
        room = MAX_BATCH
        caps = self._batch_caps
        pending = self._pending
        emptied: list[str] = []
        partial: list[str] = []
        for topic, queue in pending.items():
            cap = caps.get(topic)
            if cap is None:
                cap = caps[topic] = max(1, int(self._capacity_for(topic) * MAX_BATCH_RING_SHARE))
            take = min(cap, room, len(queue))
            if take == len(queue):
                batch[topic] = queue
                emptied.append(topic)
            else:
                batch[topic] = queue[:take]
                del queue[:take]
                partial.append(topic)
            room -= take
            if not room:
                break
        for topic in emptied:
            del pending[topic]
        for topic in partial:
            # Left with events: behind the topics not served this time, next time.
            pending[topic] = pending.pop(topic)
        self._in_flight = batch
        return batch, MAX_BATCH - room

    def _commit(
        self,
        token: trio.lowlevel.TrioToken,
        batch: dict[str, list[Event]],
        count: int,
        shown: list[BaseException | None],
    ) -> None:
        """In a worker thread: commit ``batch``, then have the Trio thread show it.

        The batch becomes visible in a callback of the Trio loop queued right
        after the commit, not when the writer task next runs: readers are
        woken one scheduler pass earlier. The callback is queued before this
        function returns, so it runs before the writer task resumes.
        """
        assert self.event_log is not None
        latency = self.event_log.append_by_topic(batch)
        token.run_sync_soon(self._committed, batch, count, latency, shown)

    def _committed(
        self,
        batch: dict[str, list[Event]],
        count: int,
        latency: float,
        shown: list[BaseException | None],
    ) -> None:
        """In the Trio thread, after a commit: drop the batch from pending, make it visible."""
        try:
            self._in_flight = None
            self._pending_count -= count
            self._record_commit(latency, count)
            for events in batch.values():
                self._make_visible(events)
        except Exception as exc:  # re-raised by the writer task: a callback must not raise
            shown.append(exc)
            return
        shown.append(None)

    async def run_checkpoints(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Copy the write-ahead log into the database file while commits happen.

        For a log opened with ``auto_checkpoint=False`` (the daemon's): a
        commit then never does this work itself, and the writer is never held
        up by it. At most once per ``CHECKPOINT_INTERVAL``, only after commits.
        """
        task_status.started()
        elog = self.event_log
        if elog is None:
            return
        while True:
            if not self._commits_since_checkpoint:
                self._committed_event = trio.Event()
                await self._committed_event.wait()
            self._commits_since_checkpoint = 0
            try:
                await trio.to_thread.run_sync(elog.checkpoint)
            except Exception as exc:  # the next one copies what this one could not
                log.warning("checkpointing the event log failed: %s", describe(exc))
            await trio.sleep(CHECKPOINT_INTERVAL)

    async def _retry_backlog(self) -> None:
        backlog = self.log_state.backlog
        try:
            while True:
                # The epoch first, the backlog last: once the last batch is
                # committed and the backlog found empty, degraded mode ends
                # without an await in between, so no event can slip in. (Storing
                # the epoch after the backlog left a window at every retry: under
                # a steady stream an event always arrived during it, and the log
                # never recovered.)
                epoch = self.reset_epoch
                await trio.to_thread.run_sync(self.event_log.store_epoch, epoch)
                while backlog:
                    batch = backlog[:MAX_BATCH]
                    latency = await trio.to_thread.run_sync(self.event_log.append, batch)
                    del backlog[: len(batch)]
                    self._record_commit(latency, len(batch))
                if self.reset_epoch == epoch:  # else a reconnect bumped it meanwhile
                    break
        except Exception as exc:  # still failing: stay degraded and retry later
            self.log_state.last_error = describe(exc)
            return
        log.warning("event log recovered; the backlog is committed")
        self.log_state.degraded = False

    def _enter_degraded(self, exc: BaseException) -> None:
        """Serve from memory: make everything pending visible and keep it to retry."""
        if not self.log_state.degraded:
            log.error("event log write failed, serving from memory and retrying: %s", describe(exc))
        self.log_state.degraded = True
        self.log_state.last_error = describe(exc)
        in_flight, self._in_flight = self._in_flight or {}, None
        pending, self._pending = self._pending, {}
        self._pending_count = 0
        # Per topic, what was being committed is older than what waited behind it.
        for topic in [*in_flight, *(t for t in pending if t not in in_flight)]:
            events = in_flight.get(topic, []) + pending.get(topic, [])
            self.log_state.backlog.extend(events)
            self._make_visible(events)
        self._pending_drained.set()

    async def _refresh_log_stats(self, *, force: bool = False) -> None:
        """Cache the log's size and oldest event for ``_status`` (at most once a second)."""
        now = time.monotonic()
        if not force and now - self._log_stats_at < 1.0:
            return
        self._log_stats_at = now
        try:
            self._log_stats = await trio.to_thread.run_sync(self.event_log.stats)
        except Exception as exc:  # stats are informational; never stop the writer for them
            log.debug("log stats failed: %s", exc)

    def _record_commit(self, latency: float, count: int) -> None:
        state = self.log_state
        state.commits += 1
        state.committed_events += count
        state.commit_latency_ms = round(latency * 1000, 3)
        self._last_commit_latency = latency
        state.last_commit_at = self._ts.now()
        self._commits_since_checkpoint += 1
        self._committed_event.set()
        for observer in self.commit_observers:
            observer(latency, count)

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The hub's part of ``/events/_status``."""
        state = self.log_state
        out: dict[str, Any] = {
            "reset_epoch": self.reset_epoch,
            "buffer_sizes": {t: len(r) for t, r in sorted(self._rings.items())},
            "head_cursors": {t: r.last for t, r in sorted(self._rings.items())},
            "ring_capacity": {t: r.capacity for t, r in sorted(self._rings.items())},
            "last_event_at": {
                t: e.received_at if (e := r.newest()) is not None else None
                for t, r in sorted(self._rings.items())
            },
            "events_published": dict(sorted(self.published.items())),
            "pending": self._pending_count,
            "waiting": self.waiting,
        }
        if self.event_log is not None:
            out["log"] = {
                "path": getattr(self.event_log, "path", None),
                "state": "degraded" if state.degraded else "ok",
                "last_error": state.last_error,
                "last_commit_at": state.last_commit_at,
                "commit_latency_ms": state.commit_latency_ms,
                "commits": state.commits,
                "committed_events": state.committed_events,
                "backlog": len(state.backlog),
                "size_bytes": getattr(self._log_stats, "size_bytes", None),
                "events": getattr(self._log_stats, "events", None),
                "oldest_received_at": getattr(self._log_stats, "oldest_received_at", None),
            }
        else:
            out["log"] = None
        return out

    def uptime_seconds(self) -> int:
        return int(time.time() - self.started_at)


# ------------------------------------------------------------ thread helpers
# These run in worker threads via trio.to_thread; they only touch the log.


def _load_log_state(elog: Any, capacity_for: Callable[[str], int]) -> dict[str, Any]:
    last_cursors = elog.last_cursors()
    return {
        "epoch": elog.load_epoch(),
        "empty": elog.is_empty(),
        "run_state": elog.get_meta("run_state"),
        "cursor_space": elog.get_meta("cursor_space"),
        "last_cursors": last_cursors,
        "newest": {t: elog.newest(t, capacity_for(t)) for t in last_cursors},
    }


def _mark_running(elog: Any, epoch: int, new_cursor_space: str | None) -> None:
    if new_cursor_space is not None:
        elog.set_meta("cursor_space", new_cursor_space)
    elog.store_epoch(epoch)
    elog.set_meta("run_state", "running")


def _mark_clean(elog: Any) -> None:
    elog.set_meta("run_state", "clean")


def _read_log(elog: Any, topic: str, since: int, limit: int) -> tuple[list[Event], int]:
    return elog.read_since(topic, since, limit), elog.pruned_upto(topic)
