"""The fault matrix: each fault during a live mixed stream, nothing lost.

Every scenario runs the daemon in-process against the simulator (real
WebSocket, real Hypercorn, a real SQLite file), with an HTTP long-poller per
topic, a webhook sink, a file sink and the test sink. After the fault it lets
the stream run on, drains, and checks the invariants of :meth:`Rig.verify`:
every frame the gateway wrote while connected captured exactly once and in
order; exactly one epoch bump and one gap per known topic per outage;
pollers and sinks end with everything.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bezant_trio import hookimpl
from bezant_trio.model import Event
from bezant_trio.sinks.manager import plugin_manager
from helpers import fill_disk, small_disk, wait_until

from .conftest import scaled
from .rig import (
    CHANNELS,
    CONIDS,
    DAEMON_CLOSE_DROPS_IN_FLIGHT,
    DEFAULT_RATES,
    STEP,
    Expect,
    InProcessDaemon,
    Rig,
)

#: "gateway down for 30 s then back" (3 s in CI).
GATEWAY_DOWN = scaled(3.0, 30.0)
#: How long the tickle answers 401 after the daemon noticed.
UNAUTHENTICATED_FOR = scaled(1.0, 20.0)
#: How long the slow gateway, the webhook faults and the raising sink last.
FAULT_FOR = scaled(1.5, 15.0)

Fault = Callable[[Rig], Awaitable[Expect]]


def _connector(rig: Rig) -> Any:
    assert isinstance(rig.daemon, InProcessDaemon) and rig.daemon.daemon is not None
    return rig.daemon.daemon.connector


async def _reconnected(rig: Rig, count: int = 1, *, timeout: float = STEP) -> None:
    connector = _connector(rig)
    with trio.fail_after(timeout):
        await wait_until(lambda: connector.reconnect_count >= count and connector.connected)


# ------------------------------------------------------------------ gateway faults


async def socket_drop(rig: Rig) -> Expect:
    await rig.sim.drop_connections("abrupt")
    await _reconnected(rig)
    return Expect(reconnects=1)


async def socket_close_handshake(rig: Rig) -> Expect:
    await rig.sim.drop_connections("close", code=1001, reason="going away")
    await _reconnected(rig)
    return Expect(reconnects=1)


async def stall(rig: Rig) -> Expect:
    rig.sim.stall()
    # Open but silent: only the heartbeat watchdog can notice.
    with trio.fail_after(STEP):
        await wait_until(lambda: _connector(rig).reconnect_count >= 1)
    rig.sim.unstall()
    await _reconnected(rig)
    return Expect(reconnects=1)


async def gateway_down_then_back(rig: Rig) -> Expect:
    await rig.sim.restart(down_for=GATEWAY_DOWN)
    await _reconnected(rig, timeout=GATEWAY_DOWN + STEP)
    return Expect(reconnects=1)


async def tickle_401_for_a_while(rig: Rig) -> Expect:
    seen = rig.seen()
    rig.sim.set_authenticated(False)
    # The keepalive tickle answers 401: the daemon ends the connection, then
    # keeps failing (401) until the session is back.
    with trio.fail_after(STEP):
        await wait_until(lambda: not _connector(rig).connected)
    tickles = rig.sim.tickle_count
    await trio.sleep(UNAUTHENTICATED_FOR)  # the fault lasts this long
    assert rig.sim.tickle_count > tickles, "the daemon stopped retrying"
    assert "401" in (_connector(rig).last_error or "")
    rig.sim.set_authenticated(True)
    await _reconnected(rig)
    return await _daemon_closed(rig, seen)


async def sts_authenticated_false(rig: Rig) -> Expect:
    seen = rig.seen()
    await rig.sim.send_auth_status(authenticated=False)
    await _reconnected(rig)
    return await _daemon_closed(rig, seen)


async def _daemon_closed(rig: Rig, seen: dict[str, int]) -> Expect:
    """The daemon ended the connection itself: while the in-flight bug stands,
    frames after the newest one a poller had seen may be lost."""
    if not DAEMON_CLOSE_DROPS_IN_FLIGHT:
        return Expect(reconnects=1)
    await rig.wait_newest_subscribed()
    after = rig.assigned()
    return Expect(reconnects=1, restart_windows={ch: [(seen[ch], after[ch])] for ch in CHANNELS})


async def bad_frames_interleaved(rig: Rig) -> Expect:
    for _ in range(25):
        await rig.sim.send_malformed()
        await rig.sim.send_binary(b"\x00\x01 binary junk")
        await rig.sim.send_binary()  # UTF-8 JSON in a binary message: a valid ntf frame
        await rig.sim.send_invalid_utf8()  # a binary message that is not UTF-8
        await rig.sim.inject("[1, 2, 3]")  # JSON, but not an object
        await rig.sim.inject({"topic": 7, "args": None})
        await trio.sleep(0.01)  # let stream frames in between
    await rig.wait_status(
        lambda s: s["frames"].get("malformed", 0) >= 75 and s["frames"].get("non_utf8", 0) >= 25
    )
    return Expect(reconnects=0)


async def invalid_utf8_in_a_text_frame(rig: Rig) -> Expect:
    # A protocol violation: the client must fail the connection (RFC 6455
    # §8.1, close code 1007). Frames the gateway wrote after the violation
    # are on a failed connection, so they may be lost (and a gap says so)
    # until the new connection has subscribed again.
    before = rig.assigned()
    await rig.sim.send_invalid_utf8(as_text=True)
    await _reconnected(rig)
    await rig.wait_newest_subscribed()
    after = rig.assigned()
    windows = {ch: [(before[ch], after[ch])] for ch in CHANNELS}
    return Expect(reconnects=1, restart_windows=windows)


async def slow_gateway(rig: Rig) -> Expect:
    # Frames trickle (one per 20 ms on the socket) while the stream runs slower
    # than that, so nothing queues up to a slow-consumer drop.
    rig.sim.start_stream({"orders": 4, "pnl": 4, "trades": 4, "marketdata": 4})
    rig.sim.set_slow(0.02)
    await trio.sleep(FAULT_FOR)
    rig.sim.set_slow(0)
    rig.sim.start_stream(DEFAULT_RATES)
    assert _connector(rig).connected
    return Expect(reconnects=0)


# ------------------------------------------------------------------ sink faults


async def webhook_receiver_down(rig: Rig) -> Expect:
    assert rig.endpoint is not None
    rig.endpoint.down()
    await rig.wait_events(15)  # capture and polling go on
    await _wait_sink(rig, "hook", lambda s: s["failures"] > 0 and s["last_error"])
    await trio.sleep(FAULT_FOR)
    await rig.endpoint.up()
    return Expect(reconnects=0)


async def webhook_receiver_slow(rig: Rig) -> Expect:
    assert rig.endpoint is not None
    rig.endpoint.delay = 0.4  # each batch takes 0.4 s to be acknowledged
    await rig.wait_events(15)
    await trio.sleep(FAULT_FOR)
    rig.endpoint.delay = 0
    return Expect(reconnects=0)


async def webhook_receiver_410(rig: Rig) -> Expect:
    assert rig.endpoint is not None and isinstance(rig.daemon, InProcessDaemon)
    rig.endpoint.status = 410
    await _wait_sink(rig, "hook", lambda s: s["state"] == "disabled")
    await rig.wait_events(15)  # the rest of the daemon does not care
    # The receiver is fixed; a config change (SIGHUP) starts the sink again
    # from its checkpoint, and it catches up.
    rig.endpoint.status = 200
    daemon = rig.daemon.daemon
    assert daemon is not None
    sinks = [dict(s) for s in rig.daemon.config["sinks"]]
    sinks[0]["url"] = rig.endpoint.url + "?fixed=1"
    await daemon.reload_sinks(sinks)
    return Expect(reconnects=0)


class RaisingSink:
    """A sink whose ``deliver`` raises on every call while ``RaisingSink.raising``."""

    type_name = "raising"
    options: dict[str, Any] = {}
    raising = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.events: list[Event] = []

    async def deliver(self, batch: list[Event]) -> None:
        self.calls += 1
        if RaisingSink.raising:
            raise RuntimeError("this sink raises on every call")
        self.events.extend(batch)


class _RaisingPlugin:
    @hookimpl
    def register_sink_types(self) -> list[type]:
        return [RaisingSink]


async def sink_raising_on_every_call(rig: Rig) -> Expect:
    await _wait_sink(rig, "raising", lambda s: s["failures"] >= 3)
    await rig.wait_events(15)  # ingestion, polling and the other sinks go on
    await trio.sleep(FAULT_FOR)
    RaisingSink.raising = False
    return Expect(reconnects=0)


async def _wait_sink(rig: Rig, name: str, predicate: Callable[[dict[str, Any]], Any]) -> None:
    await rig.wait_status(lambda status: predicate(status["sinks"][name]))


@pytest.fixture
def raising_plugin() -> Iterator[None]:
    pm = plugin_manager()
    plugin = _RaisingPlugin()
    pm.register(plugin, name="reliability-raising-sink")
    RaisingSink.raising = True
    try:
        yield
    finally:
        pm.unregister(plugin)


# ------------------------------------------------------------------ the matrix

MATRIX: list[tuple[Fault, dict[str, Any]]] = [
    (socket_drop, {}),
    (socket_close_handshake, {}),
    (stall, {"heartbeat_timeout": 1.0}),
    (gateway_down_then_back, {}),
    (tickle_401_for_a_while, {}),
    (sts_authenticated_false, {}),
    (bad_frames_interleaved, {}),
    (invalid_utf8_in_a_text_frame, {}),
    (slow_gateway, {}),
    (webhook_receiver_down, {}),
    (webhook_receiver_slow, {}),
    (webhook_receiver_410, {}),
]


async def _run(rig: Rig, fault: Fault, config: dict[str, Any]) -> None:
    timeout = 60 + GATEWAY_DOWN + UNAUTHENTICATED_FOR + FAULT_FOR
    with trio.fail_after(timeout):
        await rig.start_in_process(rig.config(**config))
        await rig.warm_up()
        expect = await fault(rig)
        await rig.wait_subscribed()
        await rig.wait_events(20)  # the stream goes on after the fault
        await rig.drain()
        report = await rig.verify(expect)
    print(f"{fault.__name__}: captured {report.captured}, holes {report.holes}")


@pytest.mark.timeout(150)  # a live stream, the fault, the drain (its own bound: about 70 s)
@pytest.mark.parametrize(("fault", "config"), MATRIX, ids=[fault.__name__ for fault, _ in MATRIX])
async def test_fault_during_a_live_stream_loses_nothing(
    rig: Rig, fault: Fault, config: dict[str, Any]
) -> None:
    await _run(rig, fault, config)


@pytest.mark.timeout(150)  # as the matrix
async def test_sink_raising_on_every_call_isolated_and_catches_up(
    rig: Rig, raising_plugin: None
) -> None:
    extra = [{"name": "raising", "type": "raising", "retry": {"min": 0.05, "max": 0.2}}]
    await _run(rig, sink_raising_on_every_call, {"extra_sinks": extra})


# ------------------------------------------------------------------ disk full


@pytest.mark.timeout(150)  # a stream into a full disk and out (its own bound: 120 s)
async def test_disk_full_for_the_log_degrades_serves_from_memory_and_recovers(
    rig: Rig, tmp_path: Path
) -> None:
    """A real ENOSPC: the log lives on a small tmpfs that a filler file fills up."""
    mount = tmp_path / "small-disk"
    with small_disk(mount, "24m"):
        try:
            with trio.fail_after(120):
                await rig.start_in_process(rig.config(store_path=mount / "events.db"))
                await rig.warm_up()
                await trio.to_thread.run_sync(fill_disk, mount / "filler")
                # Capture goes on from memory; /health and _status say degraded.
                await rig.wait_events(50)
                status = await rig.status()
                assert status["log"]["state"] == "degraded", status["log"]
                assert rig.client is not None and rig.daemon is not None
                health = (await rig.client.get(f"{rig.daemon.url}/health")).json()
                assert health["status"] == "degraded" and health["log"] == "degraded"
                await rig.wait_events(50)
                (mount / "filler").unlink()
                await rig.wait_status(lambda s: s["log"]["state"] == "ok")
                await rig.wait_events(15)
                await rig.drain()
                await rig.verify(Expect(reconnects=0))
                # Everything is in the log file too, not only in memory.
                daemon = rig.daemon
                assert isinstance(daemon, InProcessDaemon) and daemon.daemon is not None
                hub = daemon.daemon.hub
                assert hub is not None and hub.event_log is not None
                for channel in CHANNELS:
                    logged = await trio.to_thread.run_sync(
                        lambda ch=channel: hub.event_log.read_since(ch, 0, 1_000_000)
                    )
                    assert [e.cursor for e in logged] == [
                        e["cursor"] for e in await rig.read_all(channel)
                    ]
        finally:
            await rig.stop()


# ------------------------------------------------------------------ connection teardown


async def test_a_connection_failed_for_a_protocol_violation_is_closed(rig: Rig) -> None:
    # The leaked socket is closed only if the garbage collector happens to
    # collect it; keep the collector out so the outcome does not depend on it.
    gc.disable()
    try:
        with trio.fail_after(30):
            await rig.start_in_process(rig.config())
            await rig.sim.wait_subscribed("orders", timeout=20)
            await rig.sim.send_invalid_utf8(as_text=True)
            await _reconnected(rig)
            await rig.sim.wait_for(
                lambda sim: any(c.id > 1 and c.wants("orders") for c in sim.connections),
                timeout=20,
            )
            # The failed connection must be gone, not left open and subscribed.
            with trio.move_on_after(3):
                await rig.sim.wait_for(lambda sim: len(sim.connections) == 1)
        open_ones = [c.describe()["id"] for c in rig.sim.connections]
        assert open_ones == [2], f"connections still open on the gateway: {open_ones}"
    finally:
        gc.enable()


@pytest.mark.timeout(120)  # a 50,000-frame burst (its own bound: 60 s)
async def test_frames_in_flight_when_the_daemon_ends_a_connection_are_captured(
    rig: Rig, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        await rig.start_in_process(rig.config())
        await rig.warm_up()
        # A burst is on the wire when the keepalive tickle answers 401 and the
        # daemon decides to reconnect: what already reached its socket must
        # still be captured.
        nursery.start_soon(rig.sim.burst_marketdata, CONIDS[0], 50_000)
        await wait_until(lambda: len(rig.sim.written(f"marketdata:{CONIDS[0]}")) > 1000)
        rig.sim.set_authenticated(False)
        await wait_until(lambda: not _connector(rig).connected)
        rig.sim.set_authenticated(True)
        await _reconnected(rig)
        await rig.wait_subscribed()
        await rig.wait_events(10)
        await rig.drain()
        await rig.verify(Expect(reconnects=1))
