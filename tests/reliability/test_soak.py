"""Load and soak: 500 events/s mixed, 50 pollers, 2 sinks, a drop every while; nothing lost.

A real daemon process (SQLite log, a webhook sink and a file sink) against the
in-process simulator streaming 500 events/s over orders, PnL, trades and two
market-data conids, polled by 50 HTTP clients: one recording poller per topic
that keeps the seqs it saw, and load pollers that check order on the fly. The
gateway drops the connection every 30 s (CI, 2 minute run) or every 2 minutes
(``BEZANT_SOAK=1``, 1 hour). The daemon's RSS and open file descriptors are
sampled throughout; after a warm-up (rings filling, caches growing) their
slope is reported and must stay flat.
"""

from __future__ import annotations

import array
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from bezant_trio.simulator import SeqRanges
from bezant_trio.testing import fd_count, rss_kib
from helpers import seq_of, wait_until

from .conftest import SOAK
from .rig import CHANNELS, Rig, expand, is_gap

RATES = {"orders": 100.0, "pnl": 100.0, "trades": 100.0, "marketdata": 100.0}  # 500/s
POLLERS = 50


@dataclass
class LoadPoller:
    """Long-polls a topic from cursor 0; checks order as it goes, records seqs if asked."""

    rig: Rig
    topic: str
    record: bool
    pause: float
    since: int = 0
    events: int = 0
    gaps: Counter[str] = field(default_factory=Counter)
    seqs: array.array = field(default_factory=lambda: array.array("q"))
    errors: list[str] = field(default_factory=list)
    last_seq: int = 0

    async def run(self, client: httpx.AsyncClient) -> None:
        family, _, key = self.topic.partition(":")
        path = "/events/marketdata" if family == "marketdata" else f"/events/{self.topic}"
        while True:
            url = self.rig.daemon.url if self.rig.daemon else None
            params: dict[str, Any] = {"since": self.since, "limit": 1000, "wait": 2}
            if family == "marketdata":
                params["conid"] = key
            try:
                response = await client.get(f"{url}{path}", params=params)
            except httpx.TransportError as exc:
                self.errors.append(f"{self.topic}: {exc!r}")
                await trio.sleep(0.1)
                continue
            if response.status_code == 200:
                body = orjson.loads(response.content)
                for event in body["events"]:
                    if event["cursor"] <= self.since:
                        self.errors.append(f"{self.topic}: cursor {event['cursor']} repeated")
                    self.since = event["cursor"]
                    self.events += 1
                    if is_gap(event):
                        self.gaps[event["payload"]["reason"]] += 1
                        continue
                    seq = seq_of(event)
                    if seq <= self.last_seq:
                        self.errors.append(f"{self.topic}: seq {seq} after {self.last_seq}")
                    self.last_seq = seq
                    if self.record:
                        self.seqs.append(seq)
            elif response.status_code != 204:
                self.errors.append(f"{self.topic}: HTTP {response.status_code}")
            await trio.sleep(self.pause)


def _file_sink_cursors(path: Path) -> dict[str, SeqRanges]:
    filed: dict[str, SeqRanges] = {}
    with open(path, "rb") as lines:
        for line in lines:
            event = orjson.loads(line)
            filed.setdefault(event["topic"], SeqRanges()).add(event["cursor"])
    return filed


def _slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per minute) of (seconds, value) samples."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 60 if var else 0.0


