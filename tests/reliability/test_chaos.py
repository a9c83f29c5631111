"""Randomised chaos: random faults from the matrix, seeded, the invariants checked at the end.

A real daemon process (SQLite log, webhook, file and a flaky test sink)
against the in-process simulator streaming a mixed load, with an HTTP poller
per topic. A seeded schedule injects one fault at a time, waits until the
daemon is back, pauses a random while and goes on, for 60 s (CI) or 10
minutes (``BEZANT_SOAK=1``). The seed is printed, and repeated with the
failure; ``BEZANT_SEED=N`` replays a run.

What a fault may cost is spelled out: a frame may only be lost inside the
window of a process restart or of a protocol violation (the failed connection
is abandoned until the new one subscribes); with ``CHAOS_TOLERATES_DRAIN_LOSS``
(off: the connector drains a connection it ends itself) also of a tickle 401
or ``sts authenticated=false``. What the gateway writes to a connection after
the daemon failed it for a protocol violation is not counted as written to the
daemon (``Rig.abandoned``): when such a connection's socket was left open (the
WebSocket failed, its TCP stream not closed), the gateway kept it subscribed,
a later outage (a stall, say) handed the frames sent before the new connection
subscribed to it alone, and a single ledger counted them as lost (seed
4257498412, tests/reliability/README.md).
"""

from __future__ import annotations

import os
import random
import signal
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from bezant_trio.model import format_ts
from bezant_trio.testing import DaemonProcess
from helpers import fill_disk, mount_tmpfs, umount

from .conftest import scaled
from .rig import CHANNELS, DEFAULT_RATES, Expect, Rig

DURATION = scaled(60.0, 600.0)

#: Whether chaos allows a loss window around outages the daemon causes itself
#: (sts false, tickle 401). No longer: the connector drains such a connection
#: while frames keep arriving (DRAIN_TIMEOUT of silence, DRAIN_MAX in all) and
#: reads a whole socket buffer per step, so these outages lose nothing. Kept as
#: a switch to tell a drain problem from others when a run fails.
CHAOS_TOLERATES_DRAIN_LOSS = False


