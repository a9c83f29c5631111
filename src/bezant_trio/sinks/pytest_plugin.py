"""pytest fixtures for testing sinks and sink plugins in a few lines (needs pytest-trio).

Enable with ``pytest_plugins = ["bezant_trio.sinks.pytest_plugin"]`` in a
top-level ``conftest.py`` (or through the package's ``pytest11`` entry point).
Tests run in Trio mode (``trio_mode = true``)::

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
- ``bezant_daemon_factory``: ``await factory(sinks=(), *, gateway=None, config=None)``
  starts the whole daemon (memory store, HTTP on a free port) and returns it
  (``.hub``, ``.sinks``, ``.http_url``, ``.request_stop()``). Without
  ``gateway`` it runs with no gateway connection, for tests that publish into
  ``daemon.hub`` directly. Stopped gracefully after the test.

This module only wires public APIs together; it holds no test logic.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import pluggy
import pytest
import trio

from bezant_trio.sinks.manager import SinkManager, create_plugin_manager
from bezant_trio.store.hub import Hub

__all__ = [
    "bezant_daemon_factory",
    "bezant_gateway_simulator",
    "bezant_hub",
    "bezant_plugin_manager",
    "bezant_sink_manager_factory",
]

#: Ring capacity of the hubs these fixtures build.
HUB_CAPACITY = 1000
#: Grace given to sinks and the daemon when a test ends.
TEARDOWN_GRACE = 2.0

SinkManagerFactory = Callable[..., Awaitable[SinkManager]]


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
    for manager in started:
        await manager.aclose(trio.current_time() + TEARDOWN_GRACE)


@pytest.fixture
async def bezant_gateway_simulator(nursery: trio.Nursery) -> Any:
    """A running gateway simulator (``bezant_trio.simulator.gateway.GatewaySimulator``)."""
    from bezant_trio.simulator.gateway import GatewaySimulator

    return await nursery.start(GatewaySimulator().run)


@pytest.fixture
async def bezant_daemon_factory(nursery: trio.Nursery) -> AsyncIterator[Callable[..., Any]]:
    """``await factory(sinks=(), *, gateway=None, config=None)`` -> a serving Daemon."""
    from bezant_trio.config import config_from_mapping
    from bezant_trio.daemon import Daemon

    running: list[tuple[Any, trio.Event]] = []

    async def start(
        sinks: Sequence[Mapping[str, Any]] = (),
        *,
        gateway: Any = None,
        config: Mapping[str, Any] | None = None,
    ) -> Any:
        data: dict[str, Any] = copy.deepcopy(dict(config or {}))
        data.setdefault("http", {}).setdefault("bind", "127.0.0.1:0")
        data.setdefault("shutdown_grace", TEARDOWN_GRACE)
        data["sinks"] = [dict(sink) for sink in sinks]
        if gateway is not None:
            data.setdefault("gateway", {})["url"] = gateway.base_url
        daemon = Daemon(config_from_mapping(data), connect=gateway is not None)
        done = trio.Event()

        async def run(*, task_status: trio.TaskStatus[Any]) -> None:
            try:
                await daemon.run(task_status=task_status)
            finally:
                done.set()

        await nursery.start(run)
        running.append((daemon, done))
        return daemon

    yield start
    for daemon, done in running:
        daemon.request_stop()
        with trio.move_on_after(TEARDOWN_GRACE * 3):
            await done.wait()
