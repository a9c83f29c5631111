"""The gateway's state in words: unreachable, needs login, silent, connected; health probes.

Each gateway here is a real server on 127.0.0.1: a TCP listener that accepts
and never answers (what the real gateway does when it cannot reach IBKR, see
docs/gateway.md), a closed port, and the simulator. The daemon runs in-process
with ``open_daemon``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.daemon import Daemon, open_daemon
from bezant_trio.simulator import GatewaySimulator
from helpers import SSL_CONTEXT, serve_daemon, wait_until


class HangingGateway:
    """Accepts connections, reads what is sent, never answers (no status line)."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[HangingGateway]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._hold, listeners)
            task_status.started(self)

    async def _hold(self, stream: trio.abc.Stream) -> None:
        self.requests += 1
        async with stream:
            while await stream.receive_some(65536):
                pass

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/api"


def _config(url: str, **events: Any) -> Any:
    return config_from_mapping(
        {
            "gateway": {"url": url, "request_timeout": 0.3},
            "http": {"bind": "127.0.0.1:0"},
            "events": {"backoff": {"min": 0.05, "max": 0.2}, "ready_timeout": 0.3, **events},
            "shutdown_grace": 5,
        }
    )


@pytest.fixture
def daemon_at(nursery: trio.Nursery) -> Any:
    """``await daemon_at(url, **events)`` -> a serving daemon connecting to ``url``."""

    async def start(url: str, **events: Any) -> Daemon:
        return await nursery.start(serve_daemon, _config(url, **events))

    return start


async def _get(daemon: Daemon, path: str) -> httpx.Response:
    async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=10) as client:
        return await client.get(f"{daemon.http_url}{path}")


async def test_a_gateway_that_never_answers_is_unreachable_in_words(daemon_at, nursery) -> None:
    gateway = await nursery.start(HangingGateway().run)
    with trio.fail_after(20):
        daemon = await daemon_at(gateway.base_url)
        connector = daemon.connector
        assert connector is not None
        await wait_until(lambda: connector.failures["timeout"] >= 2)
        status = (await _get(daemon, "/events/_status")).json()
        ready = await _get(daemon, "/health/ready")
        live = await _get(daemon, "/health/live")
        metrics = (await _get(daemon, "/metrics")).text
    assert status["state"] == "gateway_unreachable" and status["connected"] is False
    assert "did not answer POST /tickle within 0.3 s" in status["last_error"]
    assert "cannot reach IBKR" in status["last_error"]
    assert status["last_message_at"] is None and status["topics_subscribed"] == []
    assert connector.connect_count == 0  # no WebSocket is opened without a session
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert "gateway_unreachable" in ready.json()["reason"]
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    assert 'bezant_gateway_state{state="gateway_unreachable"} 1.0' in metrics
    assert 'bezant_gateway_connect_failures_total{reason="timeout"}' in metrics


async def test_a_stop_during_a_hanging_rest_call_ends_at_once(nursery) -> None:
    gateway = await nursery.start(HangingGateway().run)
    config = config_from_mapping(
        {
            "gateway": {"url": gateway.base_url, "request_timeout": 60},
            "http": {"bind": "127.0.0.1:0"},
            "shutdown_grace": 30,
        }
    )
    # The bound, start and stop included, is below the 30 s grace and the 60 s
    # call: a stop that sat out either fails it.
    with trio.fail_after(20):
        async with open_daemon(config) as daemon:
            await wait_until(lambda: gateway.requests >= 1)  # the tickle is hanging now
            assert daemon.connector is not None and daemon.connector.connect_attempts == 1


async def test_a_refused_port_says_so(daemon_at) -> None:
    with trio.fail_after(20):
        daemon = await daemon_at("http://127.0.0.1:9/v1/api")
        connector = daemon.connector
        await wait_until(lambda: connector.failures["refused"] >= 1)
    assert connector.state == "gateway_unreachable"
    assert "connection refused; is it running?" in connector.last_error
    assert "127.0.0.1:9" in connector.last_error


async def test_tickle_401_is_needs_login_then_connected_clears_the_error(
    daemon_at, nursery
) -> None:
    sim = GatewaySimulator(heartbeat_interval=0.2)
    await nursery.start(sim.run)
    sim.set_authenticated(False)
    with trio.fail_after(20):
        daemon = await daemon_at(sim.base_url)
        connector = daemon.connector
        await wait_until(lambda: connector.failures["needs_login"] >= 2)
        assert connector.state == "needs_login"
        assert "nobody is logged in" in connector.last_error
        assert (await _get(daemon, "/health/ready")).status_code == 503
        sim.set_authenticated(True)
        await wait_until(lambda: connector.connected)
        ready = await _get(daemon, "/health/ready")
        status = (await _get(daemon, "/events/_status")).json()
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert status["state"] == "connected" and status["last_error"] is None
    assert status["failed_attempts"]["needs_login"] >= 2
    assert status["gateway"]["username"] and status["gateway"]["is_paper"] is True
    assert status["gateway"]["authenticated"] is True
    assert set(status["topics_subscribed"]) == {"orders", "pnl"}


async def test_a_socket_without_the_ready_frame_is_silent_not_connected(daemon_at, nursery) -> None:
    sim = GatewaySimulator(ready_delay=1000, heartbeat_interval=1000)
    await nursery.start(sim.run)
    with trio.fail_after(20):
        daemon = await daemon_at(sim.base_url)
        connector = daemon.connector
        await sim.wait_connections(1, timeout=10)
        await wait_until(lambda: connector.state == "gateway_silent")
        status = (await _get(daemon, "/events/_status")).json()
        ready = await _get(daemon, "/health/ready")
        assert status["connected"] is False and status["topics_subscribed"] == []
        assert status["last_message_at"] is None  # no frame came; opening is not a frame
        assert "sent no ready frame within 0.3 s" in status["last_error"]
        assert ready.status_code == 503 and "gateway_silent" in ready.json()["reason"]
        # The gateway comes to its senses: a new socket gets the greeting.
        sim.configure(ready_delay=0.01, heartbeat_interval=0.2)
        await sim.drop_connections("abrupt")
        await wait_until(lambda: connector.connected)
    assert connector.state == "connected" and connector.last_error is None
    assert connector.failures["no_ready"] == 1
    assert connector.status()["last_message_at"] is not None
