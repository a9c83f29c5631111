"""The brokerage session behind the login: down, competing, recovered; accounts first.

The simulator's session faults follow the corpus (behaviour.jsonl): while the
brokerage session is down, tickle answers ``authenticated: false`` and a new
socket gets ``sts`` instead of the greeting, until ``ssodh/init``; a competing
login is taken back only by ``ssodh/init`` with ``compete: true``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.simulator import GatewaySimulator
from helpers import serve_daemon, wait_until


@pytest.fixture
async def sim(nursery: trio.Nursery) -> GatewaySimulator:
    return await nursery.start(GatewaySimulator(heartbeat_interval=0.2).run)


def _config(sim: GatewaySimulator, **gateway: Any) -> Any:
    return config_from_mapping(
        {
            "gateway": {"url": sim.base_url, "request_timeout": 2, **gateway},
            "http": {"bind": "127.0.0.1:0"},
            "events": {"backoff": {"min": 0.05, "max": 0.2}, "resync": False},
        }
    )


def _commands(sim: GatewaySimulator) -> list[str]:
    return [c["text"] for c in sim.commands]


async def test_a_down_brokerage_session_is_recovered_with_ssodh_init_before_subscribing(
    nursery: trio.Nursery, sim: GatewaySimulator
) -> None:
    await sim.set_session_down(True)
    with trio.fail_after(30):
        daemon = await nursery.start(serve_daemon, _config(sim))
        connector = daemon.connector
        await wait_until(lambda: connector.connected)
    assert sim.ssodh_inits >= 1
    assert sim.rest_calls["/iserver/accounts"] >= 1  # before subscribing orders
    assert connector.gateway_info["authenticated"] is True
    assert connector.accounts and connector.last_error is None


async def test_a_session_that_goes_down_while_connected_is_recovered(
    nursery: trio.Nursery, sim: GatewaySimulator
) -> None:
    with trio.fail_after(30):
        daemon = await nursery.start(serve_daemon, _config(sim))
        connector = daemon.connector
        await wait_until(lambda: connector.connected)
        epoch = daemon.hub.reset_epoch
        inits = sim.ssodh_inits
        await sim.set_session_down(True)  # open sockets hear sts authenticated:false
        await wait_until(lambda: daemon.hub.reset_epoch > epoch and connector.connected)
    assert sim.ssodh_inits > inits
    assert "authenticated=false" in connector.last_disconnect["reason"]


async def test_a_competing_login_is_reported_and_kept_without_compete(
    nursery: trio.Nursery, sim: GatewaySimulator
) -> None:
    with trio.fail_after(30):
        daemon = await nursery.start(serve_daemon, _config(sim))
        connector = daemon.connector
        await wait_until(lambda: connector.connected)
        await sim.set_competing(True)
        await wait_until(lambda: connector.failures["competing"] >= 2)
        assert connector.state == "competing" and not connector.connected
        assert "gateway.compete: true" in connector.last_error
        # The other login logs out: the session comes back by the ordinary recovery.
        await sim.set_competing(False)
        await wait_until(lambda: connector.connected)
    assert connector.state == "connected"


async def test_with_compete_the_daemon_takes_the_session_back(
    nursery: trio.Nursery, sim: GatewaySimulator
) -> None:
    with trio.fail_after(30):
        daemon = await nursery.start(serve_daemon, _config(sim, compete=True))
        connector = daemon.connector
        await wait_until(lambda: connector.connected)
        epoch = daemon.hub.reset_epoch
        await sim.set_competing(True)
        await wait_until(lambda: daemon.hub.reset_epoch > epoch and connector.connected)
    assert not sim.competing and sim.brokerage_up
