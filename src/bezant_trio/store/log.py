"""The durable SQLite event log: appends, cursor and time reads, retention, checkpoints.

Owns the database file at ``store.path`` (and its ``-wal``/``-shm`` siblings):
its schema and forward migrations, group-committed appends, reads by cursor
and by received time, retention pruning, the persisted ``reset_epoch``, small
key/value metadata, and the per-sink delivery checkpoints.

Must not touch: Trio (this module is synchronous; the hub calls it through
``trio.to_thread.run_sync``), cursor assignment, epoch policy or gap events
(the hub decides, this module only stores), the in-memory ring, HTTP and sinks.

Threading: there is one writer connection, guarded by a lock, so any thread
may write but one at a time. Reads use a small pool of their own connections:
in WAL mode a reader sees the last committed state and never waits for a long
write transaction (a prune batch, a big append) to finish.
"""

from __future__ import annotations

import calendar
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType

from bezant_trio.model import Event, format_ts, parse_ts

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "EventLog",
    "LogError",
    "LogOpenError",
    "LogStats",
    "LogWriteError",
]

logger = logging.getLogger(__name__)


class LogError(Exception):
    """Base error of the event log; ``str()`` is one line saying what to check."""


class LogOpenError(LogError):
    """The log cannot be opened (bad path, not a database, corrupt, newer schema)."""


class LogWriteError(LogError):
    """A write failed while running (disk full, I/O error, read-only, locked).

    The transaction was rolled back; retrying the same call later is safe.
    """


