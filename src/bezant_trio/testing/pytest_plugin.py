"""pytest fixtures for testing sinks and sink plugins in a few lines (needs pytest-trio).

Installed with bezant-trio through its ``pytest11`` entry point, so the
fixtures are there in any project whose tests run in Trio mode
(``trio_mode = true``); ``pytest_plugins = ["bezant_trio.testing.pytest_plugin"]``
in a top-level ``conftest.py`` names them explicitly::

    async def test_my_sink_gets_orders(bezant_sink_manager_factory, tmp_path):
        manager = await bezant_sink_manager_factory(
            [{"name": "mine", "type": "my-sink", "topics": ["orders"], "path": str(tmp_path / "x")}]
        )
        manager.hub.publish("orders", {"orderId": 1})
        ...

    async def test_through_the_whole_daemon(bezant_daemon_factory, bezant_gateway_simulator):
        daemon = await bezant_daemon_factory(
            [{"name": "t", "type": "test", "topics": ["orders"]}],
            gateway=bezant_gateway_simulator,
        )
        await bezant_gateway_simulator.emit_orders(3)
        await daemon.sinks.sinks["t"].wait_for(3)

Fixtures:

- ``bezant_hub``: an opened in-memory hub (publish with ``hub.publish(topic, obj)``).
- ``bezant_plugin_manager``: a private plugin manager (installed plugins and the
  built-ins) to ``register`` local plugin objects on without leaking them.
- ``bezant_sink_manager_factory``: ``await factory(sinks, *, hub=None, pm=None)``
  starts a :class:`~bezant_trio.sinks.manager.SinkManager` (on a fresh memory
  hub unless given one); closed gracefully after the test.
- ``bezant_gateway_simulator``: a running CPAPI gateway simulator on 127.0.0.1.
- ``bezant_webhook_receiver``: a running :class:`~bezant_trio.testing.WebhookReceiver`
  (scripted answers, every request recorded).
- ``bezant_daemon_factory``: ``await factory(sinks=(), *, gateway=None, config=None)``
  starts the whole daemon (memory store, HTTP on a free port) with
  :func:`~bezant_trio.daemon.open_daemon` and returns it (``.hub``, ``.sinks``,
  ``.http_url``, ``.request_stop()``). Without ``gateway`` it runs with no
  gateway connection, for tests that publish into ``daemon.hub`` directly.
  Stopped gracefully, under its shutdown deadline, after the test.

This module only wires public APIs together; it holds no test logic.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy
import pytest
import trio

from bezant_trio.sinks.manager import SinkManager, create_plugin_manager
from bezant_trio.store.hub import Hub
from bezant_trio.testing.webhook import WebhookReceiver

if TYPE_CHECKING:
    # The daemon pulls in HTTP and the connector: imported when a fixture
    # needs it, so loading this plugin (in every pytest run) stays cheap.
    from bezant_trio.config import Config
    from bezant_trio.daemon import Daemon

__all__ = [
    "bezant_daemon_factory",
    "bezant_gateway_simulator",
    "bezant_hub",
    "bezant_plugin_manager",
    "bezant_sink_manager_factory",
    "bezant_webhook_receiver",
]

#: Ring capacity of the hubs these fixtures build.
HUB_CAPACITY = 1000
#: Grace given to sinks and the daemon when a test ends.
TEARDOWN_GRACE = 2.0

SinkManagerFactory = Callable[..., Awaitable[SinkManager]]
DaemonFactory = Callable[..., Awaitable["Daemon"]]


async def _memory_hub() -> Hub:
    hub = Hub(capacity_for=lambda topic: HUB_CAPACITY)
    await hub.open()
    return hub


@pytest.fixture
async def bezant_hub() -> Hub:
    """An opened in-memory hub."""
    return await _memory_hub()


@pytest.fixture
def bezant_plugin_manager() -> pluggy.PluginManager:
    """A private plugin manager: register local plugins on it freely."""
    return create_plugin_manager()


@pytest.fixture
async def bezant_sink_manager_factory(
    nursery: trio.Nursery,
) -> AsyncIterator[SinkManagerFactory]:
    """``await factory(sinks, *, hub=None, pm=None)`` -> a running SinkManager."""
    started: list[SinkManager] = []

    async def start(
        sinks: Sequence[Mapping[str, Any]],
        *,
        hub: Hub | None = None,
        pm: pluggy.PluginManager | None = None,
    ) -> SinkManager:
        if hub is None:
            hub = await _memory_hub()
        manager = SinkManager(hub, sinks, pm=pm)
        await nursery.start(manager.run)
        started.append(manager)
        return manager

    yield start
    # One deadline for every manager's graceful close.
    deadline = trio.current_time() + TEARDOWN_GRACE
    for manager in started:
        await manager.aclose(deadline)


@pytest.fixture
async def bezant_gateway_simulator(nursery: trio.Nursery) -> Any:
    """A running gateway simulator (:class:`bezant_trio.simulator.GatewaySimulator`)."""
    from bezant_trio.simulator import GatewaySimulator

    return await nursery.start(GatewaySimulator().run)


@pytest.fixture
async def bezant_webhook_receiver(nursery: trio.Nursery) -> WebhookReceiver:
    """A scripted webhook endpoint on 127.0.0.1 that records every request."""
    return await nursery.start(WebhookReceiver().run)


async def _serve_until(
    config: Config,
    connect: bool,
    stop: trio.Event,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one daemon until ``stop`` is set (``open_daemon`` then stops it); sets ``done``."""
    from bezant_trio.daemon import open_daemon

    try:
        async with open_daemon(config, connect=connect) as daemon:
            task_status.started(daemon)
            await stop.wait()
    finally:
        done.set()


@pytest.fixture
async def bezant_daemon_factory(nursery: trio.Nursery) -> AsyncIterator[DaemonFactory]:
    """``await factory(sinks=(), *, gateway=None, config=None)`` -> a serving Daemon."""
    from bezant_trio.config import config_from_mapping

    running: list[tuple[Daemon, trio.Event, trio.Event]] = []

    async def start(
        sinks: Sequence[Mapping[str, Any]] = (),
        *,
        gateway: Any = None,
        config: Mapping[str, Any] | None = None,
    ) -> Daemon:
        data: dict[str, Any] = copy.deepcopy(dict(config or {}))
        data.setdefault("http", {}).setdefault("bind", "127.0.0.1:0")
        data.setdefault("shutdown_grace", TEARDOWN_GRACE)
        data["sinks"] = [dict(sink) for sink in sinks]
        if gateway is not None:
            data.setdefault("gateway", {})["url"] = gateway.base_url
        stop, done = trio.Event(), trio.Event()
        daemon = await nursery.start(
            _serve_until, config_from_mapping(data), gateway is not None, stop, done
        )
        running.append((daemon, stop, done))
        return daemon

    yield start
    for _, stop, _ in running:
        stop.set()
    # The daemons stop together, each under its own shutdown deadline; the
    # bound (the longest deadline, plus the log's close) fails a teardown
    # that hangs instead of waiting for it.
    grace = max((daemon.config.shutdown_grace for daemon, _, _ in running), default=0.0)
    with trio.fail_after(grace + TEARDOWN_GRACE * 2):
        for _, _, done in running:
            await done.wait()
