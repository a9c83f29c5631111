"""Every stream capturable: account summary and ledger per account, bars and book lazily."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from bezant_trio.config import config_from_mapping
from bezant_trio.simulator import GatewaySimulator
from bezant_trio.simulator import frames as sim_frames
from bezant_trio.wants import TooManyConids
from helpers import serve_daemon, wait_until


@pytest.fixture
async def sim(nursery: trio.Nursery) -> GatewaySimulator:
    return await nursery.start(GatewaySimulator(heartbeat_interval=0.2).run)


def _config(sim: GatewaySimulator, **events: Any) -> Any:
    return config_from_mapping(
        {
            "gateway": {"url": sim.base_url},
            "http": {"bind": "127.0.0.1:0"},
            "events": {"backoff": {"min": 0.05, "max": 0.2}, "resync": False, **events},
        }
    )


def _sent(sim: GatewaySimulator, prefix: str) -> list[str]:
    return [c["text"] for c in sim.commands if c["text"].startswith(prefix)]


async def test_account_summary_and_ledger_are_subscribed_for_the_account(
    nursery: trio.Nursery, sim: GatewaySimulator
) -> None:
    config = _config(sim, channels=["orders", "account_summary", "ledger"])
    with trio.fail_after(30):
        daemon = await nursery.start(serve_daemon, config)
        hub = daemon.hub
        account = sim_frames.ACCOUNT
        await sim.wait_subscribed(f"account_summary:{account}", timeout=10)
        await sim.wait_subscribed(f"ledger:{account}", timeout=10)
        await sim.emit_account_summary(2)
        await sim.emit_ledger(1)
        await wait_until(lambda: hub.head("account_summary") >= 2 and hub.head("ledger") >= 1)
    assert _sent(sim, f"ssd+{account}+") and _sent(sim, f"sld+{account}+")
    assert "account_summary" in daemon.connector.status()["topics_subscribed"]


async def test_bars_and_book_are_subscribed_when_wanted_and_dropped_when_idle(
    nursery: trio.Nursery, sim: GatewaySimulator
) -> None:
    config = _config(sim, marketdata={"idle_unsubscribe": 1.0})
    with trio.fail_after(30):
        daemon = await nursery.start(serve_daemon, config)
        hub, connector = daemon.hub, daemon.connector
        await wait_until(lambda: connector.connected)
        daemon.bars.want(265598)
        daemon.book.want(265598)
        await sim.wait_subscribed("bars:265598", timeout=10)
        await sim.wait_subscribed("book:265598", timeout=10)
        await sim.emit_bars(265598, 1)
        await sim.emit_book(265598, 2)
        await wait_until(lambda: hub.head("bars:265598") >= 1 and hub.head("book:265598") >= 2)
        subscribed = connector.status()["topics_subscribed"]
        # Nobody asks again: both are unsubscribed after idle_unsubscribe.
        await wait_until(lambda: not sim.subscribers("bars:265598"))
        await wait_until(lambda: not sim.subscribers("book:265598"))
    assert {"bars:265598", "book:265598"} <= set(subscribed)
    server_id = hub._rings["bars:265598"].events()[-1].payload["serverId"]
    assert _sent(sim, f"umh+{server_id}")  # the bars' serverId, not the conid
    assert _sent(sim, f"ubd+{sim_frames.ACCOUNT}")


async def test_a_sixth_bars_conid_is_refused_the_gateway_allows_five(
    nursery: trio.Nursery, sim: GatewaySimulator
) -> None:
    with trio.fail_after(30):
        daemon = await nursery.start(serve_daemon, _config(sim))
    for conid in range(1, 6):
        daemon.bars.want(conid)
    with pytest.raises(TooManyConids, match="the gateway allows 5 at once"):
        daemon.bars.want(6)