_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE events (
    topic       TEXT    NOT NULL,
    cursor      INTEGER NOT NULL,
    reset_epoch INTEGER NOT NULL,
    received_at TEXT    NOT NULL,
    received_ms INTEGER NOT NULL,
    payload     BLOB    NOT NULL,
    PRIMARY KEY (topic, cursor)
) WITHOUT ROWID;
CREATE INDEX events_topic_received ON events (topic, received_ms);
CREATE TABLE topics (
    topic       TEXT    PRIMARY KEY NOT NULL,
    last_cursor INTEGER NOT NULL,
    pruned_upto INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE checkpoints (
    sink       TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    cursor     INTEGER NOT NULL,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (sink, topic)
);
"""

#: How many events of each topic are stored, kept with every append and prune,
#: so opening a log never counts its rows (a full scan of a large file).
_V2 = """
ALTER TABLE topics ADD COLUMN stored INTEGER NOT NULL DEFAULT 0;
UPDATE topics SET stored = (SELECT count(*) FROM events AS e WHERE e.topic = topics.topic);
"""

#: Forward migrations; entry ``i`` takes a file from version ``i`` to ``i + 1``.
#: Append only: files in the field have already run every shipped entry, so an
#: entry is never edited. Each runs in one transaction with the version bump.
MIGRATIONS: list[str] = [_V1, _V2]

#: The schema version this build writes (the number of migrations).
SCHEMA_VERSION: int = len(MIGRATIONS)

_BUSY_TIMEOUT_S = 5.0
_MAX_IDLE_READERS = 4
#: Lets SQLite truncate the WAL after a checkpoint: a big prune would
#: otherwise leave a WAL file as large as the biggest transaction, forever.
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
_WRITER_CACHE_KIB = 4 * 1024  # appends touch only the right edge of the b-trees
_EPOCH_KEY = "reset_epoch"
#: A file up to this size is checked with ``PRAGMA quick_check`` at every open;
#: a larger one only after an unclean stop (the check reads the whole file:
#: seconds for a log of millions of events, on every start).
FULL_CHECK_MAX_BYTES = 64 * 1024 * 1024
#: Rows per ``INSERT`` statement, largest first. One statement of many rows
#: costs one ``sqlite3_step`` (one release and re-take of the GIL), where
#: ``executemany`` costs one per row; 250 rows stay far below SQLite's limit
#: on bound parameters.
_INSERT_CHUNKS = (250, 50, 10, 1)
_INSERT_SQL = {
    n: "INSERT OR IGNORE INTO events"
    " (topic, cursor, reset_epoch, received_at, received_ms, payload) VALUES "
    + ",".join(["(?, ?, ?, ?, ?, ?)"] * n)
    for n in _INSERT_CHUNKS
}
_UPSERT_TOPIC = (
    "INSERT INTO topics (topic, last_cursor, stored) VALUES (?, ?, ?)"
    " ON CONFLICT (topic) DO UPDATE SET last_cursor = max(last_cursor, excluded.last_cursor),"
    " stored = stored + excluded.stored"
)
_EVENT_COLUMNS = "SELECT cursor, received_at, reset_epoch, payload, received_ms FROM events"
#: Retention aims at delete transactions this short (seconds), so an append
#: never waits long for one; the batch size follows what the disk manages.
_PRUNE_TXN_SECONDS = 0.002


@dataclass(frozen=True)
class LogStats:
    """Size and contents of the log, for ``/events/_status`` and metrics."""

    path: str
    #: The database file plus its write-ahead log.
    size_bytes: int
    events: int
    oldest_received_at: str | None


class EventLog:
    """A durable per-topic event log in one SQLite file (WAL).

    Create it with :meth:`open`. Every method is synchronous and thread-safe:
    writes serialise on one connection, reads run on pooled connections of
    their own. Reads return :class:`~bezant_trio.model.Event` objects ordered
    by cursor ascending.
    """

    path: str

    def __init__(
        self, path: str, conn: sqlite3.Connection, event_count: int, *, synchronous: str = "normal"
    ) -> None:
        """Wrap an opened, migrated writer connection; use :meth:`open` instead."""
        self.path = path
        #: ``"normal"`` or ``"full"``: whether a commit waits for an fsync.
        self.synchronous = synchronous
        self._conn = conn
        # Re-entrant so prune can keep the lock across a batch and its counter update.
        self._lock = threading.RLock()
        self._readers_lock = threading.Lock()
        self._idle_readers: list[sqlite3.Connection] = []
        self._closed = False
        self._event_count = event_count
        # One-entry cache for _received_ms: consecutive events share their second.
        self._ms_prefix = ""
        self._ms_base = 0
        #: The checkpointer's own connection (opened by the first checkpoint()).
        self._checkpoint_lock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        #: Rows per retention transaction, adapted to keep each one short.
        self._prune_batch = 500
        #: Appends waiting for the writer lock; retention lets them go first.
        self._appends_waiting = 0

    # ------------------------------------------------------------------ open/close

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "normal",
        auto_checkpoint: bool = True,
    ) -> EventLog:
        """Open (creating it and its directories if missing) and migrate the log at ``path``.

        ``synchronous`` is ``"normal"`` (a commit survives a process crash) or
        ``"full"`` (it also survives a power loss). Runs ``PRAGMA quick_check``
        (which reads the whole file) when the file is at most
        :data:`FULL_CHECK_MAX_BYTES` or was not closed cleanly. With
        ``auto_checkpoint=False`` commits never copy the write-ahead log into
        the database file themselves: the owner calls :meth:`checkpoint`
        (the daemon does, from a task of its own). Raises :class:`LogOpenError`.
        """
        mode = synchronous.lower() if isinstance(synchronous, str) else ""
        if mode not in ("normal", "full"):
            raise LogOpenError(f"store.synchronous must be 'normal' or 'full', not {synchronous!r}")
        text_path = os.path.abspath(os.fspath(path))
        parent = os.path.dirname(text_path)
        try:
            _make_private_dirs(parent)
        except OSError as err:
            raise LogOpenError(
                f"cannot create the directory {parent} for the event log {text_path}"
                f" ({err.strerror or err}); check store.path and its permissions"
            ) from err
        if os.path.isdir(text_path):
            raise LogOpenError(
                f"the event log path {text_path} is a directory; point store.path at a file"
            )
        try:
            _make_private_files(text_path)
        except OSError as err:
            raise LogOpenError(
                f"cannot create the event log {text_path} ({err.strerror or err});"
                " check store.path and its permissions"
            ) from err
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                text_path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # any thread may write, serialised by our lock
            )
            _configure_writer(conn, text_path, mode)
            if not auto_checkpoint:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            if _needs_full_check(conn, text_path):
                _quick_check(conn, text_path)
            _migrate(conn, text_path, MIGRATIONS)
            event_count = conn.execute("SELECT coalesce(sum(stored), 0) FROM topics").fetchall()[0][
                0
            ]
        except LogOpenError:
            _close_quietly(conn)
            raise
        except sqlite3.Error as err:
            _close_quietly(conn)
            raise LogOpenError(_explain_open_error(text_path, err)) from err
        return cls(text_path, conn, event_count, synchronous=mode)

    def close(self) -> None:
        """Close every connection; idempotent. Readers in use close when they finish."""
        with self._lock:
            with self._readers_lock:
                if self._closed:
                    return
                self._closed = True
                idle, self._idle_readers = self._idle_readers, []
            for reader in idle:
                _close_quietly(reader)
            with self._checkpoint_lock:
                _close_quietly(self._checkpointer)
                self._checkpointer = None
            # The last connection to close checkpoints the WAL into the main file.
            _close_quietly(self._conn)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ epoch + topics

    def load_epoch(self) -> int:
        """The stored ``reset_epoch``; 0 if none was ever stored."""
        value = self.get_meta(_EPOCH_KEY)
        return int(value) if value is not None else 0

    def store_epoch(self, epoch: int) -> None:
        """Persist ``reset_epoch`` (committed before this returns)."""
        self.set_meta(_EPOCH_KEY, str(int(epoch)))

    def last_cursors(self) -> dict[str, int]:
        """Per topic, the highest cursor ever committed (pruning never lowers it)."""
        with self._reading() as conn:
            rows = conn.execute("SELECT topic, last_cursor FROM topics").fetchall()
        return dict(rows)

    def is_empty(self) -> bool:
        """True if no event was ever committed to this log."""
        with self._reading() as conn:
            return not conn.execute("SELECT 1 FROM topics LIMIT 1").fetchall()

    def topics(self) -> list[str]:
        """Every topic that ever had an event, sorted (including fully pruned ones)."""
        with self._reading() as conn:
            rows = conn.execute("SELECT topic FROM topics ORDER BY topic").fetchall()
        return [row[0] for row in rows]

    # ------------------------------------------------------------------ writes

    def append(self, events: Sequence[Event]) -> float:
        """Commit ``events`` in one transaction; returns how long it took, in seconds.

        Also raises each topic's ``last_cursor``. An event whose (topic, cursor)
        is already stored is skipped, so retrying a batch is safe. Raises
        :class:`LogWriteError` (after rolling back) if the disk refuses the write,
        ``ValueError`` if an event's ``received_at`` is not a timestamp.
        """
        by_topic: dict[str, list[Event]] = {}
        for event in events:
            group = by_topic.get(event.topic)
            if group is None:
                by_topic[event.topic] = [event]
            else:
                group.append(event)
        return self.append_by_topic(by_topic)

    def append_by_topic(self, batches: Mapping[str, Sequence[Event]]) -> float:
        """:meth:`append` for events already grouped by topic (each group in cursor order)."""
        if not any(batches.values()):
            return 0.0
        self._appends_waiting += 1
        with self._lock:
            self._appends_waiting -= 1
            return self._append_locked(batches)

    def try_append_by_topic(self, batches: Mapping[str, Sequence[Event]]) -> float | None:
        """:meth:`append_by_topic` if the writer is free right now, else None (nothing done).

        For a caller that must not block: the hub commits a few events on its
        own thread this way when no other write (a retention batch, a
        checkpoint store) holds the writer.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._append_locked(batches)
        finally:
            self._lock.release()

    def _append_locked(self, batches: Mapping[str, Sequence[Event]]) -> float:
        """One transaction for ``batches``; the caller holds ``_lock``."""
        started = time.perf_counter()
        statements = [self._insert_rows(topic, group) for topic, group in batches.items()]
        inserted_total = 0
        with self._write_txn("appending events") as conn:
            for topic, group, chunks in statements:
                inserted = 0
                for sql, params in chunks:
                    inserted += max(conn.execute(sql, params).rowcount, 0)
                highest = max(event.cursor for event in group)
                conn.execute(_UPSERT_TOPIC, (topic, highest, inserted))
                inserted_total += inserted
        self._event_count += inserted_total
        return time.perf_counter() - started

    def _insert_rows(
        self, topic: str, group: Sequence[Event]
    ) -> tuple[str, Sequence[Event], list[tuple[str, list[object]]]]:
        """The multi-row INSERTs for one topic's events (built before the transaction)."""
        received_ms = self._received_ms
        params: list[object] = []
        extend = params.extend
        for event in group:
            ms = event.received_ms
            if ms < 0:
                ms = received_ms(event.received_at)
            extend(
                (topic, event.cursor, event.reset_epoch, event.received_at, ms, event.payload_json)
            )
        chunks: list[tuple[str, list[object]]] = []
        at, left = 0, len(group)
        for size in _INSERT_CHUNKS:
            while left >= size:
                chunks.append((_INSERT_SQL[size], params[at * 6 : (at + size) * 6]))
                at += size
                left -= size
        return topic, group, chunks

    def checkpoint(self) -> tuple[int, int]:
        """Copy what the write-ahead log holds into the database file (``PASSIVE``).

        Runs on a connection of its own: appends go on meanwhile, and readers
        are not waited for (what they still use is copied by a later call).
        Returns (frames in the WAL, frames now in the database file). A
        checkpoint that cannot run now (busy) returns what SQLite said;
        raises :class:`LogError` only when the file cannot be reached.
        """
        with self._checkpoint_lock:
            if self._closed:
                raise LogError(f"the event log {self.path} is closed")
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(
                        self.path,
                        timeout=_BUSY_TIMEOUT_S,
                        isolation_level=None,
                        check_same_thread=False,  # used under _checkpoint_lock only
                    )
                row = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            except sqlite3.Error as err:
                _close_quietly(self._checkpointer)
                self._checkpointer = None
                raise LogError(
                    f"checkpointing the event log {self.path} failed ({err}); check free disk"
                    " space and the file's permissions"
                ) from err
        return int(row[1]), int(row[2])

    # ------------------------------------------------------------------ reads

    def read_since(self, topic: str, since: int, limit: int) -> list[Event]:
        """Up to ``limit`` events of ``topic`` with ``cursor > since``."""
        if limit <= 0:
            return []
        return self._events(
            topic,
            f"{_EVENT_COLUMNS} WHERE topic = ? AND cursor > ? ORDER BY cursor LIMIT ?",
            (topic, since, limit),
        )

    def read_range(self, topic: str, after: int, upto: int) -> list[Event]:
        """Every event of ``topic`` with ``after < cursor <= upto``."""
        if upto <= after:
            return []
        return self._events(
            topic,
            f"{_EVENT_COLUMNS} WHERE topic = ? AND cursor > ? AND cursor <= ? ORDER BY cursor",
            (topic, after, upto),
        )

    def newest(self, topic: str, n: int) -> list[Event]:
        """The ``n`` newest events of ``topic``, oldest first."""
        if n <= 0:
            return []
        events = self._events(
            topic,
            f"{_EVENT_COLUMNS} WHERE topic = ? ORDER BY cursor DESC LIMIT ?",
            (topic, n),
        )
        events.reverse()
        return events

    def first_cursor(self, topic: str) -> int | None:
        """The oldest cursor of ``topic`` still stored; None if none is."""
        with self._reading() as conn:
            rows = conn.execute("SELECT min(cursor) FROM events WHERE topic = ?", (topic,))
            return rows.fetchall()[0][0]

    def history(
        self,
        topic: str,
        *,
        since_ts: float | None = None,
        since_cursor: int | None = None,
        limit: int = 500,
    ) -> list[Event]:
        """Up to ``limit`` events of ``topic`` received after ``since_ts`` (epoch seconds)
        and/or with ``cursor > since_cursor``; both bounds exclusive, by cursor.

        With neither bound, starts at the oldest stored event.
        """
        if limit <= 0:
            return []
        after = -1 if since_cursor is None else since_cursor
        if since_ts is None:
            return self.read_since(topic, after, limit)
        # received_ms > since_ts*1000 ⇔ received_ms > floor of it; rounding to
        # microseconds first keeps a ts parsed from an event's own received_at
        # (1700000000.123 → 1700000000122.99998 ms) exclusive of that event.
        since_ms = round(since_ts * 1_000_000) // 1000
        with self._reading() as conn:
            # Seek with the time index, then read by cursor: "received_ms > ? ORDER
            # BY cursor" alone would sort every newer row to return `limit` of them.
            first = conn.execute(
                "SELECT cursor FROM events WHERE topic = ? AND received_ms > ?"
                " ORDER BY received_ms, cursor LIMIT 1",
                (topic, since_ms),
            ).fetchall()
            if not first:
                return []
            rows = conn.execute(
                f"{_EVENT_COLUMNS} WHERE topic = ? AND cursor >= ? AND cursor > ?"
                " AND received_ms > ? ORDER BY cursor LIMIT ?",
                (topic, first[0][0], after, since_ms, limit),
            ).fetchall()
        return _build_events(topic, rows)

    # ------------------------------------------------------------------ retention

    def prune(
        self,
        retention_days_for: Callable[[str], float | None],
        *,
        now: float,
        max_events_per_topic: int | None = None,
        batch: int = 5000,
    ) -> int:
        """Delete expired events; returns how many rows went.

        Per topic, drops events received more than ``retention_days_for(topic)``
        days before ``now`` (None or ``math.inf`` keeps them forever; any finite
        number is applied as is, so 0 drops everything received before ``now``),
        and any beyond the newest ``max_events_per_topic``. Deletes the oldest
        cursors first, at most ``batch`` rows per transaction, so appends wait
        for one short transaction at most. Deletion stops at the first event that
        must stay, so what is kept is always an unbroken run of cursors above
        ``pruned_upto`` (an event stamped older than a kept one, after a clock
        step, waits until that one expires). ``last_cursor`` is never changed.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        if max_events_per_topic is not None and max_events_per_topic < 0:
            raise ValueError(f"max_events_per_topic must be >= 0, not {max_events_per_topic}")
        deleted = 0
        for topic in self.topics():
            days = retention_days_for(topic)
            cutoff_ms: float | None = None
            if days is not None and math.isfinite(days):
                cutoff_ms = (now - days * 86400.0) * 1000.0
            if cutoff_ms is None and max_events_per_topic is None:
                continue
            deleted += self._prune_topic(topic, cutoff_ms, max_events_per_topic, batch)
        return deleted

    def pruned_upto(self, topic: str) -> int:
        """The highest cursor of ``topic`` deleted by retention; 0 if none was."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT pruned_upto FROM topics WHERE topic = ?", (topic,)
            ).fetchall()
        return rows[0][0] if rows else 0

    # ------------------------------------------------------------------ sink checkpoints

    def load_checkpoints(self, sink: str) -> dict[str, int]:
        """Per topic, the last cursor ``sink`` has delivered."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT topic, cursor FROM checkpoints WHERE sink = ?", (sink,)
            ).fetchall()
        return dict(rows)

    def store_checkpoints(self, sink: str, checkpoints: Mapping[str, int]) -> None:
        """Upsert ``sink``'s checkpoints for the given topics in one transaction."""
        if not checkpoints:
            return
        updated_at = format_ts()
        rows = [(sink, topic, cursor, updated_at) for topic, cursor in checkpoints.items()]
        with self._lock, self._write_txn("storing sink checkpoints") as conn:
            conn.executemany(
                "INSERT INTO checkpoints (sink, topic, cursor, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sink, topic) DO UPDATE"
                " SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                rows,
            )

    def delete_checkpoints(self, sink: str) -> None:
        """Forget every checkpoint of ``sink``."""
        with self._lock, self._write_txn("deleting sink checkpoints") as conn:
            conn.execute("DELETE FROM checkpoints WHERE sink = ?", (sink,))

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        """A stored metadata value; None if unset. ``reset_epoch`` is reserved."""
        with self._reading() as conn:
            rows = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchall()
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Store a metadata value (committed before this returns)."""
        with self._lock, self._write_txn("storing metadata") as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def stats(self) -> LogStats:
        """File size, number of stored events and the oldest received time."""
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += os.stat(self.path + suffix).st_size
            except FileNotFoundError:
                pass
        oldest: tuple[int, str] | None = None
        with self._reading() as conn:
            topics = [row[0] for row in conn.execute("SELECT topic FROM topics").fetchall()]
            # One index seek per topic: min(received_ms) over the whole table
            # cannot use the (topic, received_ms) index and would scan it.
            for topic in topics:
                rows = conn.execute(
                    "SELECT received_ms, received_at FROM events WHERE topic = ?"
                    " ORDER BY received_ms LIMIT 1",
                    (topic,),
                ).fetchall()
                if rows and (oldest is None or rows[0][0] < oldest[0]):
                    oldest = rows[0]
        return LogStats(
            path=self.path,
            size_bytes=size,
            events=self._event_count,
            oldest_received_at=oldest[1] if oldest else None,
        )

    # ------------------------------------------------------------------ internals

    def _prune_topic(
        self, topic: str, cutoff_ms: float | None, keep: int | None, batch: int
    ) -> int:
        over_count_upto = 0
        if keep is not None:
            with self._reading() as conn:
                rows = conn.execute(
                    "SELECT cursor FROM events WHERE topic = ? ORDER BY cursor DESC LIMIT 1 OFFSET ?",
                    (topic, keep),
                ).fetchall()
            over_count_upto = rows[0][0] if rows else 0
        total = 0
        while True:
            # Short transactions: an append waits for the writer lock while one runs.
            size = min(batch, self._prune_batch)
            with self._lock:
                started = time.perf_counter()
                with self._write_txn("pruning expired events") as conn:
                    rows = conn.execute(
                        "SELECT cursor, received_ms FROM events WHERE topic = ?"
                        " ORDER BY cursor LIMIT ?",
                        (topic, size),
                    ).fetchall()
                    upto = None
                    for cursor, received_ms in rows:
                        if cursor <= over_count_upto or (
                            cutoff_ms is not None and received_ms < cutoff_ms
                        ):
                            upto = cursor
                        else:
                            break
                    if upto is None:
                        return total
                    removed = conn.execute(
                        "DELETE FROM events WHERE topic = ? AND cursor <= ?", (topic, upto)
                    ).rowcount
                    conn.execute(
                        "UPDATE topics SET pruned_upto = max(pruned_upto, ?),"
                        " stored = max(0, stored - ?) WHERE topic = ?",
                        (upto, removed, topic),
                    )
                self._event_count -= removed
                took = time.perf_counter() - started
            self._adapt_prune_batch(size, took)
            total += removed
            if upto != rows[-1][0]:
                return total
            # Between two transactions an append waiting for the lock goes first
            # (a lock is not fair: this thread could take it straight back).
            waited = 0
            while self._appends_waiting and waited < 100:
                time.sleep(0.0002)
                waited += 1

    def _adapt_prune_batch(self, size: int, took: float) -> None:
        """Aim the next retention transaction at ``_PRUNE_TXN_SECONDS``."""
        if took > 2 * _PRUNE_TXN_SECONDS:
            self._prune_batch = max(50, size // 2)
        elif took < _PRUNE_TXN_SECONDS / 2 and size == self._prune_batch:
            self._prune_batch = min(20_000, size * 2)

    @contextmanager
    def _write_txn(self, what: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction on the writer; the caller holds ``_lock``."""
        if self._closed:
            raise LogError(f"the event log {self.path} is closed")
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.ProgrammingError:
            # Misuse (wrong bindings, closed connection) is a bug, not a retryable fault.
            self._rollback()
            raise
        except sqlite3.DatabaseError as err:
            self._rollback()
            raise LogWriteError(
                f"{what} in the event log {self.path} failed ({err}); check free disk space"
                " and that the file and its directory are writable"
            ) from err
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as err:
            logger.warning("rolling back in the event log %s failed: %s", self.path, err)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A pooled read connection; sqlite errors become :class:`LogError`."""
        conn = self._take_reader()
        healthy = False
        try:
            yield conn
            healthy = True
        except sqlite3.Error as err:
            raise LogError(
                f"reading the event log {self.path} failed ({err}); check the disk"
                " and the file's permissions"
            ) from err
        finally:
            self._give_back(conn, healthy=healthy)

    def _take_reader(self) -> sqlite3.Connection:
        with self._readers_lock:
            if self._closed:
                raise LogError(f"the event log {self.path} is closed")
            if self._idle_readers:
                return self._idle_readers.pop()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,  # pooled: used by one thread at a time
            )
            conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as err:
            raise LogError(
                f"opening a read connection to the event log {self.path} failed ({err});"
                " check the file's permissions and the process's open-file limit"
            ) from err
        return conn

    def _give_back(self, conn: sqlite3.Connection, *, healthy: bool) -> None:
        with self._readers_lock:
            if healthy and not self._closed and len(self._idle_readers) < _MAX_IDLE_READERS:
                self._idle_readers.append(conn)
                return
        _close_quietly(conn)

    def _events(self, topic: str, sql: str, params: tuple[object, ...]) -> list[Event]:
        with self._reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        return _build_events(topic, rows)

    def _received_ms(self, received_at: str) -> int:
        """Epoch milliseconds of a ``format_ts`` string (called under ``_lock``)."""
        text = received_at
        if len(text) == 24 and text[19] == "." and text[23] == "Z":
            prefix = text[:19]
            try:
                if prefix != self._ms_prefix:
                    self._ms_base = _epoch_seconds(prefix) * 1000
                    self._ms_prefix = prefix
                return self._ms_base + int(text[20:23])
            except ValueError:
                pass  # not format_ts output after all; parse_ts says why
        return round(parse_ts(text) * 1000)


# ---------------------------------------------------------------------- helpers


def _build_events(topic: str, rows: list[tuple[int, str, int, bytes, int]]) -> list[Event]:
    build = Event.build
    return [
        build(topic, cursor, received_at, reset_epoch, payload, received_ms)
        for cursor, received_at, reset_epoch, payload, received_ms in rows
    ]


def _needs_full_check(conn: sqlite3.Connection, path: str) -> bool:
    """Whether opening runs ``PRAGMA quick_check``: a small file, or one not closed cleanly."""
    size = 0
    for suffix in ("", "-wal"):
        with suppress(FileNotFoundError):  # no WAL file: nothing to add
            size += os.stat(path + suffix).st_size
    if size <= FULL_CHECK_MAX_BYTES:
        return True
    try:
        rows = conn.execute("SELECT value FROM meta WHERE key = 'run_state'").fetchall()
    except sqlite3.Error:
        return True  # not even the meta table reads: let the check say what is wrong
    return not rows or rows[0][0] != "clean"


def _epoch_seconds(prefix: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC) to epoch seconds; ValueError if malformed."""
    if prefix[4] != "-" or prefix[7] != "-" or prefix[13] != ":" or prefix[16] != ":":
        raise ValueError(prefix)
    return calendar.timegm(
        (
            int(prefix[0:4]),
            int(prefix[5:7]),
            int(prefix[8:10]),
            int(prefix[11:13]),
            int(prefix[14:16]),
            int(prefix[17:19]),
            0,
            0,
            0,
        )
    )