@dataclass
class Chaos:
    rig: Rig
    daemon: DaemonProcess
    rng: random.Random
    disk: Path | None
    windows: dict[str, list[tuple[int, int]]] = field(
        default_factory=lambda: {ch: [] for ch in CHANNELS}
    )
    restarts: int = 0
    #: reconnect_count of the daemon processes that have stopped.
    earlier_reconnects: int = 0
    log: list[str] = field(default_factory=list)
    hook_generation: int = 0

    async def status(self) -> dict[str, Any]:
        return await self.rig.status()

    async def window(
        self, action: Callable[[], Awaitable[None]], *, from_seen: bool = False
    ) -> None:
        """Run ``action``; frames assigned from now (or after the newest a poller
        saw, for frames the daemon may hold unread) until re-subscribed may be lost."""
        before = self.rig.seen() if from_seen else self.rig.assigned()
        await action()
        await self.rig.wait_newest_subscribed()
        after = self.rig.assigned()
        for channel in CHANNELS:
            self.windows[channel].append((before[channel], after[channel]))

    async def wait_connected(self) -> None:
        await self.rig.wait_status(lambda s: s["connected"])
        await self.rig.wait_newest_subscribed()

    async def wait_disconnected(self) -> None:
        await self.rig.wait_status(lambda s: not s["connected"])

    # ------------------------------------------------------------ faults

    async def drop(self) -> None:
        await self.rig.sim.drop_connections(self.rng.choice(["abrupt", "close"]))
        await self.wait_connected()

    async def stall(self) -> None:
        reconnects = (await self.status())["reconnect_count"]
        self.rig.sim.stall()
        await self.rig.wait_status(lambda s: s["reconnect_count"] > reconnects)
        self.rig.sim.unstall()
        await self.wait_connected()

    async def gateway_down(self) -> None:
        await self.rig.sim.restart(down_for=self.rng.uniform(0.5, scaled(3.0, 30.0)))
        await self.wait_connected()

    async def tickle_401(self) -> None:
        async def action() -> None:
            self.rig.sim.set_authenticated(False)
            await self.wait_disconnected()
            await trio.sleep(self.rng.uniform(0.2, 2.0))
            self.rig.sim.set_authenticated(True)
            await self.wait_connected()

        await (self.window(action, from_seen=True) if CHAOS_TOLERATES_DRAIN_LOSS else action())

    async def sts_false(self) -> None:
        async def action() -> None:
            reconnects = (await self.status())["reconnect_count"]
            await self.rig.sim.send_auth_status(authenticated=False)
            await self.rig.wait_status(lambda s: s["reconnect_count"] > reconnects)
            await self.wait_connected()

        await (self.window(action, from_seen=True) if CHAOS_TOLERATES_DRAIN_LOSS else action())

    async def bad_frames(self) -> None:
        sim = self.rig.sim
        for _ in range(self.rng.randint(5, 30)):
            await self.rng.choice(
                [sim.send_malformed, sim.send_binary, sim.send_invalid_utf8, self._junk]
            )()
            await trio.sleep(self.rng.uniform(0, 0.02))

    async def _junk(self) -> None:
        await self.rig.sim.send_binary(self.rng.randbytes(self.rng.randint(0, 300)))

    async def invalid_utf8_text(self) -> None:
        async def action() -> None:
            reconnects = (await self.status())["reconnect_count"]
            # The daemon fails the connection at this frame: what the gateway
            # writes to it from now on never reaches the daemon (Rig.abandoned).
            self.rig.abandon_open_connections()
            await self.rig.sim.send_invalid_utf8(as_text=True)
            await self.rig.wait_status(lambda s: s["reconnect_count"] > reconnects)
            await self.wait_connected()

        await self.window(action)

    async def slow(self) -> None:
        sim = self.rig.sim
        sim.start_stream({"orders": 4, "pnl": 4, "trades": 4, "marketdata": 4})
        sim.set_slow(0.02)
        await trio.sleep(self.rng.uniform(0.5, 2.0))
        sim.set_slow(0)
        sim.start_stream(DEFAULT_RATES)

    async def _restart(self, signum: int) -> None:
        async def action() -> None:
            # The window starts at the newest frame a poller saw: seen means
            # committed, and committed survives even kill -9.
            self.earlier_reconnects += (await self.status())["reconnect_count"]
            await self.daemon.stop(signum)
            await self.daemon.start()

        await self.window(action, from_seen=True)
        self.restarts += 1

    async def sigterm(self) -> None:
        await self._restart(signal.SIGTERM)

    async def kill_9(self) -> None:
        await self._restart(signal.SIGKILL)

    async def webhook_down(self) -> None:
        endpoint = self.rig.endpoint
        assert endpoint is not None
        endpoint.down()
        await trio.sleep(self.rng.uniform(0.5, 3.0))
        await endpoint.up()

    async def webhook_slow(self) -> None:
        endpoint = self.rig.endpoint
        assert endpoint is not None
        endpoint.delay = self.rng.uniform(0.1, 0.5)
        await trio.sleep(self.rng.uniform(0.5, 3.0))
        endpoint.delay = 0

    async def webhook_500(self) -> None:
        endpoint = self.rig.endpoint
        assert endpoint is not None
        endpoint.status = self.rng.choice([500, 503, 429])
        await trio.sleep(self.rng.uniform(0.5, 2.0))
        endpoint.status = 200

    async def webhook_410(self) -> None:
        endpoint = self.rig.endpoint
        assert endpoint is not None
        endpoint.status = 410
        await self.rig.wait_status(lambda s: s["sinks"]["hook"]["state"] == "disabled")
        endpoint.status = 200
        # The operator fixes the url and reloads the config (SIGHUP).
        self.hook_generation += 1
        config = self.daemon.config
        config["sinks"][0]["url"] = f"{endpoint.url}?generation={self.hook_generation}"
        self.daemon.config_path.write_text(yaml.safe_dump(config))
        self.daemon.send_signal(signal.SIGHUP)
        await self.rig.wait_status(lambda s: s["sinks"]["hook"]["state"] != "disabled")

    async def disk_full(self) -> None:
        assert self.disk is not None
        await trio.to_thread.run_sync(fill_disk, self.disk / "filler")
        await self.rig.wait_status(lambda s: s["log"]["state"] == "degraded")
        await trio.sleep(self.rng.uniform(0.2, 1.5))
        (self.disk / "filler").unlink()
        await self.rig.wait_status(lambda s: s["log"]["state"] == "ok")

    def faults(self) -> list[Callable[[], Awaitable[None]]]:
        faults = [
            self.drop,
            self.stall,
            self.gateway_down,
            self.tickle_401,
            self.sts_false,
            self.bad_frames,
            self.invalid_utf8_text,
            self.slow,
            self.sigterm,
            self.kill_9,
            self.webhook_down,
            self.webhook_slow,
            self.webhook_500,
            self.webhook_410,
        ]
        if self.disk is not None:
            faults.append(self.disk_full)
        return faults