async def _soak(rig: Rig, seed: int, duration: float, drop_every: float, warm_up: float) -> None:
    rng = random.Random(seed)
    config = rig.config(test_sink=False, heartbeat_timeout=10.0)
    config["events"]["capacity"] = {"default": 2000}
    daemon = await rig.start_process(config)
    assert rig.endpoint is not None
    rig.endpoint.record = "cursors"  # a long run would not fit every delivery in memory
    topics = [*CHANNELS, "gap"]
    pollers = [LoadPoller(rig, topic, True, 0.05) for topic in topics]
    pollers += [
        LoadPoller(rig, topics[i % len(topics)], False, rng.uniform(0.1, 1.0))
        for i in range(POLLERS - len(pollers))
    ]
    samples: list[tuple[float, int, int]] = []
    drops = 0
    limits = httpx.Limits(max_connections=POLLERS + 10, max_keepalive_connections=POLLERS + 10)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client, trio.open_nursery() as n:
        for poller in pollers:
            n.start_soon(poller.run, client)
        with trio.fail_after(duration + 120):
            await rig.wait_subscribed()
            rig.sim.start_stream(RATES)
            start = trio.current_time()
            next_drop = start + drop_every
            while (now := trio.current_time()) < start + duration:
                samples.append((now - start, rss_kib(daemon.pid), fd_count(daemon.pid)))
                if now >= next_drop:
                    await rig.sim.drop_connections("abrupt")
                    drops += 1
                    next_drop += drop_every
                    await rig.wait_status(lambda s, d=drops: s["reconnect_count"] >= d)
                    await rig.wait_newest_subscribed()
                await trio.sleep(min(2.0, duration / 120))  # the sampling pace
            rig.sim.stop_stream()
            recorders = {p.topic: p for p in pollers if p.record}
            for channel in CHANNELS:
                last = rig.sim.written(channel).last or 0
                recorder = recorders[channel]
                await wait_until(lambda r=recorder, n=last: r.last_seq >= n, poll=0.05)
            await rig.wait_sinks_caught_up()
            status = await rig.status()
            heads = status["head_cursors"]
            await wait_until(
                lambda: all(p.since >= heads.get(p.topic, 0) for p in pollers), poll=0.05
            )
        n.cancel_scope.cancel()
    elapsed = samples[-1][0]
    steady = [s for s in samples if s[0] >= warm_up]
    rss_slope = _slope([(t, rss) for t, rss, _ in steady])
    fd_slope = _slope([(t, fds) for t, _, fds in steady])
    fds = [fds for _, _, fds in steady]
    total = sum(len(rig.sim.written(ch)) for ch in CHANNELS)
    print(
        f"soak seed={seed} {elapsed:.0f} s, {total} frames ({total / elapsed:.0f}/s), "
        f"{drops} drops; RSS {steady[0][1]}->{steady[-1][1]} KiB, slope {rss_slope:.0f} KiB/min; "
        f"fds {min(fds)}..{max(fds)}, slope {fd_slope:.2f}/min; RSS MiB/fds over time: "
        + " ".join(
            f"{t:.0f}s:{rss / 1024:.1f}/{n}" for t, rss, n in samples[:: max(1, len(samples) // 12)]
        )
    )
    # Nothing lost: every frame written is captured once, in order, by every poller.
    assert status["reconnect_count"] == drops
    for poller in pollers:
        assert not poller.errors, poller.errors[:5]
        recorder = recorders[poller.topic]
        assert poller.events == recorder.events, (poller.topic, poller.events, recorder.events)
    for channel in CHANNELS:
        seqs = recorders[channel].seqs
        assert list(seqs) == sorted(set(seqs)), channel
        written = expand(rig.sim.written(channel).ranges())
        assert set(seqs) == written, (channel, sorted(written - set(seqs))[:10])
        assert recorders[channel].gaps == {"reconnected_after_disconnect": drops}
    assert recorders["gap"].events == drops
    # Both sinks have everything (at least once), in cursor order.
    for topic in topics:
        head = heads.get(topic, 0)
        hooked = rig.endpoint.cursors.get(topic, SeqRanges())
        assert hooked.count == head and hooked.last == head, (topic, hooked.ranges()[:3], head)
    assert not rig.endpoint.out_of_order, rig.endpoint.out_of_order[:5]
    filed = await trio.to_thread.run_sync(_file_sink_cursors, rig.file_sink_path)
    for topic in topics:
        assert filed[topic].count == heads[topic], topic
    # Flat: no descriptor leak, no memory ramp after the warm-up. Descriptors
    # swing by 20 and more with keep-alive connections (up to POLLERS + 10) and
    # the log's reader pool, so peaks say little; a leak raises the floor: the
    # fewest open in the last quarter may not exceed the fewest in the first
    # quarter by more than 5. Memory: SQLite's page caches (16 MiB for the
    # writer) fill during the first minute while the log grows (slopes of 3-13
    # MiB/min between 25 and 60 s), then level off (under 1 MiB/min from 60 to
    # 120 s); every event kept would be ~10-25 MiB/min at 500/s, so the CI run
    # holds the slope after 60 s under 6 MiB/min, the hour-long run under 1.
    quarter = max(1, len(fds) // 4)
    assert min(fds[-quarter:]) <= min(fds[:quarter]) + 5, fds
    assert rss_slope < (1024 if SOAK else 6 * 1024), rss_slope


async def test_soak_ci_2_minutes(rig: Rig, seed: int, tmp_path: Path) -> None:
    await _soak(rig, seed, duration=120, drop_every=30, warm_up=60)


@pytest.mark.soak
async def test_soak_1_hour(rig: Rig, seed: int, tmp_path: Path) -> None:
    await _soak(rig, seed, duration=3600, drop_every=120, warm_up=900)
