"""One deadline for a graceful stop, with everything slow at once (docs/architecture.md, "Shutdown").

A real daemon process, SIGTERM while a webhook receiver never answers, a
long-poll is parked, and the gateway never answers the drain's ``ech+hb``
barrier (as the real gateway offline does) while frames keep coming. The
stop must end by ``shutdown_grace`` plus a small margin with exit status 0,
with the file sink's checkpoints stored and the log marked clean, so the
next start continues the cursors without the unclean jump.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx
import orjson
import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.cpapi.connector import DRAIN_TIMEOUT
from bezant_trio.daemon import open_daemon
from bezant_trio.simulator import GatewaySimulator
from bezant_trio.testing import DaemonProcess, WebhookReceiver
from helpers import SSL_CONTEXT, wait_until

GRACE = 3.0
#: What may come on top of the grace: process exit, the log's close, the poll of the wait.
MARGIN = 2.0


async def test_sigterm_with_everything_slow_ends_by_the_deadline_cleanly(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    sim = await nursery.start(GatewaySimulator(heartbeat_interval=0.2).run)
    receiver = await nursery.start(WebhookReceiver().run)
    receiver.hold()  # accepts every POST, answers none
    audit = tmp_path / "audit.jsonl"
    db = tmp_path / "events.db"
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": sim.base_url},
            "http": {"bind": "127.0.0.1:0"},
            "store": {"path": str(db)},
            "events": {"resync": False},
            "shutdown_grace": GRACE,
            "sinks": [
                {"name": "hook", "type": "webhook", "url": receiver.url, "topics": ["orders"]},
                {"name": "audit", "type": "file", "path": str(audit), "topics": ["orders"]},
            ],
        },
    )
    try:
        with trio.fail_after(60):
            url = await daemon.start()
            await sim.wait_subscribed("orders", timeout=10)
            sim.set_echo(False)  # the drain's barrier will never come back
            sim.start_stream({"orders": 50.0, "pnl": 20.0})  # frames keep coming
            await wait_until(lambda: receiver.held >= 1 and audit.exists(), poll=0.02)
            answered: list[int] = []

            async def long_poll() -> None:
                async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=30) as client:
                    reply = await client.get(f"{url}/events/gap", params={"since": 99, "wait": 30})
                    answered.append(reply.status_code)

            nursery.start_soon(long_poll)
            await _wait_in_flight(url, 2)  # the long-poll is parked (and this scrape)
            started = trio.current_time()
            code = await daemon.stop(signal.SIGTERM, timeout=GRACE + MARGIN)
            took = trio.current_time() - started
            await wait_until(lambda: bool(answered), poll=0.02)
            sim.stop_stream()
    finally:
        daemon.kill()
    log = daemon.log_text()
    assert code == 0, log
    assert took < GRACE + MARGIN, (took, log)  # a bound on the wait, checked explicitly
    assert answered[0] in (200, 204, 412)  # the long-poll was answered, not cut
    # The file sink's checkpoint is what it wrote; the log was marked clean.
    lines = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    with sqlite3.connect(db) as conn:
        checkpoint = conn.execute(
            "SELECT cursor FROM checkpoints WHERE sink = 'audit' AND topic = 'orders'"
        ).fetchone()[0]
        run_state = conn.execute("SELECT value FROM meta WHERE key = 'run_state'").fetchone()[0]
        last_orders = conn.execute(
            "SELECT last_cursor FROM topics WHERE topic = 'orders'"
        ).fetchone()[0]
    assert checkpoint == lines[-1]["cursor"]
    assert run_state == "clean", log
    # The next start is a clean one: cursors go on at the next one, no jump.
    try:
        with trio.fail_after(30):
            url = await daemon.start()
            status = await daemon.status()
    finally:
        daemon.kill()
    assert "not closed cleanly" not in daemon.log_text()
    assert status["head_cursors"]["orders"] == last_orders + 1  # the restart's gap event


async def _wait_in_flight(url: str, count: int) -> None:
    """Until the daemon answers ``count`` requests at once (no event crosses the process)."""
    async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
        while True:
            text = (await client.get(f"{url}/metrics")).text
            line = next(
                x for x in text.splitlines() if x.startswith("bezant_http_requests_in_flight ")
            )
            if float(line.split()[1]) >= count:
                return
            await trio.sleep(0.02)


async def test_a_stop_against_a_quiet_gateway_ends_at_its_echo(nursery: trio.Nursery) -> None:
    """The drain waits for the raw ``ech+hb`` echo, not for its silence timeout."""
    sim = await nursery.start(GatewaySimulator().run)  # heartbeats every 10 s: quiet
    config = config_from_mapping(
        {"gateway": {"url": sim.base_url}, "http": {"bind": "127.0.0.1:0"}, "shutdown_grace": 10}
    )
    with trio.fail_after(30):
        async with open_daemon(config) as daemon:
            connector = daemon.connector
            assert connector is not None
            await wait_until(lambda: connector.connected)
            await sim.wait_subscribed("orders", timeout=10)
            echoes = connector.frames["echo"]
            daemon.request_stop()
            # A bound on the drain, below its DRAIN_TIMEOUT of silence: only the
            # echo coming back can have ended it so soon.
            with trio.fail_after(DRAIN_TIMEOUT * 0.75):
                await wait_until(lambda: connector.state == "stopped")
    assert connector.frames["echo"] == echoes + 1
