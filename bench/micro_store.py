"""The store path in one process, no network: publish N events, run the writer, until visible.

    .venv/bin/python bench/micro_store.py --events 50000 --topics 1 --log
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python bench/micro_store.py --events 20000 --topics 100 --log

What it times is what the connector's read loop and the hub's writer do per
event once a frame is classified: ``Hub.publish_json`` for every event (in
batches of 500, as whole socket reads arrive), the writer's commits and
``_make_visible`` (rings, state views, wake-ups), with one reader parked per
topic. Prints one JSON line: wall and CPU seconds, µs per event. On a shared
machine, CPU per event and callgrind's instruction counts (``Ir``) are the
figures to compare A/B; wall time follows the load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson
import trio
import trio.lowlevel

from bezant_trio.store.hub import Hub
from bezant_trio.store.log import EventLog

FRAME = (
    b'{"topic":"smd+%d","31":"382.90","84":"382.81","86":"382.96","85":"200",'
    b'"88":"300","87":"1.2M","conid":%d,"_updated":1796118281067,"server_id":"q0","seq":%d}'
)


async def run(
    events: int, topics: int, log: bool, capacity: int, read_batch: int, decoded: bool = False
) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bezant-micro-"))
    elog = EventLog.open(workdir / "events.db") if log else None
    hub = Hub(lambda topic: capacity, event_log=elog)
    await hub.open()
    names = [f"marketdata:{1000 + i}" for i in range(topics)]
    payloads = [FRAME % (1000 + i % topics, 1000 + i % topics, i) for i in range(events)]
    # As the connector does: the frame's decoded dict goes along. Decoded in both
    # variants (before timing), so an instruction count compares only what the hub does.
    dicts = [orjson.loads(p) for p in payloads]
    if not decoded:
        dicts = [None] * events
    done = trio.Event()
    read = 0

    async def reader(topic: str, until: int) -> None:
        nonlocal read
        since = 0
        while since < until:
            await hub.wait(topic, since, 30, limit=1000)
            answer = await hub.read(topic, since, 1000)
            if answer.expired:
                since = answer.head_cursor
                continue
            since = answer.next_cursor
            read += len(answer.events)
        if all(hub.head(t) >= until for t in names):
            done.set()

    per_topic = events // topics
    started = time.perf_counter()
    cpu0 = time.process_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run_writer)
        for topic in names:
            nursery.start_soon(reader, topic, per_topic)
        await trio.lowlevel.checkpoint()
        i = 0
        while i < per_topic * topics:
            for j in range(i, min(i + read_batch, per_topic * topics)):
                hub.publish_json(names[j % topics], payloads[j], dicts[j])
            i += read_batch
            if hub.backpressure:
                await hub.wait_writable()
            await trio.lowlevel.checkpoint()  # the next socket read
        with trio.fail_after(120):
            await done.wait()
        nursery.cancel_scope.cancel()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    await hub.close()
    if elog is not None:
        elog.close()
    n = per_topic * topics
    return {
        "events": n,
        "topics": topics,
        "log": log,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "us_per_event_cpu": round(cpu / n * 1e6, 3),
        "us_per_event_wall": round(wall / n * 1e6, 3),
        "commits": hub.log_state.commits,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--topics", type=int, default=1)
    parser.add_argument("--log", action="store_true", help="with the SQLite log (else memory only)")
    parser.add_argument("--capacity", type=int, default=2000, help="ring capacity per topic")
    parser.add_argument("--read-batch", type=int, default=500, help="events per socket read")
    parser.add_argument(
        "--decoded", action="store_true", help="hand each payload over decoded too (the connector)"
    )
    args = parser.parse_args()
    out = trio.run(
        run, args.events, args.topics, args.log, args.capacity, args.read_batch, args.decoded
    )
    print(orjson.dumps(out).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