async def _chaos_run(rig: Rig, seed: int, tmp_path: Path, duration: float) -> None:
    rng = random.Random(seed)
    disk = tmp_path / "small-disk"
    why_not = mount_tmpfs(disk, "32m")
    mounted = why_not is None
    if not mounted:
        # CI runs as root: there a disk that cannot be staged is a broken test.
        if os.geteuid() == 0:
            pytest.fail(f"the disk_full fault cannot be staged: {why_not}")
        warnings.warn(f"chaos runs without its disk_full fault: {why_not}", stacklevel=1)
    config = rig.config(
        test_sink=False,
        # Short enough for stalls to be noticed fast, long enough that a loaded
        # machine does not fake one (a false alarm is one more outage to drain).
        heartbeat_timeout=2.0,
        store_path=(disk if mounted else tmp_path / "state") / "events.db",
        extra_sinks=[
            {
                "name": "flaky",
                "type": "test",
                "fail_rate": 0.5,
                "seed": seed,
                "topics": ["orders", "gap"],
                "retry": {"min": 0.02, "max": 0.1},
            }
        ],
    )
    try:
        with trio.fail_after(duration + 240):
            daemon = await rig.start_process(config)
            chaos = Chaos(rig, daemon, rng, disk if mounted else None)
            await rig.warm_up()
            deadline = trio.current_time() + duration
            while trio.current_time() < deadline:
                fault = rng.choice(chaos.faults())
                chaos.log.append(
                    f"{fault.__name__}@{format_ts()}/orders:{rig.assigned()['orders']}"
                )
                with trio.fail_after(60):
                    await fault()
                    await rig.wait_events(5)  # back to normal before the next one
                await trio.sleep(rng.uniform(0, 1.5))
            await rig.wait_events(20)
            await rig.drain()
            status = await rig.status()
            reconnects = chaos.earlier_reconnects + status["reconnect_count"]
            # Every accepted WebSocket is one process's first connection or a reconnect.
            assert rig.sim.ws_handshakes == reconnects + chaos.restarts + 1, chaos.log
            assert status["sinks"]["flaky"]["lag"] == 0
            expect = Expect(
                reconnects=reconnects, restarts=chaos.restarts, restart_windows=chaos.windows
            )
            try:
                report = await rig.verify(expect)
            except AssertionError as exc:
                ended = [
                    line[11:]
                    for line in daemon.log_text(all_runs=True).splitlines()
                    if ("connection ended" in line and "tickle" not in line)
                    or "received SIG" in line
                    or "slow consumer" in line
                ][-20:]
                raise AssertionError(
                    f"{exc}\nfaults (seed {seed}): {chaos.log}\ndaemon: {ended}"
                ) from None
        print(
            f"chaos seed={seed} faults={len(chaos.log)} {chaos.log} "
            f"reconnects={reconnects} restarts={chaos.restarts} captured={report.captured} "
            f"holes={report.holes} written only to failed connections={report.abandoned_only}"
        )
        output = daemon.log_text(all_runs=True)
        assert "Traceback" not in output, output[-3000:]
    finally:
        await rig.stop()
        if mounted:
            umount(disk)


@pytest.mark.timeout(
    360
)  # 60 s of faults, then the drain and the checks (its own bound: duration + 240 s)
async def test_chaos_60s(rig: Rig, seed: int, tmp_path: Path) -> None:
    await _chaos_run(rig, seed, tmp_path, 60.0)


@pytest.mark.timeout(900)  # 10 minutes of faults (opt-in)
@pytest.mark.soak
async def test_chaos_10_minutes(rig: Rig, seed: int, tmp_path: Path) -> None:
    await _chaos_run(rig, seed, tmp_path, DURATION)
