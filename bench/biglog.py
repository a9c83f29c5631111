"""Build a large event log with SQLite directly, in the log's own schema, for the bench.

    .venv/bin/python bench/biglog.py --out /tmp/big.db --topics 10 --per-topic 1000000

Going through the daemon would take as long as ingesting that many frames;
a bulk insert of the same rows takes seconds. The schema comes from
``EventLog.open`` (so it is always the current one); the rows are
``/sim/burst``-like market-data frames, ``received_ms`` spaced evenly from
``--start-ms`` by ``--step-ms`` per topic, and the file is left as a clean
stop leaves it (``run_state`` clean, the topics' ``last_cursor`` and
``stored``), so a daemon opening it starts as it would in the field.
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import sys
import time

from bezant_trio.store.log import EventLog

FRAME = (
    '{"topic":"smd+%d","31":"382.90","84":"382.81","86":"382.96","85":"200",'
    '"88":"300","87":"1.2M","conid":%d,"_updated":%d,"server_id":"q0","seq":%d}'
)


def build(path: str, topics: list[int], per_topic: int, start_ms: int, step_ms: float) -> float:
    """Write ``per_topic`` events for each conid in ``topics``; returns the seconds it took."""
    started = time.perf_counter()
    EventLog.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    # Bulk load without the time index, then build it once: far faster than
    # keeping a second b-tree up to date row by row.
    conn.execute("DROP INDEX events_topic_received")
    for conid in topics:
        topic = f"marketdata:{conid}"
        conn.execute("BEGIN")
        # The rows are generated inside SQLite (a recursive CTE): no Python per row.
        conn.execute(
            """
            WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)
            INSERT INTO events (topic, cursor, reset_epoch, received_at, received_ms, payload)
            SELECT ?, x, 1,
                   strftime('%Y-%m-%dT%H:%M:%f', ms / 1000.0, 'unixepoch') || 'Z', ms,
                   CAST(printf(?, ?, ?, ms, x) AS BLOB)
            FROM (SELECT x, CAST(? + (x - 1) * ? AS INTEGER) AS ms FROM c)
            """,
            (per_topic, topic, FRAME, conid, conid, start_ms, step_ms),
        )
        conn.execute(
            "INSERT INTO topics (topic, last_cursor, stored) VALUES (?, ?, ?)",
            (topic, per_topic, per_topic),
        )
        conn.execute("COMMIT")
    conn.execute("CREATE INDEX events_topic_received ON events (topic, received_ms)")
    for key, value in (
        ("run_state", "clean"),
        ("reset_epoch", "1"),
        ("cursor_space", secrets.token_hex(8)),
    ):
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--topics", type=int, default=10, help="conids 900, 901, ...")
    parser.add_argument("--per-topic", type=int, default=1_000_000)
    parser.add_argument("--start-ms", type=int, default=int(time.time() * 1000) - 86_400_000)
    parser.add_argument("--step-ms", type=float, default=1.0)
    args = parser.parse_args()
    conids = list(range(900, 900 + args.topics))
    seconds = build(args.out, conids, args.per_topic, args.start_ms, args.step_ms)
    print(f"built {args.out}: {args.topics} x {args.per_topic:,} events in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
