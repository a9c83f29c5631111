"""``bezant_trio.client`` pollers and ``bezant-trio tail``."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from bezant_trio.client import AsyncPoller, Poller, PollError, tail_forever
from bezant_trio.http.context import HttpContext
from bezant_trio.model import GapReason
from bezant_trio.simulator import GatewaySimulator
from bezant_trio.store.hub import Hub
from bezant_trio.testing import DaemonProcess
from helpers import capacity_of, seq_of, wait_until


async def test_async_poller_starts_at_the_head_and_follows_new_events(serve, hub: Hub) -> None:
    hub.publish("orders", {"old": True})
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        async with AsyncPoller(base, "orders", wait=5) as poller:
            assert await poller.head() == 1
            got: list[dict[str, Any]] = []

            async def follow() -> None:
                async for event in poller:
                    got.append(event)
                    if len(got) == 2:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                await wait_until(lambda: hub.waiting == 1)  # parked in a long-poll
                hub.publish("orders", {"n": 1})
                hub.publish("orders", {"n": 2})
    assert [e["payload"] for e in got] == [{"n": 1}, {"n": 2}]
    assert poller.cursor == 3 and poller.reset_epoch == 1


async def test_async_poller_on_412_yields_a_gap_line_and_resumes_at_the_oldest_kept(
    serve,
) -> None:
    hub = Hub(capacity_of(default=3))
    await hub.open()
    for i in range(10):
        hub.publish("orders", {"i": i})
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        async with AsyncPoller(base, "orders", since=1, wait=0) as poller:
            gap = await poller.poll()
            kept = await poller.poll()  # what the ring still holds: nothing more is lost
            assert await poller.poll() == []  # 204: caught up at the head
            hub.publish("orders", {"i": 10})
            after = await poller.poll()
    assert len(gap) == 1 and gap[0]["cursor"] is None
    assert gap[0]["payload"]["reason"] == "cursor_expired"
    assert gap[0]["payload"]["skipped_from"] == 1 and gap[0]["payload"]["resumed_at"] == 7
    assert [e["cursor"] for e in kept] == [8, 9, 10]
    assert [e["cursor"] for e in after] == [11]


async def test_poller_after_a_memory_only_restart_resumes_from_zero(serve) -> None:
    hub = Hub(capacity_of())
    await hub.open()
    hub.publish("orders", {"new-space": 1})
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        # A cursor from the previous process, beyond this one's head.
        async with AsyncPoller(base, "orders", since=500, wait=0) as poller:
            gap = await poller.poll()
            events = await poller.poll()
    assert gap[0]["payload"]["resumed_at"] == 0
    assert [e["payload"] for e in events] == [{"new-space": 1}]


async def test_sync_poller_and_a_final_error(serve, hub: Hub) -> None:
    hub.publish("gap", {"x": 1})
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub, token="tok-12345"))

        def poll_twice() -> tuple[list[dict[str, Any]], int]:
            with Poller(base, "gap", since=0, token="tok-12345", wait=0) as poller:
                return poller.poll(), poller.head()

        events, head = await trio.to_thread.run_sync(poll_twice)

        def unauthorized() -> None:
            with Poller(base, "gap", since=0, token="wrong", wait=0) as poller:
                poller.poll()

        with pytest.raises(PollError, match="401"):
            await trio.to_thread.run_sync(unauthorized)
    assert [e["payload"] for e in events] == [{"x": 1}] and head == 1


async def test_head_of_a_topic_that_never_had_an_event_is_zero(serve, hub: Hub) -> None:
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        async with AsyncPoller(base, "pnl", wait=0) as poller:
            assert await poller.head() == 0
            assert await poller.poll() == []


async def test_state_then_follow_loses_nothing_across_a_reconnect(serve, hub: Hub) -> None:
    hub.publish("orders", {"topic": "sor", "args": [{"orderId": 1, "status": "Submitted"}]})
    with trio.fail_after(10):
        base = await serve(HttpContext(hub=hub))
        async with AsyncPoller(base, "orders", wait=0) as poller:
            state = await poller.state_then_follow()
            await hub.bump_epoch(GapReason.RECONNECTED_AFTER_DISCONNECT)
            hub.publish("orders", {"topic": "sor", "args": [{"orderId": 1, "status": "Filled"}]})
            after = await poller.poll()
    assert state["cursor"] == 1 and state["items"]["1"]["status"] == "Submitted"
    assert [e["cursor"] for e in after] == [2, 3]  # the gap, then the fill: nothing twice
    assert after[0]["payload"]["reason"] == "reconnected_after_disconnect"
    assert poller.reset_epoch == 2


async def test_tail_state_prints_the_state_then_the_events_after_it(serve, hub: Hub) -> None:
    hub.publish("orders", {"topic": "sor", "args": [{"orderId": 7, "status": "Submitted"}]})
    out = io.StringIO()
    with trio.fail_after(20):
        base = await serve(HttpContext(hub=hub))

        def tail() -> None:
            with contextlib.suppress(_Enough):
                tail_forever(
                    base, "orders", since=None, token=None, wait=1, state=True, out=_Until(out, 2)
                )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, tail)
            await wait_until(lambda: out.getvalue().count("\n") >= 1)
            hub.publish("orders", {"topic": "sor", "args": [{"orderId": 7, "status": "Filled"}]})
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["state"]["items"]["7"]["status"] == "Submitted" and first["state"]["cursor"] == 1
    assert second["cursor"] == 2 and second["payload"]["args"][0]["status"] == "Filled"


class _Enough(Exception):
    pass


class _Until:
    """An output that ends ``tail_forever`` once it has ``lines`` lines."""

    def __init__(self, out: io.StringIO, lines: int) -> None:
        self._out, self._lines = out, lines

    def write(self, text: str) -> None:
        self._out.write(text)

    def flush(self) -> None:
        if self._out.getvalue().count("\n") >= self._lines:
            raise _Enough


def _spawn(
    argv: list[str], out_path: Path, err_path: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        return subprocess.Popen(argv, stdout=out, stderr=err, env=env)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
async def test_tail_survives_a_daemon_restart_without_duplicates_or_loss(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    sim = await nursery.start(GatewaySimulator().run)
    port = _free_port()
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": sim.base_url},
            "http": {"bind": f"127.0.0.1:{port}"},
            "store": {"path": str(tmp_path / "events.db")},
        },
    )
    out_path = tmp_path / "tail.out"
    err_path = tmp_path / "tail.err"
    tail: subprocess.Popen[bytes] | None = None

    def lines() -> list[dict[str, Any]]:
        text = out_path.read_text() if out_path.exists() else ""
        return [orjson.loads(line) for line in text.splitlines() if line.endswith("}")]

    def orders_seen() -> list[int]:
        return [seq_of(e) for e in lines() if e["payload"].get("topic") == "sor"]

    try:
        with trio.fail_after(60):
            url = await daemon.start()
            await sim.wait_subscribed("orders", timeout=10)
            await sim.emit_orders(5)
            env = {k: v for k, v in os.environ.items() if not k.startswith("BEZANT_")}
            argv = [sys.executable, "-m", "bezant_trio", "tail", "orders", "--since", "0"]
            tail = _spawn([*argv, "--url", url, "--wait", "2"], out_path, err_path, env)
            await wait_until(lambda: len(orders_seen()) == 5)
            # Restart the daemon on the same port; orders arrive before and after.
            assert await daemon.stop(signal.SIGTERM) == 0
            await sim.wait_connections(0, timeout=10)
            await daemon.start()
            await sim.wait_subscribed("orders", timeout=10)
            await sim.emit_orders(5)
            await wait_until(lambda: len(orders_seen()) == 10)
            await wait_until(lambda: "retrying" in err_path.read_text())
    finally:
        if tail is not None:
            # SIGTERM, not SIGINT: a shell's background job ignores SIGINT.
            tail.send_signal(signal.SIGTERM)
            try:
                tail.wait(timeout=10)
            except subprocess.TimeoutExpired:
                tail.kill()
                raise AssertionError(f"tail did not stop:\n{err_path.read_text()}") from None
        daemon.kill()
        sim.stop()
    events = lines()
    cursors = [e["cursor"] for e in events]
    assert cursors == sorted(set(cursors)), "duplicates or disorder"
    assert orders_seen() == list(range(1, 11))
    # The restart is visible in the stream itself: the daemon's own gap event.
    restarts = [e for e in events if e["payload"].get("reason") == "process_restart"]
    assert len(restarts) == 1
    assert tail.returncode == 0