def _configure_writer(conn: sqlite3.Connection, path: str, synchronous: str) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
    if str(mode).lower() != "wal":
        # Still correct, but readers now wait for writers; say so once.
        logger.warning(
            "the event log %s could not use WAL (journal_mode=%s); reads will wait for writes",
            path,
            mode,
        )
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
    conn.execute(f"PRAGMA cache_size = -{_WRITER_CACHE_KIB}")


def _quick_check(conn: sqlite3.Connection, path: str) -> None:
    rows = conn.execute("PRAGMA quick_check").fetchall()
    problems = [str(row[0]) for row in rows if row[0] != "ok"]
    if problems:
        first = " ".join(problems[0].split())
        raise LogOpenError(
            f"the event log {path} failed its integrity check ({first}); move the file"
            " aside or point store.path elsewhere"
        )


def _migrate(conn: sqlite3.Connection, path: str, migrations: Sequence[str]) -> None:
    """Bring the file up to ``len(migrations)``, one transaction per step."""
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    }
    if "schema_version" in tables:
        current = conn.execute("SELECT max(version) FROM schema_version").fetchall()[0][0] or 0
    elif tables:
        raise LogOpenError(
            f"{path} is a SQLite database but not a bezant-trio event log (no schema_version"
            " table); point store.path elsewhere"
        )
    else:
        current = 0
    target = len(migrations)
    if current > target:
        raise LogOpenError(
            f"the event log {path} was written by a newer bezant-trio (schema {current} >"
            f" {target}); upgrade or point store.path elsewhere"
        )
    for version in range(current + 1, target + 1):
        # BEGIN inside the script: executescript() would commit a transaction
        # opened outside it before running, splitting the step in two.
        script = (
            "BEGIN IMMEDIATE;\n"
            f"{migrations[version - 1]}\n;\n"
            "DELETE FROM schema_version;\n"
            f"INSERT INTO schema_version (version) VALUES ({version});\n"
            "COMMIT;"
        )
        try:
            conn.executescript(script)
        except sqlite3.Error as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise LogOpenError(
                f"migrating the event log {path} from schema {version - 1} to {version}"
                f" failed ({err}); the file is unchanged, check free disk space and permissions"
            ) from err
        logger.info("event log %s migrated to schema %d", path, version)


