"""A bot takes the state, the daemon restarts, the bot follows: whole, nothing twice.

A real daemon process with the durable log, the simulator as the gateway
(its ``truth`` is what the account really holds), and a bot doing what
docs/api.md says: ``GET /state/orders``, then ``GET /events/orders?since=<cursor>``,
merging every ``sor`` update and resync into its records.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import trio

from bezant_trio.simulator import GatewaySimulator
from bezant_trio.testing import DaemonProcess
from helpers import SSL_CONTEXT


def _merge(items: dict[str, dict[str, Any]], event: dict[str, Any]) -> None:
    """What the bot does with one orders event."""
    payload = event["payload"]
    if payload.get("reason") == "resync":
        records = payload["data"].get("orders", [])
    else:
        records = payload.get("args", []) if "reason" not in payload else []
    for record in records:
        items.setdefault(str(record["orderId"]), {}).update(record)


async def test_take_the_state_restart_the_daemon_then_follow(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    sim = await nursery.start(GatewaySimulator(heartbeat_interval=0.2).run)
    daemon = DaemonProcess(
        tmp_path,
        {
            "gateway": {"url": sim.base_url},
            "http": {"bind": "127.0.0.1:0"},
            "store": {"path": str(tmp_path / "events.db")},
        },
    )
    try:
        async with httpx.AsyncClient(verify=SSL_CONTEXT, timeout=40) as client:
            with trio.fail_after(50):  # inside the 60 s of pytest-timeout
                url = await daemon.start()
                await sim.wait_subscribed("orders", timeout=10)
                await sim.emit_orders(4)  # order A: new, submitted, filled; order B: new
                quote = await client.get(f"{url}/state/marketdata", params={"conid": 265598})
                assert quote.status_code == 200
                await sim.wait_subscribed("marketdata:265598", timeout=10)
                await sim.emit_marketdata(265598, 6)
                await daemon.wait_status(
                    lambda s: (
                        s["head_cursors"].get("orders", 0) >= 4
                        and s["head_cursors"].get("marketdata:265598", 0) >= 6
                    )
                )

                # The bot takes the state...
                state = (await client.get(f"{url}/state/orders")).json()
                items, cursor = state["items"], state["cursor"]

                # ... the daemon restarts, and order B moves on meanwhile.
                assert await daemon.stop(signal.SIGTERM) == 0
                # The old socket gone on the gateway's side too, so the orders sent
                # next go to the new one (not to a closing socket nobody reads).
                await sim.wait_connections(0, timeout=10)
                url = await daemon.start()
                await sim.wait_subscribed("orders", timeout=10)
                await sim.emit_orders(2)  # order B: submitted, filled
                order_b = str(max(sim.truth.orders))

                # ... and follows from the state's cursor until it has seen the fill.
                seen: list[int] = []
                try:
                    with trio.fail_after(20):
                        while items.get(order_b, {}).get("status") != "Filled":
                            reply = await client.get(
                                f"{url}/events/orders", params={"since": cursor, "wait": 5}
                            )
                            assert reply.status_code in (200, 204), reply.text
                            if reply.status_code == 200:
                                for event in reply.json()["events"]:
                                    seen.append(event["cursor"])
                                    _merge(items, event)
                                cursor = reply.json()["next_cursor"]
                except trio.TooSlowError:
                    raise AssertionError(
                        f"order {order_b} not seen filled within 20 s: truth "
                        f"{sim.truth.orders}, bot {items}, cursors seen {seen}, status "
                        f"{await daemon.status()}\n{daemon.log_text(all_runs=True)[-3000:]}"
                    ) from None
                final = (await client.get(f"{url}/state/orders")).json()
                quotes = (
                    await client.get(f"{url}/state/marketdata", params={"conid": 265598})
                ).json()
    finally:
        daemon.kill()
    assert seen == sorted(set(seen))  # nothing twice, in cursor order
    assert seen[0] == state["cursor"] + 1  # nothing lost between the state and the stream
    # What the bot holds is what the daemon holds is what the gateway holds.
    assert items == final["items"]
    for order_id, truth in sim.truth.orders.items():
        merged = items[str(order_id)]
        assert {field: merged[field] for field in truth} == truth
    truth_quote = {k: v for k, v in sim.truth.quote(265598).items() if k != "topic"}
    assert {k: quotes["item"][k] for k in truth_quote} == truth_quote
