"""The whole daemon: in-process with the simulator, and as a real subprocess."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.daemon import Daemon, StartupError, open_daemon
from bezant_trio.simulator import GatewaySimulator
from bezant_trio.testing import DaemonProcess, run_cli
from helpers import SSL_CONTEXT, wait_until

#: A bound for one step that takes milliseconds when it works (a prune pass,
#: a wake-up): a broken loop fails in seconds, not at the test's own bound.
STEP = 5


async def test_status_and_health_of_a_connected_daemon(nursery: trio.Nursery) -> None:
    sim = GatewaySimulator()
    await nursery.start(sim.run)
    config = config_from_mapping(
        # resync off: this test counts the orders events exactly (the simulator
        # answers /iserver/account/orders, which would add a resync event).
        {
            "gateway": {"url": sim.base_url},
            "http": {"bind": "127.0.0.1:0"},
            "events": {"resync": False},
        },
        env={},
    )
    with trio.fail_after(20):
        daemon = await nursery.start(Daemon(config).run)
        await sim.wait_subscribed("orders", timeout=10)
        await sim.emit_orders(2)
        await wait_until(lambda: daemon.hub.head("orders") == 2)
        async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
            status = (await client.get(f"{daemon.http_url}/events/_status")).json()
            health = (await client.get(f"{daemon.http_url}/health")).json()
    for key in (
        "connected",
        "last_message_at",
        "reconnect_count",
        "reset_epoch",
        "topics_subscribed",
        "buffer_sizes",
        "uptime_seconds",
        "last_error",
        "frames",
        "wanted_conids",
        "log",
        "sinks",
    ):
        assert key in status, key
    assert status["connected"] is True and status["frames"]["event"] >= 2
    assert health == {"status": "ok", "connected": True, "log": None}
    daemon.request_stop()
    sim.stop()


async def test_unwritable_store_path_is_a_startup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = config_from_mapping(
        {"store": {"path": str(blocker / "events.db")}, "http": {"bind": "127.0.0.1:0"}}, env={}
    )
    with pytest.raises(StartupError, match=r"store\.path"):
        await Daemon(config, connect=False).run()


async def test_sigterm_answers_long_polls_and_exits_zero_before_its_deadline(
    tmp_path: Path,
) -> None:
    # A grace far above the bound on the stop: a daemon that waited for its
    # deadline (a long-poll nobody woke, a phase that hangs) fails the bound.
    grace = 60
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": "http://127.0.0.1:9/v1/api"},
            "http": {"bind": "127.0.0.1:0"},
            "shutdown_grace": grace,
        },
    )
    try:
        url = await daemon.start()
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=30) as client:
            assert (await client.get(f"{url}/events/_status")).status_code == 200
            answers: list[int] = []

            async def long_poll() -> None:
                r = await client.get(f"{url}/events/orders?since=0&wait=30")
                answers.append(r.status_code)

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(long_poll)
                    # bounded by fail_after; no event crosses the process boundary
                    while (await client.get(f"{url}/events/_status")).json()["waiting"] < 1:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    code = await daemon.stop(signal.SIGTERM, timeout=grace / 4)
        assert code == 0
        # Answered by the stop (the wait was 30 s), not cut when the process went.
        assert answers in ([200], [204])
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.kill()


async def _poll_until_expired(
    client: httpx.AsyncClient, url: str, topic: str, *, newest: int, oldest: int
) -> dict[str, Any]:
    """Poll ``topic`` from cursor 0 until a 412 names ``newest`` and an oldest kept
    cursor of at least ``oldest``; returns its body.

    Retention runs in the daemon's own task, which raises no event here: poll
    (the caller bounds it). A pass deletes in several short transactions, so a
    412 in the middle of one names an oldest kept cursor short of the end.
    """
    while True:
        answer = await client.get(f"{url}/events/{topic}", params={"since": 0})
        if answer.status_code == 412:
            body = answer.json()
            if body["newest_cursor"] == newest and body["head_cursor"] >= oldest:
                return body
        else:
            assert answer.status_code == 200, answer.text
        await trio.sleep(0.02)


async def test_the_retention_loop_prunes_the_log_and_pollers_get_412_at_the_oldest_kept(
    tmp_path: Path,
) -> None:
    config = config_from_mapping(
        {
            "http": {"bind": "127.0.0.1:0"},
            "store": {
                "path": str(tmp_path / "events.db"),
                "prune_interval": 0.05,
                "max_events_per_topic": 100,
                # 0.1 s: every trade is gone by the next pass after it.
                "retention_days": {"default": 30, "trades": 0.1 / 86400},
            },
            # A ring smaller than what retention keeps: a poll from cursor 0
            # is answered from the log, where the pruned edge is.
            "events": {"capacity": {"orders": 20, "default": 20}},
        },
        env={},
    )
    with trio.fail_after(20):
        async with (
            open_daemon(config, connect=False) as daemon,
            httpx.AsyncClient(verify=SSL_CONTEXT) as client,
        ):
            hub, url = daemon.hub, daemon.http_url
            assert hub is not None and url is not None
            for i in range(500):
                hub.publish("orders", {"i": i})
            for i in range(50):
                hub.publish("trades", {"i": i})
            await wait_until(lambda: hub.head("orders") == 500 and hub.head("trades") == 50)
            # max_events_per_topic: the newest 100 stay, 401 is the oldest kept.
            # Each pass comes 0.05 s after the last: a step bound of seconds.
            with trio.fail_after(STEP):
                orders = await _poll_until_expired(client, url, "orders", newest=500, oldest=401)
            kept = await client.get(f"{url}/events/orders", params={"since": 400, "limit": 500})
            # retention_days: every trade went; the oldest kept is the next one to come.
            with trio.fail_after(STEP):
                trades = await _poll_until_expired(client, url, "trades", newest=50, oldest=51)
            # The loop goes on: the next pass prunes what came after the first.
            for i in range(500, 700):
                hub.publish("orders", {"i": i})
            await wait_until(lambda: hub.head("orders") == 700)
            with trio.fail_after(STEP):
                later = await _poll_until_expired(client, url, "orders", newest=700, oldest=601)
    assert orders["code"] == "cursor_expired" and orders["head_cursor"] == 401
    assert "resume with since=400" in orders["message"]
    assert kept.status_code == 200
    assert [e["cursor"] for e in kept.json()["events"]] == list(range(401, 501))
    assert trades["head_cursor"] == 51
    assert later["head_cursor"] == 601


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("http: {token: hunter2}\n")
    result = run_cli("check-config", "--config", str(tmp_path / "c.yaml"))
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and '"***"' in result.stdout


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("events: {capacity: {orders: -5}}\n", "events.capacity.orders"),
        ("http: {bind: 'nonsense'}\n", "http.bind"),
        ("gatway: {}\n", "gatway"),
        ("events: [\n", "YAML"),
        ("http: {bind: '0.0.0.0:8080'}\n", "http.bind"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, yaml_text: str, key: str) -> None:
    (tmp_path / "c.yaml").write_text(yaml_text)
    for command in ("run", "check-config"):
        result = run_cli(command, "--config", str(tmp_path / "c.yaml"))
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_port_in_use_is_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "c.yaml").write_text(
            f"http: {{bind: '127.0.0.1:{port}'}}\ngateway: {{url: 'http://127.0.0.1:9/v1/api'}}\n"
        )
        result = run_cli("run", "--config", str(tmp_path / "c.yaml"))
    assert result.returncode == 2
    assert "http.bind" in result.stderr and "Traceback" not in result.stderr
