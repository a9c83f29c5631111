"""Faults mid-stream: a daemon kill -9 and restart, a NATS server kill -9, a cluster node lost.

The gateway simulator streams orders and PnL the whole time; afterwards the
stream must hold every event ``GET /events/{topic}`` serves, byte for byte,
each once (a retried batch is dropped by the server's duplicate window), in
cursor order per subject.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import trio
from bezant_trio_nats import subject_for
from bezant_trio_nats.testing import NatsServer
from nats_helpers import (
    StoredMessage,
    by_subject,
    joined,
    read_stream,
    rest_events,
    stream_leader,
    wait_sink,
)

from bezant_trio.simulator import GatewaySimulator
from bezant_trio.testing import DaemonProcess

RATES = {"orders": 150, "pnl": 150}


def _sink(servers: list[str], **options: Any) -> dict[str, Any]:
    return {
        "name": "fanout",
        "type": "nats",
        "servers": servers,
        "batch_size": 50,
        "retry": {"min": 0.05, "max": 0.3},
        "ack_timeout": 1,
        "connect_timeout": 1,
        **options,
    }


async def _assert_stream_holds_exactly_what_rest_serves(
    client: httpx.AsyncClient, url: str, servers: list[str], checkpoints: dict[str, int]
) -> list[StoredMessage]:
    """Stream contents == REST contents up to what the sink acknowledged; no repeats."""
    stored = await read_stream(servers)
    subjects = by_subject(stored)
    for topic, checkpoint in checkpoints.items():
        messages = subjects.pop(subject_for("bezant", topic), [])
        cursors = [m.cursor for m in messages]
        assert len(set(cursors)) == len(cursors), f"{topic}: a cursor is stored twice"
        assert cursors == sorted(cursors), f"{topic}: not in cursor order"
        rest = await rest_events(client, url, topic)
        served = [e for e in rest.events if e["cursor"] <= checkpoint]
        acked = [c for c in cursors if c <= checkpoint]
        assert acked == [e["cursor"] for e in served], f"{topic}: events missing"
        # Past the checkpoint: stored while the sink waits for their acks (the
        # stream may be read mid-batch), never out of order or with a hole.
        later = [e["cursor"] for e in rest.events if e["cursor"] > checkpoint]
        pending = cursors[len(acked) :]
        assert pending == later[: len(pending)], f"{topic}: stored past the checkpoint: {pending}"
        assert rest.raw.startswith(joined(messages)), f"{topic}: bytes differ from REST"
    assert not subjects, f"subjects without a topic: {sorted(subjects)}"
    return stored


async def test_nothing_lost_or_doubled_across_a_daemon_kill_and_a_nats_kill(
    tmp_path: Path, nursery: trio.Nursery, nats_server: NatsServer
) -> None:
    sim = await nursery.start(GatewaySimulator().run)
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": sim.base_url},
            "http": {"bind": "127.0.0.1:0"},
            # resync off: a resync event landing after the REST snapshot below
            # would be in the stream and not in the snapshot.
            "events": {"backoff": {"min": 0.05, "max": 0.2}, "resync": False},
            "store": {"path": str(tmp_path / "state" / "events.db")},
            "shutdown_grace": 5,
            "sinks": [_sink([nats_server.url])],
        },
    )
    delivered = 0

    def more(count: int) -> Any:
        target = delivered + count  # "delivered" counts from this daemon process's start
        return lambda status: status["delivered"] >= target

    try:
        with trio.fail_after(45):
            async with httpx.AsyncClient(timeout=10) as client:
                await daemon.start()
                await sim.wait_subscribed("orders")
                await sim.wait_subscribed("pnl")
                sim.start_stream(RATES)
                delivered = (await wait_sink(daemon, client, "fanout", more(150)))["delivered"]

                await nats_server.kill()  # mid-stream, no shutdown of any kind
                status = await wait_sink(daemon, client, "fanout", lambda s: s["failures"] > 0)
                assert "NATS" in status["last_error"] or "connection" in status["last_error"]
                await nats_server.start()  # same store dir, same port
                delivered = (await wait_sink(daemon, client, "fanout", more(150)))["delivered"]

                daemon.kill()  # checkpoints not yet flushed: some batches come again
                await daemon.start()
                await sim.wait_subscribed("orders")
                delivered = 0
                await wait_sink(daemon, client, "fanout", more(150))

                sim.stop_stream()
                served = {
                    t: (await rest_events(client, daemon.url, t)).events
                    for t in ("orders", "pnl", "gap")
                }
                heads = {topic: events[-1]["cursor"] for topic, events in served.items()}
                status = await wait_sink(
                    daemon,
                    client,
                    "fanout",
                    lambda s: all(s["checkpoints"].get(t, 0) >= h for t, h in heads.items()),
                )
                stored = await _assert_stream_holds_exactly_what_rest_serves(
                    client, daemon.url, [nats_server.url], status["checkpoints"]
                )
    finally:
        daemon.kill()
    assert len(stored) >= sum(len(events) for events in served.values()) > 300
    gaps = [m for m in stored if m.subject == "bezant.gap"]
    assert gaps, "the restart's process_restart gap reached the stream too"


async def test_a_three_node_cluster_keeps_publishing_when_the_stream_leader_dies(
    bezant_daemon_factory, bezant_gateway_simulator, nats_cluster: list[NatsServer]
) -> None:
    sim = bezant_gateway_simulator
    servers = [node.url for node in nats_cluster]
    with trio.fail_after(45):
        daemon = await bezant_daemon_factory(
            [_sink(servers, replicas=3, topics=["orders", "pnl"])],
            gateway=sim,
            # No durable log here: the rings must hold the whole run for the REST check.
            config={"events": {"capacity": {"orders": 50_000, "pnl": 50_000}}},
        )
        await sim.wait_subscribed("orders")
        await sim.wait_subscribed("pnl")
        sim.start_stream(RATES)
        await daemon.sinks.wait_delivered("fanout", 150)

        leader_name = await stream_leader(servers)
        leader = next(node for node in nats_cluster if node.name == leader_name)
        await leader.stop(signal.SIGKILL)  # a crash: the others elect a new leader
        survivors = [node.url for node in nats_cluster if node is not leader]
        before = daemon.sinks.status()["fanout"]["delivered"]
        await daemon.sinks.wait_delivered("fanout", before + 300)

        sim.stop_stream()
        # The last frames may still be on their way: the heads are taken once
        # the daemon holds each channel's last frame, or the sink goes on past
        # them while the stream is read.
        for topic in ("orders", "pnl"):
            last = sim.written(topic).last or 0
            while await _newest_seq(daemon.hub, topic) < last:
                await daemon.hub.wait(topic, daemon.hub.head(topic), 1)
        heads = {topic: daemon.hub.head(topic) for topic in ("orders", "pnl")}
        await daemon.sinks.wait_status(
            "fanout", lambda s: all(s["checkpoints"].get(t, 0) >= h for t, h in heads.items())
        )
        async with httpx.AsyncClient(timeout=10) as client:
            checkpoints = daemon.sinks.status()["fanout"]["checkpoints"]
            stored = await _assert_stream_holds_exactly_what_rest_serves(
                client, daemon.http_url, survivors, checkpoints
            )
    assert len(stored) >= sum(heads.values()) > 450
    assert await stream_leader(survivors) != leader_name


async def _newest_seq(hub: Any, topic: str) -> int:
    """The simulator's seq of the newest frame ``topic`` holds (daemon events have none)."""
    head = hub.head(topic)
    read = await hub.read(topic, max(0, head - 20), 20)
    seqs = [0]
    for event in read.events:
        args = event.payload.get("args")
        if isinstance(args, list) and args and isinstance(args[0], dict) and "seq" in args[0]:
            seqs.append(int(args[0]["seq"]))
        elif isinstance(args, dict):
            seqs += [int(v["seq"]) for v in args.values() if isinstance(v, dict) and "seq" in v]
        elif "seq" in event.payload:
            seqs.append(int(event.payload["seq"]))
    return max(seqs)
