"""The SQLite event log: durability, reads, retention, checkpoints, migrations, faults."""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from pathlib import Path

import orjson
import pytest

from bezant_trio.model import Event, format_ts, parse_ts
from bezant_trio.store import log as log_module
from bezant_trio.store.log import (
    SCHEMA_VERSION,
    EventLog,
    LogError,
    LogOpenError,
    LogStats,
    LogWriteError,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DAY = 86400.0

# What a schema-1 file looks like on disk, frozen here on purpose: files written
# by release 1 must keep opening after later migrations are appended.
V1_DDL = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE events (
    topic TEXT NOT NULL, cursor INTEGER NOT NULL, reset_epoch INTEGER NOT NULL,
    received_at TEXT NOT NULL, received_ms INTEGER NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (topic, cursor)
) WITHOUT ROWID;
CREATE INDEX events_topic_received ON events (topic, received_ms);
CREATE TABLE topics (
    topic TEXT PRIMARY KEY NOT NULL, last_cursor INTEGER NOT NULL,
    pruned_upto INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE checkpoints (
    sink TEXT NOT NULL, topic TEXT NOT NULL, cursor INTEGER NOT NULL,
    updated_at TEXT NOT NULL, PRIMARY KEY (sink, topic)
);
INSERT INTO schema_version VALUES (1);
"""


def ev(
    topic: str, cursor: int, at: float = T0, epoch: int = 1, payload: bytes | None = None
) -> Event:
    if payload is None:
        payload = orjson.dumps({"topic": topic, "n": cursor})
    return Event.build(topic, cursor, format_ts(at), epoch, payload)


def cursors(events: list[Event]) -> list[int]:
    return [e.cursor for e in events]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "events.db"


@pytest.fixture
def event_log(db_path: Path):
    with EventLog.open(db_path) as opened:
        yield opened


def keep_days(days: float | None):
    return lambda topic: days


# ---------------------------------------------------------------------- open / reopen


def test_open_creates_missing_directories_and_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "events.db"
    with EventLog.open(path) as opened:
        assert opened.path == str(path)
        assert opened.is_empty()
        assert opened.topics() == []
        assert opened.last_cursors() == {}
    assert path.is_file()


def test_open_uses_wal_and_requested_synchronous_mode(db_path: Path) -> None:
    with EventLog.open(db_path, synchronous="full") as opened:
        opened.append([ev("orders", 1)])
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert opened._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_unknown_synchronous_mode_is_an_open_error(db_path: Path) -> None:
    with pytest.raises(LogOpenError, match=r"store\.synchronous"):
        EventLog.open(db_path, synchronous="sometimes")


def test_reopen_keeps_events_cursors_epoch_and_checkpoints(db_path: Path) -> None:
    originals = [ev("orders", c) for c in range(1, 6)] + [ev("pnl", 1)]
    with EventLog.open(db_path) as first:
        first.append(originals)
        first.store_epoch(7)
        first.store_checkpoints("audit", {"orders": 3})
    with EventLog.open(db_path) as second:
        assert not second.is_empty()
        assert second.load_epoch() == 7
        assert second.last_cursors() == {"orders": 5, "pnl": 1}
        assert second.load_checkpoints("audit") == {"orders": 3}
        assert second.read_since("orders", 0, 100) == originals[:5]
        assert second.stats().events == 6


def test_events_round_trip_byte_for_byte(event_log: EventLog) -> None:
    # Gateway frames are stored as received: whitespace and key order survive.
    raw = b'{ "topic":"sor",  "args":[{"orderId":1}] }'
    original = Event.build("orders", 1, "2026-11-30T03:02:23.123Z", 4, raw)
    event_log.append([original])
    (stored,) = event_log.read_since("orders", 0, 10)
    assert stored == original
    assert stored.json == original.json
    assert stored.payload_json == raw


# ---------------------------------------------------------------------- writes


def test_append_returns_latency_and_tracks_last_cursor_per_topic(event_log: EventLog) -> None:
    latency = event_log.append([ev("orders", 1), ev("orders", 2), ev("pnl", 10)])
    assert 0.0 < latency < 10.0
    assert event_log.append([]) == 0.0
    assert event_log.last_cursors() == {"orders": 2, "pnl": 10}
    assert event_log.topics() == ["orders", "pnl"]


def test_retried_batch_is_idempotent(event_log: EventLog) -> None:
    batch = [ev("orders", c) for c in range(1, 4)]
    event_log.append(batch)
    # A retry of the same batch, partly overlapping with newer events.
    retried = [*batch, ev("orders", 4)]
    event_log.append(retried)
    event_log.append(batch)
    assert event_log.read_since("orders", 0, 100) == retried
    assert event_log.stats().events == 4
    assert event_log.last_cursors() == {"orders": 4}


def test_an_older_retry_does_not_lower_last_cursor(event_log: EventLog) -> None:
    event_log.append([ev("orders", 9)])
    event_log.append([ev("orders", 3)])
    assert event_log.last_cursors() == {"orders": 9}


def test_epoch_and_meta_round_trip(event_log: EventLog) -> None:
    assert event_log.load_epoch() == 0
    event_log.store_epoch(3)
    event_log.store_epoch(4)
    assert event_log.load_epoch() == 4
    assert event_log.get_meta("instance") is None
    event_log.set_meta("instance", "a")
    event_log.set_meta("instance", "b")
    assert event_log.get_meta("instance") == "b"


# ---------------------------------------------------------------------- reads


@pytest.fixture
def filled(event_log: EventLog) -> EventLog:
    # orders 1..20, one second apart; pnl 1..5 interleaved in time.
    event_log.append([ev("orders", c, at=T0 + c) for c in range(1, 21)])
    event_log.append([ev("pnl", c, at=T0 + c) for c in range(1, 6)])
    return event_log


def test_read_since_is_exclusive_ordered_limited_and_per_topic(filled: EventLog) -> None:
    assert cursors(filled.read_since("orders", 0, 5)) == [1, 2, 3, 4, 5]
    assert cursors(filled.read_since("orders", 17, 100)) == [18, 19, 20]
    assert filled.read_since("orders", 20, 100) == []
    assert filled.read_since("orders", 0, 0) == []
    assert {e.topic for e in filled.read_since("pnl", 0, 100)} == {"pnl"}
    assert filled.read_since("unknown", 0, 100) == []


def test_read_range_is_after_exclusive_upto_inclusive(filled: EventLog) -> None:
    assert cursors(filled.read_range("orders", 3, 7)) == [4, 5, 6, 7]
    assert filled.read_range("orders", 7, 7) == []
    assert cursors(filled.read_range("pnl", 0, 100)) == [1, 2, 3, 4, 5]


def test_newest_returns_the_n_newest_oldest_first(filled: EventLog) -> None:
    assert cursors(filled.newest("orders", 3)) == [18, 19, 20]
    assert cursors(filled.newest("pnl", 50)) == [1, 2, 3, 4, 5]
    assert filled.newest("orders", 0) == []
    assert filled.newest("unknown", 3) == []


def test_first_cursor_is_the_oldest_stored(filled: EventLog) -> None:
    assert filled.first_cursor("orders") == 1
    assert filled.first_cursor("unknown") is None
    filled.prune(keep_days(None), now=T0, max_events_per_topic=5)
    assert filled.first_cursor("orders") == 16


def test_history_since_ts_is_exclusive_and_limited(filled: EventLog) -> None:
    # An event's own received_at excludes that event (float ms must not leak it back in).
    at_5 = parse_ts(filled.read_range("orders", 4, 5)[0].received_at)
    assert cursors(filled.history("orders", since_ts=at_5)) == list(range(6, 21))
    assert cursors(filled.history("orders", since_ts=at_5 - 0.0005)) == list(range(5, 21))
    assert cursors(filled.history("orders", since_ts=at_5, limit=3)) == [6, 7, 8]
    assert filled.history("orders", since_ts=T0 + 100) == []
    assert cursors(filled.history("pnl", since_ts=at_5 - 2)) == [4, 5]


def test_history_since_cursor_and_both_bounds(filled: EventLog) -> None:
    assert cursors(filled.history("orders", since_cursor=15)) == [16, 17, 18, 19, 20]
    assert cursors(filled.history("orders")) == list(range(1, 21))
    assert cursors(filled.history("orders", limit=2)) == [1, 2]
    # Both bounds apply: the tighter one wins.
    assert cursors(filled.history("orders", since_ts=T0 + 10, since_cursor=17)) == [18, 19, 20]
    assert cursors(filled.history("orders", since_ts=T0 + 17, since_cursor=2)) == [18, 19, 20]
    assert filled.history("orders", since_cursor=0, limit=0) == []


# ---------------------------------------------------------------------- retention


def test_prune_by_age_removes_only_old_events(event_log: EventLog) -> None:
    now = T0 + 30 * DAY
    event_log.append([ev("orders", c, at=T0 + c * DAY) for c in range(1, 31)])
    removed = event_log.prune(keep_days(10), now=now)
    # Received at T0 + c days; kept if received at or after now - 10 days (c >= 20).
    assert removed == 19
    assert event_log.first_cursor("orders") == 20
    assert event_log.pruned_upto("orders") == 19
    assert event_log.last_cursors() == {"orders": 30}
    assert event_log.stats().events == 11
    assert event_log.prune(keep_days(10), now=now) == 0


def test_prune_uses_each_topics_own_retention(event_log: EventLog) -> None:
    event_log.append([ev("orders", 1, at=T0), ev("marketdata:1", 1, at=T0), ev("gap", 1, at=T0)])
    days = {"orders": 90.0, "marketdata:1": 14.0, "gap": math.inf}
    removed = event_log.prune(days.__getitem__, now=T0 + 30 * DAY)
    assert removed == 1
    assert event_log.first_cursor("marketdata:1") is None
    assert event_log.first_cursor("orders") == 1
    assert event_log.first_cursor("gap") == 1


def test_pruning_everything_keeps_last_cursors(db_path: Path) -> None:
    with EventLog.open(db_path) as first:
        first.append([ev("orders", c) for c in range(1, 101)])
        assert first.prune(keep_days(1), now=T0 + 2 * DAY) == 100
        assert first.read_since("orders", 0, 1000) == []
        assert first.first_cursor("orders") is None
    with EventLog.open(db_path) as second:
        assert second.last_cursors() == {"orders": 100}
        assert not second.is_empty()
        assert second.topics() == ["orders"]
        assert second.pruned_upto("orders") == 100
        assert second.stats().events == 0
        assert second.stats().oldest_received_at is None


def test_prune_max_events_keeps_the_newest(event_log: EventLog) -> None:
    event_log.append([ev("orders", c) for c in range(1, 51)])
    event_log.append([ev("pnl", c) for c in range(1, 4)])
    removed = event_log.prune(keep_days(None), now=T0, max_events_per_topic=10)
    assert removed == 40
    assert cursors(event_log.read_since("orders", 0, 100)) == list(range(41, 51))
    assert cursors(event_log.read_since("pnl", 0, 100)) == [1, 2, 3]
    assert event_log.pruned_upto("orders") == 40
    assert event_log.pruned_upto("pnl") == 0
    assert event_log.prune(keep_days(None), now=T0, max_events_per_topic=0) == 13
    assert event_log.last_cursors() == {"orders": 50, "pnl": 3}


def test_prune_deletes_in_bounded_batches(event_log: EventLog) -> None:
    event_log.append([ev("orders", c, at=T0 + c) for c in range(1, 1001)])
    deletes: list[str] = []
    event_log._conn.set_trace_callback(
        lambda sql: deletes.append(sql) if sql.startswith("DELETE FROM events") else None
    )
    # Everything at or before T0 + 950 is old: 950 rows in batches of 100.
    removed = event_log.prune(keep_days(1), now=T0 + 950.5 + DAY, batch=100)
    event_log._conn.set_trace_callback(None)
    assert removed == 950
    # At most 100 rows per transaction, from the oldest up: ten of them, or more
    # when a slow transaction (a loaded machine) makes the log halve its batch.
    uppers = [int(sql.rsplit("<= ", 1)[1]) for sql in deletes]
    assert len(uppers) >= 10 and uppers[-1] == 950, uppers
    assert all(0 < b - a <= 100 for a, b in zip([0, *uppers], uppers, strict=False)), uppers
    assert event_log.first_cursor("orders") == 951
    assert event_log.pruned_upto("orders") == 950


def test_prune_keeps_an_unbroken_run_of_cursors(event_log: EventLog) -> None:
    # Cursor 3 was stamped before cursor 2 (the clock stepped back): it waits for 2,
    # so a reader never finds a hole below the newest kept cursor.
    event_log.append([ev("orders", 1, at=T0), ev("orders", 2, at=T0 + 5 * DAY)])
    event_log.append([ev("orders", 3, at=T0), ev("orders", 4, at=T0 + 5 * DAY)])
    assert event_log.prune(keep_days(1), now=T0 + 2 * DAY) == 1
    assert cursors(event_log.read_since("orders", 0, 10)) == [2, 3, 4]
    assert event_log.pruned_upto("orders") == 1


def test_pruned_upto_is_zero_for_unpruned_and_unknown_topics(filled: EventLog) -> None:
    assert filled.pruned_upto("orders") == 0
    assert filled.pruned_upto("never") == 0


# ---------------------------------------------------------------------- checkpoints


def test_checkpoints_round_trip_per_sink(event_log: EventLog) -> None:
    assert event_log.load_checkpoints("audit") == {}
    event_log.store_checkpoints("audit", {"orders": 5, "pnl": 2})
    event_log.store_checkpoints("hook", {"orders": 1})
    event_log.store_checkpoints("audit", {"orders": 9})
    event_log.store_checkpoints("audit", {})
    assert event_log.load_checkpoints("audit") == {"orders": 9, "pnl": 2}
    assert event_log.load_checkpoints("hook") == {"orders": 1}
    event_log.delete_checkpoints("audit")
    assert event_log.load_checkpoints("audit") == {}
    assert event_log.load_checkpoints("hook") == {"orders": 1}


# ---------------------------------------------------------------------- stats / close


def test_stats_report_size_count_and_oldest(event_log: EventLog) -> None:
    empty = event_log.stats()
    assert empty == LogStats(event_log.path, empty.size_bytes, 0, None)
    event_log.append([ev("orders", 1, at=T0 + 60), ev("pnl", 1, at=T0 + 30)])
    stats = event_log.stats()
    assert stats.events == 2
    assert stats.oldest_received_at == format_ts(T0 + 30)
    assert stats.size_bytes >= os.path.getsize(event_log.path) > 0


def test_close_is_idempotent_and_later_calls_fail_clearly(db_path: Path) -> None:
    opened = EventLog.open(db_path)
    opened.close()
    opened.close()
    with pytest.raises(LogError, match="closed"):
        opened.read_since("orders", 0, 1)
    with pytest.raises(LogError, match="closed"):
        opened.append([ev("orders", 1)])


# ---------------------------------------------------------------------- open errors


def test_newer_schema_is_refused(db_path: Path) -> None:
    EventLog.open(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 5,))
    with pytest.raises(LogOpenError) as caught:
        EventLog.open(db_path)
    message = str(caught.value)
    assert "newer bezant-trio" in message
    assert f"schema {SCHEMA_VERSION + 5} > {SCHEMA_VERSION}" in message
    assert str(db_path) in message
    assert "\n" not in message


def test_garbage_file_is_refused_naming_the_path(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(os.urandom(8192))
    with pytest.raises(LogOpenError, match="not a readable bezant-trio event log") as caught:
        EventLog.open(db_path)
    assert str(db_path) in str(caught.value)


def test_corrupt_database_is_refused(db_path: Path) -> None:
    with EventLog.open(db_path) as opened:
        opened.append([ev("orders", c, payload=b'"' + b"x" * 300 + b'"') for c in range(1, 200)])
    data = bytearray(db_path.read_bytes())
    assert len(data) > 4 * 4096
    data[2 * 4096 : 4 * 4096] = os.urandom(2 * 4096)  # keep the header, smash pages 3-4
    db_path.write_bytes(bytes(data))
    with pytest.raises(LogOpenError) as caught:
        EventLog.open(db_path)
    assert str(db_path) in str(caught.value)


def test_unwritable_location_is_refused_naming_the_path(tmp_path: Path) -> None:
    # Tests run as root, where chmod does not stop writes; a file where a
    # directory must go does.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = blocker / "events.db"
    with pytest.raises(LogOpenError, match="cannot create the directory") as caught:
        EventLog.open(path)
    assert str(path) in str(caught.value)


def test_a_directory_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LogOpenError, match="is a directory"):
        EventLog.open(tmp_path)


def test_someone_elses_sqlite_database_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(LogOpenError, match="not a bezant-trio event log"):
        EventLog.open(db_path)


# ---------------------------------------------------------------------- migrations


def _write_v1_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path)
    raw.executescript(V1_DDL)
    raw.execute(
        "INSERT INTO events VALUES ('orders', 1, 2, '2026-11-30T03:02:23.123Z', 1796007743123, ?)",
        (b'{"a":1}',),
    )
    raw.execute("INSERT INTO topics (topic, last_cursor) VALUES ('orders', 1)")
    raw.commit()
    raw.close()


def test_v1_file_migrates_forward_with_a_later_migration(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_v1_file(db_path)
    v2 = "ALTER TABLE events ADD COLUMN source TEXT; CREATE TABLE sinks (name TEXT PRIMARY KEY);"
    monkeypatch.setattr(log_module, "MIGRATIONS", [*log_module.MIGRATIONS, v2])
    with EventLog.open(db_path) as migrated:
        assert migrated.read_since("orders", 0, 10) == [
            Event.build("orders", 1, "2026-11-30T03:02:23.123Z", 2, b'{"a":1}')
        ]
        migrated.append([ev("orders", 2)])
        assert migrated.last_cursors() == {"orders": 2}
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION + 1,)
        ]
        assert "source" in [row[1] for row in raw.execute("PRAGMA table_info(events)")]
        assert raw.execute("SELECT count(*) FROM sinks").fetchone() == (0,)
    # Reopening at the new version runs nothing again.
    with EventLog.open(db_path) as again:
        assert again.last_cursors() == {"orders": 2}


def test_failed_migration_leaves_the_file_at_its_old_version(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_v1_file(db_path)
    broken = "CREATE TABLE added (x INTEGER); ALTER TABLE no_such_table ADD COLUMN y TEXT;"
    monkeypatch.setattr(log_module, "MIGRATIONS", [*log_module.MIGRATIONS, broken])
    with pytest.raises(LogOpenError, match=f"from schema {SCHEMA_VERSION} to {SCHEMA_VERSION + 1}"):
        EventLog.open(db_path)
    with sqlite3.connect(db_path) as raw:
        # The shipped migrations ran, each in its own transaction; the broken one did not.
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
        assert "added" not in tables
    monkeypatch.undo()
    with EventLog.open(db_path) as still_v1:
        assert cursors(still_v1.read_since("orders", 0, 10)) == [1]


def test_a_v1_file_gets_its_stored_counts_and_keeps_them(db_path: Path) -> None:
    _write_v1_file(db_path)
    with EventLog.open(db_path) as migrated:
        assert migrated.stats().events == 1
        migrated.append([ev("orders", 2), ev("orders", 3), ev("pnl", 1)])
        assert migrated.stats().events == 4
    with EventLog.open(db_path) as again:  # counted from the topics table, not the rows
        assert again.stats().events == 4
        assert again.prune(lambda topic: None, now=time.time(), max_events_per_topic=1) == 2
    with EventLog.open(db_path) as pruned:
        assert pruned.stats().events == 2
    with sqlite3.connect(db_path) as raw:
        assert dict(raw.execute("SELECT topic, stored FROM topics")) == {"orders": 1, "pnl": 1}


def test_the_current_schema_version_is_recorded(db_path: Path) -> None:
    EventLog.open(db_path).close()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


# ---------------------------------------------------------------------- write faults


def test_disk_full_raises_write_error_and_the_batch_succeeds_on_retry(event_log: EventLog) -> None:
    event_log.append([ev("orders", c) for c in range(1, 11)])
    event_log.store_epoch(2)
    # A page cap at the current size is a real SQLITE_FULL, as on a full disk.
    pages = event_log._conn.execute("PRAGMA page_count").fetchone()[0]
    event_log._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = b'"' + b"x" * 2000 + b'"'
    batch = [ev("orders", c, payload=big) for c in range(11, 111)]
    with pytest.raises(LogWriteError, match="check free disk space") as caught:
        event_log.append(batch)
    assert "\n" not in str(caught.value)
    assert event_log.last_cursors() == {"orders": 10}
    assert cursors(event_log.read_since("orders", 0, 1000)) == list(range(1, 11))
    assert event_log.stats().events == 10

    event_log._conn.execute("PRAGMA max_page_count = 1073741823")
    event_log.append(batch)
    assert cursors(event_log.read_since("orders", 0, 1000)) == list(range(1, 111))
    assert event_log.last_cursors() == {"orders": 110}
    assert event_log.load_epoch() == 2
    assert event_log.stats().events == 110


def test_a_read_only_database_raises_write_error(event_log: EventLog) -> None:
    event_log._conn.execute("PRAGMA query_only = 1")
    with pytest.raises(LogWriteError):
        event_log.store_epoch(5)
    with pytest.raises(LogWriteError):
        event_log.store_checkpoints("audit", {"orders": 1})
    event_log._conn.execute("PRAGMA query_only = 0")
    event_log.store_epoch(5)
    assert event_log.load_epoch() == 5


def test_a_bad_received_at_is_a_value_error_not_a_write_error(event_log: EventLog) -> None:
    bad = Event.build("orders", 1, "yesterday", 1, b"{}")
    with pytest.raises(ValueError):
        event_log.append([bad])
    assert event_log.is_empty()
    event_log.append([Event.build("orders", 1, "2026-11-30T03:02:23+01:00", 1, b"{}")])
    assert event_log.history("orders", since_ts=parse_ts("2026-11-30T02:02:22Z")) != []


# ---------------------------------------------------------------------- concurrency


def test_reads_see_whole_batches_while_another_thread_writes(event_log: EventLog) -> None:
    total, size = 20_000, 500
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for start in range(1, total + 1, size):
                event_log.append([ev("orders", c) for c in range(start, start + size)])
        except BaseException as err:
            errors.append(err)

    writer = threading.Thread(target=write)
    writer.start()
    seen, deadline = 0, time.monotonic() + 60
    while seen < total and time.monotonic() < deadline:
        batch = event_log.read_since("orders", seen, 10_000)
        assert cursors(batch) == list(range(seen + 1, seen + 1 + len(batch)))
        assert len(batch) % size == 0  # a batch is visible whole or not at all
        seen += len(batch)
    writer.join(timeout=60)
    assert not errors
    assert seen == total


def test_reads_do_not_wait_for_an_open_write_transaction(event_log: EventLog) -> None:
    event_log.append([ev("orders", 1)])
    other = sqlite3.connect(event_log.path, isolation_level=None, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")
    other.execute(
        "INSERT INTO events VALUES ('orders', 2, 1, '2026-11-30T03:02:23.123Z', 0, x'7b7d')"
    )
    results: list[list[int]] = []
    reader = threading.Thread(
        target=lambda: results.append(cursors(event_log.read_since("orders", 0, 10)))
    )
    reader.start()
    reader.join(timeout=2)
    try:
        assert not reader.is_alive()
        assert results == [[1]]  # the uncommitted row is invisible
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_two_hundred_appended_batches_keep_every_event(event_log: EventLog) -> None:
    # How fast appends go is a benchmark's question (bench/run.py, "ingest"),
    # not a test's: this holds what many batches of market data must leave behind.
    total, size = 100_000, 500
    payload = orjson.dumps({"topic": "smd+265598", "31": "189.25", "84": "189.24", "86": "189.26"})
    payload += b" " * max(0, 200 - len(payload))
    events = [
        ev("marketdata:265598", c, at=T0 + c / 1000, payload=payload) for c in range(1, total + 1)
    ]
    for start in range(0, total, size):
        event_log.append(events[start : start + size])
    assert event_log.stats().events == total
    assert event_log.last_cursors() == {"marketdata:265598": total}
    assert cursors(event_log.read_since("marketdata:265598", total - 3, 10)) == [
        total - 2,
        total - 1,
        total,
    ]
