"""Process faults mid-stream: SIGTERM and ``kill -9`` of a real daemon process.

The daemon runs as ``python -m bezant_trio run`` with the SQLite log on, a
webhook and a file sink, against the in-process simulator streaming a mixed
load, with an HTTP poller per topic. Each run stops the daemon twice in the
middle of the stream and starts it again. A frame can only be lost inside a
restart window: after the newest one a poller had seen before the signal
(seen means committed, so it survives), and before the restarted daemon
subscribed again. Everything else holds as for the other faults: exactly once
and in order, one ``process_restart`` gap per topic and one epoch bump per
restart, pollers and sinks end with everything.
"""

from __future__ import annotations

import signal

import pytest
import trio

from bezant_trio.testing import DaemonProcess
from helpers import seq_of, wait_until

from .rig import CHANNELS, CONIDS, Expect, Rig, expand, is_gap

RESTARTS = 2


@pytest.mark.timeout(200)  # a live stream and two process restarts (its own bound: 150 s)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill_9"])
async def test_daemon_stopped_mid_stream_loses_nothing_it_had_shown(rig: Rig, signum: int) -> None:
    windows: dict[str, list[tuple[int, int]]] = {ch: [] for ch in CHANNELS}
    with trio.fail_after(150):
        daemon = await rig.start_process(rig.config(test_sink=False))
        await rig.warm_up()
        for _ in range(RESTARTS):
            await rig.wait_events(20)
            seen = {ch: rig.pollers[ch].last_seq() for ch in CHANNELS}
            code = await daemon.stop(signum)
            if signum == signal.SIGTERM:
                assert code == 0, daemon.log_text(all_runs=True)[-2000:]
            await daemon.start()
            await rig.wait_newest_subscribed()
            resumed = rig.assigned()
            for channel in CHANNELS:
                windows[channel].append((seen[channel], resumed[channel]))
        await rig.wait_events(20)
        await rig.drain()
        report = await rig.verify(Expect(restarts=RESTARTS, restart_windows=windows))
    assert isinstance(rig.daemon, DaemonProcess)
    print(f"{signal.Signals(signum).name}: captured {report.captured}, holes {report.holes}")
    assert "Traceback" not in daemon.log_text(all_runs=True)


@pytest.mark.timeout(150)  # a 50,000-frame burst into a daemon process (its own bound: 90 s)
async def test_sigterm_captures_every_frame_that_reached_the_daemon_before_it(
    rig: Rig, nursery: trio.Nursery
) -> None:
    channel = f"marketdata:{CONIDS[0]}"
    with trio.fail_after(90):
        daemon = await rig.start_process(rig.config(test_sink=False))
        await rig.warm_up()
        # A burst is on the wire when SIGTERM arrives: the daemon has time
        # (shutdown_grace) to take in what already reached its socket.
        nursery.start_soon(rig.sim.burst_marketdata, CONIDS[0], 50_000)
        await wait_until(lambda: len(rig.sim.written(channel)) > 2_000)
        written_before = expand(rig.sim.written(channel).ranges())
        assert await daemon.stop(signal.SIGTERM) == 0
        await daemon.start()
        await rig.wait_newest_subscribed()
        captured = {seq_of(e) for e in await rig.read_all(channel) if not is_gap(e)}
    lost = sorted(written_before - captured)
    assert not lost, f"{len(lost)} frames that reached the daemon before SIGTERM were lost"
