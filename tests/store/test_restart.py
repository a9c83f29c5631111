"""Restarts of a real daemon process: SIGTERM and kill -9 with the durable log on."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bezant_trio.simulator import GatewaySimulator
from bezant_trio.testing import DaemonProcess
from helpers import SSL_CONTEXT, fill_disk, seq_of, small_disk

#: A bound for one step that takes well under a second when it works (the log
#: noticing a full disk, a poll catching up): a broken step fails in seconds.
STEP = 10


def _config(sim: GatewaySimulator, tmp_path: Path) -> dict[str, Any]:
    return {
        "gateway": {"url": sim.base_url},
        "http": {"bind": "127.0.0.1:0"},
        # resync off: cursors are counted exactly across the restart.
        "events": {
            "capacity": {"orders": 1000, "pnl": 1000},
            "backoff": {"min": 0.05, "max": 0.2},
            "resync": False,
        },
        "store": {"path": str(tmp_path / "state" / "events.db")},
        "shutdown_grace": 5,
    }


async def _read_all(client: httpx.AsyncClient, url: str, topic: str, since: int = 0) -> list[dict]:
    """Every event of ``topic`` after ``since`` up to the head at the call (a stream
    that keeps running while this reads would otherwise keep it reading)."""
    status = await client.get(f"{url}/events/_status")
    head = status.json()["head_cursors"].get(topic, 0)
    events: list[dict] = []
    while since < head:
        r = await client.get(f"{url}/events/{topic}", params={"since": since, "limit": 1000})
        assert r.status_code in (200, 204), r.text
        if r.status_code == 204:
            break
        body = r.json()
        events += body["events"]
        since = body["next_cursor"]
    return events


async def test_sigterm_restart_continues_cursors_and_serves_old_cursors_from_the_log(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    sim = GatewaySimulator()
    await nursery.start(sim.run)
    daemon = DaemonProcess(tmp_path, _config(sim, tmp_path))
    try:
        with trio.fail_after(60):
            url = await daemon.start()
            await sim.wait_subscribed("orders", timeout=20)
            await sim.wait_subscribed("pnl", timeout=20)
            for _ in range(25):
                await sim.emit_orders(100)
                await sim.emit_pnl(100)
            async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=30) as client:
                before: dict[str, list[dict]] = {}
                for topic in ("orders", "pnl"):
                    while len(before.get(topic, [])) < 2500:
                        before[topic] = await _read_all(client, url, topic)
                epoch = before["orders"][-1]["reset_epoch"]
                assert await daemon.stop(signal.SIGTERM) == 0
                await sim.wait_connections(0, timeout=10)  # the next order goes to the new socket
                url = await daemon.start()
                await sim.wait_subscribed("orders", timeout=20)
                await sim.emit_orders(1)
                after = await _read_all(client, url, "orders", since=100)  # an old cursor
                while not after or "reason" in after[-1]["payload"]:
                    after = await _read_all(client, url, "orders", since=100)
                pnl_after = await _read_all(client, url, "pnl", since=2400)
                gaps = await _read_all(client, url, "gap")
    finally:
        daemon.kill()
        sim.stop()
    assert [e["cursor"] for e in after] == list(range(101, 2503))
    assert after[:2400] == before["orders"][100:]  # identical events, served from the log
    restart_gap = after[2400]
    assert restart_gap["payload"]["reason"] == "process_restart"
    assert restart_gap["reset_epoch"] == restart_gap["payload"]["new_reset_epoch"] == epoch + 1
    assert seq_of(after[2401]) == 2501 and after[2401]["reset_epoch"] == epoch + 1
    assert [e["payload"].get("reason") for e in pnl_after] == [None] * 100 + ["process_restart"]
    assert [g["payload"]["reason"] for g in gaps] == ["process_restart"]


#: kill -9 and restart this many times. Ten: a remapped cursor shows at the first
#: restart after it (every earlier event is read back each time), and the
#: kill lands at a different point of the stream each time; twenty added time,
#: not cases (chaos kills at random besides, tests/reliability/test_chaos.py).
KILLS = 10


@pytest.mark.timeout(180)  # ten kill -9 and restarts of a daemon process
async def test_kill_9_ten_times_never_remaps_a_cursor_a_poller_saw(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    sim = GatewaySimulator(rates={"orders": 1000, "pnl": 1000})
    await nursery.start(sim.run)
    daemon = DaemonProcess(tmp_path, _config(sim, tmp_path))
    seen: dict[tuple[str, int], dict] = {}
    try:
        with trio.fail_after(240):
            async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=30) as client:
                for _ in range(KILLS):
                    url = await daemon.start()
                    # everything a poller saw before any kill is still there, unchanged
                    present: set[tuple[str, int]] = set()
                    for topic in ("orders", "pnl"):
                        for event in await _read_all(client, url, topic):
                            key = (topic, event["cursor"])
                            present.add(key)
                            if key in seen:
                                assert seen[key] == event, key
                    assert set(seen) <= present, sorted(set(seen) - present)[:5]
                    count = len(seen)
                    await sim.wait_subscribed("orders", timeout=20)
                    # poll while the stream runs, then kill -9 mid-stream
                    since = {
                        t: max((c for (tt, c) in seen if tt == t), default=0)
                        for t in ("orders", "pnl")
                    }
                    while len(seen) < count + 300:
                        for topic in ("orders", "pnl"):
                            r = await client.get(
                                f"{url}/events/{topic}",
                                params={"since": since[topic], "limit": 200, "wait": 1},
                            )
                            if r.status_code == 200:
                                for event in r.json()["events"]:
                                    seen[(topic, event["cursor"])] = event
                                since[topic] = r.json()["next_cursor"]
                    daemon.kill()
    finally:
        daemon.kill()
        sim.stop()
    assert len(seen) >= KILLS * 300


async def _poll_topics(
    client: httpx.AsyncClient,
    url: str,
    since: dict[str, int],
    seen: dict[tuple[str, int], dict],
    until: Callable[[], bool],
) -> None:
    """Long-poll every topic of ``since`` in turn, recording what comes, until ``until()``."""
    while not until():
        for topic in since:
            r = await client.get(
                f"{url}/events/{topic}", params={"since": since[topic], "limit": 500, "wait": 1}
            )
            assert r.status_code in (200, 204), r.text
            if r.status_code == 200:
                for event in r.json()["events"]:
                    seen[(topic, event["cursor"])] = event
                since[topic] = r.json()["next_cursor"]


async def test_kill_9_while_the_log_is_degraded_never_reuses_a_cursor_a_poller_saw(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The case the unclean-start cursor skip is for (docs/architecture.md, "The
    visibility rule"): a full disk, events shown from memory before they were
    durable, ``kill -9``, a restart on a disk with room again."""
    disk = tmp_path / "small-disk"
    topics = ("orders", "pnl")
    with small_disk(disk, "16m"):
        sim = GatewaySimulator(rates={"orders": 500, "pnl": 500})
        await nursery.start(sim.run)
        config = _config(sim, tmp_path)
        config["store"]["path"] = str(disk / "events.db")
        daemon = DaemonProcess(tmp_path, config)
        seen: dict[tuple[str, int], dict] = {}
        since = dict.fromkeys(topics, 0)
        try:
            async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=30) as client:
                with trio.fail_after(STEP * 2):
                    url = await daemon.start()
                    await sim.wait_subscribed("orders", timeout=STEP)
                    await sim.wait_subscribed("pnl", timeout=STEP)
                    await _poll_topics(client, url, since, seen, lambda: len(seen) >= 400)
                # The disk fills: the log degrades, capture goes on from memory.
                await trio.to_thread.run_sync(fill_disk, disk / "filler")
                degraded = await daemon.wait_status(
                    lambda s: s["log"]["state"] == "degraded" and s["log"]["backlog"] >= 200,
                    timeout=STEP,
                )
                # A poller reads the events only memory holds, then the daemon dies.
                heads = degraded["head_cursors"]
                with trio.fail_after(STEP):
                    await _poll_topics(
                        client, url, since, seen, lambda: all(since[t] >= heads[t] for t in topics)
                    )
                daemon.kill()
                (disk / "filler").unlink()
                with trio.fail_after(STEP * 2):
                    url = await daemon.start()
                    await sim.wait_subscribed("orders", timeout=STEP)
                    after = {t: await _read_all(client, url, t) for t in topics}
                    # Let the new run capture past every cursor the poller saw.
                    newest = max(cursor for _, cursor in seen)
                    while min(events[-1]["cursor"] for events in after.values()) <= newest:
                        after = {t: await _read_all(client, url, t) for t in topics}
        finally:
            daemon.kill()
            sim.stop()
    kept = {(t, e["cursor"]): e for t, events in after.items() for e in events}
    lost = sorted(key for key in seen if key not in kept)
    # The scenario did what it says: the poller saw events that never became durable.
    assert lost, "every event the poller saw was committed: the log never served from memory"
    reused = [key for key in seen if key in kept and kept[key] != seen[key]]
    assert not reused, f"cursors a poller saw now name other events: {reused[:5]}"
    for topic in topics:
        restart_gap = next(e for e in after[topic] if e["payload"].get("reason"))
        assert restart_gap["payload"]["reason"] == "process_restart"
        # The new run's cursors start beyond everything shown before the crash.
        assert restart_gap["cursor"] > max(c for t, c in seen if t == topic)