#: The log's files and the directories created for it: the owner's alone, whatever the umask.
FILE_MODE = 0o600
DIR_MODE = 0o700
#: SQLite's companions of the main file in WAL mode.
_COMPANIONS = ("-wal", "-shm", "-journal")


def _make_private_dirs(directory: str) -> None:
    """Create ``directory`` and missing parents, each ``DIR_MODE``; existing ones stay as they are.

    ``os.makedirs(mode=...)`` gives the mode to the last directory only, and
    both go through the umask, so each level is made and then chmod-ed.
    """
    missing: list[str] = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            continue  # made by someone else meanwhile: not ours to change
        os.chmod(path, DIR_MODE)


def _make_private_files(path: str) -> None:
    """Create the log file ``FILE_MODE`` if missing; take group and other access off its files.

    SQLite creates ``-wal`` and ``-shm`` with the main file's mode, so a main
    file made ``0600`` here keeps them ``0600`` too, whatever the umask. A log
    left readable by an older version (``0644``) is tightened the same way.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
    for name in (path, *(path + suffix for suffix in _COMPANIONS)):
        try:
            mode = os.stat(name, follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue
        if mode & 0o077 and not os.path.islink(name):
            os.chmod(name, mode & 0o700)


def _explain_open_error(path: str, err: sqlite3.Error) -> str:
    name = getattr(err, "sqlite_errorname", "") or ""
    text = " ".join(str(err).split())
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in text:
        return (
            f"{path} is not a readable bezant-trio event log ({text}); move the file aside"
            " or point store.path elsewhere"
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return (
            f"the event log {path} is locked by another process ({text}); is another"
            " bezant-trio using the same store.path?"
        )
    return (
        f"cannot open the event log {path} ({text}); check that the file and its directory"
        " are writable and the disk is not full"
    )


def _close_quietly(conn: sqlite3.Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except sqlite3.Error as err:
        logger.warning("closing an event log connection failed: %s", err)
